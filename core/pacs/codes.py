"""The codes HiCXR's DICOM results use: SNOMED CT where a finding has a concept, else HiCXR's private scheme.

Private coding scheme ``99HICXR`` (DICOM PS3.16 8.2: a local scheme's designator starts with "99"), declared in
every SR's Coding Scheme Identification Sequence. Its codes:

=================  ===========================================================================================
``99HICXR`` code   meaning
=================  ===========================================================================================
``LBL-<name>``     a taxonomy label without a SNOMED CT concept used here: the taxonomy's groups (Abnormal,
                   Cardiac, Fluid Accumulation, Missing Lung Tissue, Opacity, Other), Uncertain, and CheXpert's
                   own categories (Lung Opacity, Lung Lesion, Pleural Other, Enlarged Cardiomediastinum,
                   Support Devices); ``<name>`` is the label with spaces as hyphens
``PROB``           calibrated probability: mean of the Monte-Carlo dropout samples (unit ``{probability}``)
``MCSTD``          standard deviation of the Monte-Carlo dropout samples
``OPPOINT``        operating point: the probability at or above which the model calls the label (the model
                   card's threshold reaching the target sensitivity on held-out data)
``CALL``           the call at the operating point, as the analysis record decided it; values ``ABOVE`` /
                   ``BELOW`` / ``NOCALL`` (the model makes no call on this label) / ``NOOP`` (no operating point)
``CALLWHY``        text: why a label has no call, or how a group came to be called
``NOTE``           text: intended use ("research use only, not for diagnosis")
``WARN``           text: an out-of-distribution or image warning of this analysis
``NOTLEARNT``      text: labels the model did not learn (left out of the findings)
``MAP``            text: what the secondary capture's map shows
=================  ===========================================================================================
"""

from __future__ import annotations

from pydicom.sr.coding import Code

SCHEME = "99HICXR"
SCHEME_NAME = "HiCXR private codes"
SCHEME_ORGANIZATION = "HiCXR project (research prototype)"

#: Findings with a SNOMED CT concept (SCT), by taxonomy label.
SNOMED: dict[str, tuple[str, str]] = {
    "Atelectasis": ("46621007", "Atelectasis"),
    "Cardiomegaly": ("8186001", "Cardiomegaly"),
    "Consolidation": ("95436008", "Lung consolidation"),
    "Edema": ("19242006", "Pulmonary edema"),
    "Fracture": ("125605004", "Fracture of bone"),
    "No Finding": ("281900007", "No abnormality detected"),
    "Pleural Effusion": ("60046008", "Pleural effusion"),
    "Pneumonia": ("233604007", "Pneumonia"),
    "Pneumothorax": ("36118008", "Pneumothorax"),
}

PROCEDURE = Code("399208008", "SCT", "Plain chest X-ray")
PROBABILITY = Code("PROB", SCHEME, "Calibrated probability (Monte-Carlo mean)")
MC_STD = Code("MCSTD", SCHEME, "Monte-Carlo standard deviation")
OPERATING_POINT = Code("OPPOINT", SCHEME, "Operating point")
CALL = Code("CALL", SCHEME, "Call at the operating point")
CALL_VALUES = {
    "above": Code("ABOVE", SCHEME, "At or above the operating point"),
    "below": Code("BELOW", SCHEME, "Below the operating point"),
    "no call": Code("NOCALL", SCHEME, "No call"),
    "no operating point": Code("NOOP", SCHEME, "No operating point"),
}
CALL_REASON = Code("CALLWHY", SCHEME, "Reason for the call")
NOTE = Code("NOTE", SCHEME, "Intended use")
WARNING = Code("WARN", SCHEME, "Analysis warning")
NOT_LEARNT = Code("NOTLEARNT", SCHEME, "Labels not learnt")
MAP = Code("MAP", SCHEME, "Map shown")
UNIT = Code("{probability}", "UCUM", "probability")


def finding_code(label: str) -> Code:
    """The code of a taxonomy label: SNOMED CT where listed in :data:`SNOMED`, else ``99HICXR LBL-<label>``."""
    if label in SNOMED:
        value, meaning = SNOMED[label]
        return Code(value, "SCT", meaning)
    return Code("LBL-" + label.replace(" ", "-"), SCHEME, label)


def label_of(code_value: str, scheme: str) -> str | None:
    """The taxonomy label a finding code stands for (the inverse of :func:`finding_code`), or ``None``."""
    if scheme == "SCT":
        return next((label for label, (value, _) in SNOMED.items() if value == code_value), None)
    if scheme == SCHEME and code_value.startswith("LBL-"):
        return code_value[4:].replace("-", " ")
    return None
