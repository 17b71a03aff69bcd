"""Which instances of a PACS study HiCXR analyses, and a plain reason for every one it does not.

The rule (applied to QIDO-RS answers before anything is downloaded; the reader applies its own checks after):

* a series HiCXR wrote itself (SeriesDescription starting "HiCXR") is a result, never an input;
* only CR and DX images are chest radiographs to HiCXR: a CT, MR, SR, PR, KO ... series is skipped with its
  modality named (a study with none left is "not a chest radiograph study");
* a body part other than the chest (when the header names one) is skipped;
* a view the header names as lateral or decubitus is skipped; a study left without a frontal image is
  "no frontal image". An image without a view is analysed: the reader and the out-of-distribution checks still
  look at it, and whatever they find becomes a warning on its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.imaging.coded import CHEST_BODY_PARTS, FRONTAL_VIEWS
from core.pacs.client import InstanceRef

__all__ = ["RESULT_PREFIX", "StudyPlan", "plan_study"]

RESULT_PREFIX = "HiCXR"
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})


@dataclass
class StudyPlan:
    """What to do with one study.

    Attributes:
        study_uid: The study.
        analyse: Frontal (or unlabelled) chest radiograph instances to analyse.
        skipped: Instances not analysed, each with the reason.
        results: Instances HiCXR wrote earlier (its SR and secondary captures).
        reason: Why nothing of the study is analysed ("" when something is).
    """

    study_uid: str
    analyse: list[InstanceRef] = field(default_factory=list)
    skipped: list[tuple[InstanceRef, str]] = field(default_factory=list)
    results: list[InstanceRef] = field(default_factory=list)
    reason: str = ""


def plan_study(study_uid: str, instances: Sequence[InstanceRef]) -> StudyPlan:
    """Sort a study's instances into what to analyse, what to skip (with why) and HiCXR's own earlier results."""
    plan = StudyPlan(study_uid)
    other_modalities: set[str] = set()
    lateral_views: set[str] = set()
    for ref in instances:
        if ref.series_description.startswith(RESULT_PREFIX):
            plan.results.append(ref)
        elif ref.modality not in RADIOGRAPH_MODALITIES:
            modality = ref.modality or "none given"
            other_modalities.add(modality)
            plan.skipped.append((ref, f"not a chest radiograph: modality {modality} (HiCXR reads CR and DX images)"))
        elif ref.body_part is not None and ref.body_part not in CHEST_BODY_PARTS:
            plan.skipped.append((ref, f"not a chest radiograph: body part {ref.body_part}"))
        elif ref.view_position is not None and ref.view_position not in FRONTAL_VIEWS:
            lateral_views.add(ref.view_position)
            plan.skipped.append((ref, f"not a frontal view: {ref.view_position} (the models read PA/AP films)"))
        else:
            plan.analyse.append(ref)
    if not plan.analyse:
        if lateral_views:
            plan.reason = (f"no frontal image: the study's radiographs are {', '.join(sorted(lateral_views))} views "
                           "and the models read frontal (PA/AP) films only")
        elif other_modalities:
            plan.reason = (f"not a chest radiograph study: it holds {', '.join(sorted(other_modalities))} only "
                           "(HiCXR reads CR and DX chest films)")
        elif plan.skipped:
            plan.reason = "no chest radiograph: " + "; ".join(sorted({why for _, why in plan.skipped}))
        elif plan.results:
            plan.reason = "the study holds only HiCXR's own results"
        else:
            plan.reason = "the study holds no instance"
    return plan
