"""Calls: the one place that decides whether the model calls a label on an image, and why not when it does not.

A call is a claim a radiologist may act on, so it is made only where the model has shown, on images it never
trained on, that it separates the finding. The rule (:class:`CallRule`, stored in the model card's ``call_rule``):

1. **Discrimination floor.** A label is *callable* only if it is learnt, has at least ``min_positives`` held-out
   positives and negatives, and the lower bound of its held-out AUROC's 95% confidence interval is above
   ``auroc_floor`` (0.60; anything at or below 0.5 is chance). The interval is a patient-level percentile bootstrap
   where held-out scores exist; where a card keeps only an AUROC and its counts (older cards, the cross-validation
   summary), it is the Hanley–McNeil interval (:func:`hanley_mcneil_ci`).
2. **Operating point.** The highest displayed probability whose held-out sensitivity reaches
   ``target_sensitivity`` (80%), raised where needed until the held-out specificity reaches
   ``specificity_floor`` (80%); the sensitivity and specificity reached there are stated. The specificity floor
   binds: a label the model separates poorly would otherwise be called on most films.
3. **Decision per image** (:func:`decide_calls`): a callable label is ``above`` when its displayed probability
   (the Monte-Carlo mean) is at or above its operating point, else ``below``; every other learnt label is
   ``no call``, with the reason ("the model cannot separate this finding (AUROC 0.55 [0.50, 0.60])"); a label the
   model never learnt has an empty decision.
4. **Taxonomy coherence.** A group (parent) whose finding is called ``above`` reads as called: ``below`` becomes
   ``above`` "through" that finding; a group with no call of its own keeps ``no call`` and its reason says which
   finding is called. No Finding and Abnormal are never both called: when Abnormal or any finding is ``above``,
   No Finding's ``above`` becomes ``no call`` ("contradicted by ...").
5. **Out of population.** When any population check fires (the file's view, age or body part, the feature
   distance, the pediatric-film classifier: :func:`core.ood.population_checks`), no label is called: every
   decision is empty and the reason names the check(s).

The decision is computed once, in :mod:`core.inference`, and stored in the :class:`~core.analysis.Analysis`
record (``Analysis.calls``); the tree, the table, the PDF, JSON, CSV and DICOM results all read it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.record import RecordError

if TYPE_CHECKING:  # pragma: no cover
    from core.labels import LabelSet
    from core.taxonomy import Taxonomy

ABOVE, BELOW, NO_CALL, NONE = "above", "below", "no call", ""
#: The values a decision can take (``""``: not learnt, or out of population).
DECISIONS = (ABOVE, BELOW, NO_CALL, NONE)
NO_FINDING, ABNORMAL = "No Finding", "Abnormal"


@dataclass(frozen=True)
class CallRule:
    """The parameters of the call rule (see the module docstring); stored as the model card's ``call_rule``.

    Attributes:
        auroc_floor: The held-out AUROC's lower confidence bound must be above this for a label to be callable.
        confidence: Level of that confidence interval.
        target_sensitivity: Sensitivity the operating point aims at on held-out data.
        specificity_floor: Held-out specificity the operating point must reach (it is raised until it does).
        min_positives: Held-out positives (and negatives) a label needs before it can be callable.
    """

    auroc_floor: float = 0.60
    confidence: float = 0.95
    target_sensitivity: float = 0.80
    specificity_floor: float = 0.80
    min_positives: int = 10

    def describe(self) -> str:
        """The rule in one sentence, for the card, the dashboard and reports."""
        return (f"A label is called only if the lower {self.confidence:.0%} bound of its held-out AUROC is above "
                f"{self.auroc_floor:.2f} (at least {self.min_positives} held-out positives and negatives); its "
                f"operating point is the highest probability reaching {self.target_sensitivity:.0%} held-out "
                f"sensitivity, raised until the held-out specificity is at least {self.specificity_floor:.0%}. "
                "No calls on an image outside the training population.")

    def to_dict(self) -> dict[str, Any]:
        """The card's ``call_rule`` object."""
        return {"auroc_floor": self.auroc_floor, "confidence": self.confidence,
                "target_sensitivity": self.target_sensitivity, "specificity_floor": self.specificity_floor,
                "min_positives": self.min_positives, "rule": self.describe()}

    @classmethod
    def from_dict(cls, data: Any, where: str = "call_rule") -> CallRule:
        """Parse the card's ``call_rule``; :class:`~core.record.RecordError` names a bad value."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{where} must be an object")
        defaults = cls()
        values: dict[str, Any] = {}
        for name in ("auroc_floor", "confidence", "target_sensitivity", "specificity_floor"):
            value = data.get(name, getattr(defaults, name))
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
                raise RecordError(f"{where}.{name} must be a number in [0, 1], got {value!r}")
            values[name] = float(value)
        positives = data.get("min_positives", defaults.min_positives)
        if not isinstance(positives, int) or isinstance(positives, bool) or positives < 1:
            raise RecordError(f"{where}.min_positives must be a positive integer, got {positives!r}")
        return cls(min_positives=positives, **values)


@dataclass(frozen=True)
class LabelEvidence:
    """What held-out data show about one label, and whether the rule makes it callable.

    Attributes:
        label: The label.
        auroc: Held-out AUROC (``None`` when undefined).
        auroc_ci: Its confidence interval ``(low, high)``.
        ci_method: How the interval was obtained (patient bootstrap, or Hanley–McNeil from AUROC and counts).
        positives: Held-out positives.
        negatives: Held-out negatives.
        threshold: The operating point (displayed probability), ``None`` when the label is not callable.
        sensitivity: Held-out sensitivity at the operating point.
        specificity: Held-out specificity at the operating point.
        callable: Whether the rule lets the label be called.
        reason: Why it is not callable (empty when it is), written for the reader.
    """

    label: str
    auroc: float | None
    auroc_ci: tuple[float, float] | None
    ci_method: str
    positives: int
    negatives: int
    threshold: float | None
    sensitivity: float | None
    specificity: float | None
    callable: bool
    reason: str = ""

    def auroc_text(self) -> str:
        """``AUROC 0.62 [0.55, 0.69]`` (or ``AUROC not measured``)."""
        if self.auroc is None:
            return "AUROC not measured"
        ci = f" [{self.auroc_ci[0]:.2f}, {self.auroc_ci[1]:.2f}]" if self.auroc_ci else ""
        return f"AUROC {self.auroc:.2f}{ci}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for the card."""
        def r(x: float | None, n: int = 4) -> float | None:
            return None if x is None else round(float(x), n)

        return {"auroc": r(self.auroc), "auroc_ci": None if self.auroc_ci is None else [r(v) for v in self.auroc_ci],
                "ci_method": self.ci_method, "positives": self.positives, "negatives": self.negatives,
                "threshold": r(self.threshold, 6), "sensitivity": r(self.sensitivity),
                "specificity": r(self.specificity), "callable": self.callable, "reason": self.reason}

    @classmethod
    def from_dict(cls, label: str, data: Any, where: str) -> LabelEvidence:
        """Parse one label's evidence; ``ValueError`` names a bad value."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{where} must be an object")
        ci = data.get("auroc_ci")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_number(v) for v in ci)):
            raise RecordError(f"{where}.auroc_ci must be [low, high], got {ci!r}")
        threshold = data.get("threshold")
        if threshold is not None and not (_number(threshold) and 0.0 <= threshold <= 1.0):
            raise RecordError(f"{where}.threshold must be a probability, got {threshold!r}")
        callable_ = bool(data.get("callable"))
        if callable_ and threshold is None:
            raise RecordError(f"{where}: a callable label needs a threshold")
        return cls(label=label, auroc=_opt(data.get("auroc")), auroc_ci=None if ci is None else (float(ci[0]),
                   float(ci[1])), ci_method=str(data.get("ci_method") or ""),
                   positives=int(data.get("positives") or 0), negatives=int(data.get("negatives") or 0),
                   threshold=_opt(threshold), sensitivity=_opt(data.get("sensitivity")),
                   specificity=_opt(data.get("specificity")), callable=callable_, reason=str(data.get("reason") or ""))


@dataclass(frozen=True)
class CallEvidence:
    """Per-label decision inputs of a model (the card's ``call_evidence``) and where they were measured.

    Attributes:
        source: The held-out data, in words.
        labels: Label -> :class:`LabelEvidence` (learnt labels; a label absent here is never called).
    """

    source: str
    labels: dict[str, LabelEvidence] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The card's ``call_evidence`` object."""
        return {"source": self.source, "labels": {k: e.to_dict() for k, e in self.labels.items()}}

    @classmethod
    def from_dict(cls, data: Any, where: str = "call_evidence") -> CallEvidence:
        """Parse the card's ``call_evidence``; ``ValueError`` names a bad value."""
        if not isinstance(data, Mapping) or not isinstance(data.get("labels"), Mapping):
            raise RecordError(f"{where} must be an object with 'labels'")
        return cls(source=str(data.get("source") or ""),
                   labels={str(k): LabelEvidence.from_dict(str(k), v, f"{where}.labels[{k!r}]")
                           for k, v in data["labels"].items()})

    def thresholds(self) -> dict[str, float]:
        """Operating points of the callable labels."""
        return {k: e.threshold for k, e in self.labels.items() if e.callable and e.threshold is not None}


# ------------------------------------------------------------------------------------------ the evidence


def hanley_mcneil_ci(auroc: float, positives: int, negatives: int, confidence: float = 0.95
                     ) -> tuple[float, float]:
    """Normal-approximation interval of an AUROC from the AUROC and the counts alone (Hanley & McNeil,
    Radiology 1982): ``SE² = (A(1-A) + (n₁-1)(Q₁-A²) + (n₀-1)(Q₂-A²)) / (n₁ n₀)``, ``Q₁ = A/(2-A)``,
    ``Q₂ = 2A²/(1+A)``; clipped to [0, 1]."""
    a, n1, n0 = float(auroc), int(positives), int(negatives)
    if n1 < 1 or n0 < 1:
        raise ValueError("an AUROC interval needs positives and negatives")
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    se = math.sqrt(max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a), 0.0) / (n1 * n0))
    z = _normal_quantile(0.5 + confidence / 2.0)
    return max(0.0, a - z * se), min(1.0, a + z * se)


def rule_operating_point(scores: np.ndarray, positive: np.ndarray, rule: CallRule
                         ) -> tuple[float, float, float]:
    """``(threshold, sensitivity, specificity)``: the highest threshold reaching the target sensitivity, raised
    until the specificity floor is met (a label is called when its probability is at or above the threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    pos, neg = np.sort(scores[positive]), np.sort(scores[~positive])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("an operating point needs positives and negatives")
    k = max(int(np.ceil(rule.target_sensitivity * pos.size - 1e-9)), 1)
    by_sensitivity = float(pos[pos.size - k])
    # The smallest threshold with at least specificity_floor of the negatives strictly below it.
    m = int(np.ceil(rule.specificity_floor * neg.size - 1e-9))
    by_specificity = float(np.nextafter(neg[m - 1], np.inf)) if m >= 1 else -np.inf
    threshold = max(by_sensitivity, by_specificity)
    return threshold, float((pos >= threshold).mean()), float((neg < threshold).mean())


def judge(label: str, auroc: float | None, ci: tuple[float, float] | None, positives: int, negatives: int,
          rule: CallRule) -> str:
    """Why ``label`` may not be called under ``rule`` given its held-out figures; empty when it may."""
    if positives < rule.min_positives or negatives < rule.min_positives:
        return (f"too few held-out images to show the model separates this finding ({positives} positives, "
                f"{negatives} negatives; the rule needs {rule.min_positives} of each)")
    if auroc is None or ci is None:
        return "the model's ability to separate this finding was not measured on held-out images"
    if ci[0] <= rule.auroc_floor:
        return (f"the model cannot separate this finding (AUROC {auroc:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] on held-out "
                f"images; a call needs the lower bound above {rule.auroc_floor:.2f})")
    return ""


def fit_call_evidence(probs: np.ndarray, labels: LabelSet, names: Sequence[str], rule: CallRule,
                      not_learnt: Iterable[str] = (), source: str = "", n_boot: int = 1000,
                      groups: Sequence | None = None) -> CallEvidence:
    """The evidence of every learnt label from held-out displayed probabilities ``(N, L)`` and their labels.

    The AUROC interval is a percentile bootstrap resampling patients (``labels.metadata['Patient ID']`` when
    present, else ``groups``, else images).
    """
    from sklearn.metrics import roc_auc_score

    from core.metrics import bootstrap_ci, resampled_auroc

    skip = set(not_learnt)
    if groups is None:
        meta = labels.metadata
        groups = meta["Patient ID"].to_numpy() if "Patient ID" in meta.columns else np.arange(len(labels))
    groups = np.asarray(groups)
    out: dict[str, LabelEvidence] = {}
    for j, label in enumerate(names):
        if label in skip:
            continue
        known = labels.mask[:, j]
        y, p, g = labels.targets[known, j] == 1, np.asarray(probs)[known, j], groups[known]
        n1, n0 = int(y.sum()), int((~y).sum())
        auroc = ci = None
        if n1 and n0:
            auroc = float(roc_auc_score(y, p))
            ci = bootstrap_ci(resampled_auroc(y, p), g, n_boot=n_boot, level=rule.confidence)
        reason = judge(label, auroc, ci, n1, n0, rule)
        threshold = sens = spec = None
        if n1 and n0:
            threshold, sens, spec = rule_operating_point(p, y, rule)
        out[label] = LabelEvidence(label, auroc, ci, f"patient-level percentile bootstrap ({n_boot} resamples)",
                                   n1, n0, threshold if not reason else None, sens if not reason else None,
                                   spec if not reason else None, not reason, reason)
    return CallEvidence(source, out)


def analytic_evidence(aurocs: Mapping[str, float | None], counts: Mapping[str, tuple[int, int]],
                      points: Mapping[str, tuple[float, float, float]], rule: CallRule,
                      not_learnt: Iterable[str] = (), source: str = "") -> CallEvidence:
    """Evidence from summary figures only: per label its held-out AUROC, ``(positives, negatives)`` and an existing
    operating point ``(threshold, sensitivity, specificity)``. The interval is Hanley–McNeil's; since the
    threshold cannot be moved without the scores, a point whose specificity is below the floor makes the label
    not callable."""
    skip = set(not_learnt)
    out: dict[str, LabelEvidence] = {}
    for label, auroc in aurocs.items():
        if label in skip:
            continue
        n1, n0 = counts.get(label, (0, 0))
        ci = hanley_mcneil_ci(auroc, n1, n0, rule.confidence) if auroc is not None and n1 and n0 else None
        reason = judge(label, auroc, ci, n1, n0, rule)
        point = points.get(label)
        if not reason and point is None:
            reason = "no operating point was set on held-out images"
        elif not reason and point is not None and point[2] < rule.specificity_floor:
            reason = (f"its operating point reaches only {point[2]:.0%} held-out specificity (the rule needs "
                      f"{rule.specificity_floor:.0%})")
        ok = not reason
        out[label] = LabelEvidence(label, auroc, ci, "Hanley-McNeil (from the AUROC and the counts)", n1, n0,
                                   point[0] if ok and point else None, point[1] if ok and point else None,
                                   point[2] if ok and point else None, ok, reason)
    return CallEvidence(source, out)


def card_rule(card: Any) -> CallRule:
    """The call rule a model card states (the default rule for a card without one)."""
    return getattr(card, "call_rule", None) or CallRule()


def card_evidence(card: Any) -> tuple[CallRule, CallEvidence | None]:
    """The rule and evidence a model card gives (:class:`core.card.ModelCard`): its ``call_evidence`` when it has
    one; else derived analytically (:func:`analytic_evidence`) from the cross-validation out-of-fold AUROCs or the
    validation metrics, with the counts and operating points the card states; ``None`` when it states neither."""
    rule = getattr(card, "call_rule", None) or CallRule()
    evidence = getattr(card, "call_evidence", None)
    if evidence is not None:
        return rule, evidence
    points = {k: (p.threshold, p.sensitivity, p.specificity) for k, p in card.operating_points.items()}
    counts = {k: (p.positives, p.negatives) for k, p in card.operating_points.items()}
    cv = card.cross_validation
    if cv is not None and cv.oof_per_label_auroc and counts:
        return rule, analytic_evidence(dict(cv.oof_per_label_auroc), counts, points, rule, card.labels_not_learnt,
                                       "cross-validation out-of-fold AUROC (summary only)")
    val = card.split_metrics("val").per_label
    if val:
        aurocs = {k: _opt(m.auroc) for k, m in val.items()}
        counts = {k: (int(m.positives or 0), int(m.known or 0) - int(m.positives or 0)) for k, m in val.items()}
        return rule, analytic_evidence(aurocs, counts, points, rule, card.labels_not_learnt,
                                       "validation split (summary only)")
    return rule, None


# ------------------------------------------------------------------------------------------ the decision


@dataclass(frozen=True)
class Call:
    """The decision on one label of one image.

    Attributes:
        label: The label.
        decision: ``"above"``, ``"below"``, ``"no call"`` or ``""`` (not learnt, or out of population).
        probability: The displayed probability (Monte-Carlo mean); ``None`` for a label not learnt.
        threshold: The operating point when the label is callable, else ``None``.
        reason: Why there is no call, or how a group came to be called; empty for a plain ``above``/``below``.
        via: For a group called through one of its findings: that finding.
    """

    label: str
    decision: str
    probability: float | None
    threshold: float | None
    reason: str = ""
    via: str | None = None

    @property
    def called(self) -> bool:
        """True when the model calls the label positive (``above``)."""
        return self.decision == ABOVE

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON records)."""
        return {"decision": self.decision, "threshold": self.threshold, "reason": self.reason, "via": self.via}


@dataclass(frozen=True)
class Calls:
    """Every label's decision on one image (taxonomy order), and why there are none when out of population.

    Attributes:
        calls: Label -> :class:`Call`.
        rule: The rule in words (:meth:`CallRule.describe`).
        out_of_population: The population checks that fired (names); no label is called when non-empty.
    """

    calls: dict[str, Call]
    rule: str = ""
    out_of_population: tuple[str, ...] = ()

    def decision(self, label: str) -> str:
        """The decision on ``label`` (``""`` for an unknown label)."""
        call = self.calls.get(label)
        return call.decision if call is not None else NONE

    def above(self) -> list[str]:
        """Labels called positive, in taxonomy order."""
        return [k for k, c in self.calls.items() if c.called]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON records)."""
        return {"rule": self.rule, "out_of_population": list(self.out_of_population),
                "labels": {k: c.to_dict() for k, c in self.calls.items()}}


def decide_calls(probabilities: Sequence[float] | np.ndarray, labels: Sequence[str], evidence: CallEvidence | None,
                 taxonomy: Taxonomy | None, not_learnt: Iterable[str] = (), out_of_population: Sequence[str] = (),
                 rule: CallRule | None = None) -> Calls:
    """Decide every label of one image (see the module docstring).

    Args:
        probabilities: ``(L,)`` displayed probabilities (Monte-Carlo means), in ``labels`` order.
        labels: Output names.
        evidence: The model's :class:`CallEvidence` (``None``: nothing is callable).
        taxonomy: For coherence (groups of a called finding; No Finding vs Abnormal); ``None`` skips it.
        not_learnt: Labels the model never learnt.
        out_of_population: Names of the population checks that fired.
        rule: The rule (for its description).
    """
    probs = np.asarray(probabilities, dtype=float)
    skip = set(not_learnt)
    fired = tuple(out_of_population)
    calls: dict[str, Call] = {}
    for i, label in enumerate(labels):
        p = None if label in skip else float(probs[i])
        if label in skip:
            calls[label] = Call(label, NONE, None, None, "not learnt: too few positive training images")
            continue
        if fired:
            calls[label] = Call(label, NONE, p, None, "no calls: the image is outside the training population "
                                                      f"({', '.join(fired)})")
            continue
        e = evidence.labels.get(label) if evidence is not None else None
        if e is None:
            calls[label] = Call(label, NO_CALL, p, None, "no call: the model's ability to separate this finding "
                                                         "was not measured on held-out images")
        elif not e.callable or e.threshold is None:
            calls[label] = Call(label, NO_CALL, p, None, f"no call: {e.reason}")
        else:
            calls[label] = Call(label, ABOVE if p >= e.threshold else BELOW, p, e.threshold)
    if taxonomy is not None and not fired:
        _cohere(calls, taxonomy)
    return Calls(calls, rule.describe() if rule is not None else "", fired)


def _cohere(calls: dict[str, Call], taxonomy: Taxonomy) -> None:
    """Groups of a called finding read as called or say why not; No Finding yields to any called finding."""
    import networkx as nx

    graph = taxonomy.graph
    called = [label for label in taxonomy.labels if label in calls and calls[label].called]
    for label in called:
        # Every group above a called finding (through any path) contains it: it reads as called, or says why not.
        for group in sorted(nx.ancestors(graph, label), key=taxonomy.index):
            up = calls.get(group)
            if up is None or up.called:
                continue
            if up.decision == BELOW:
                calls[group] = Call(group, ABOVE, up.probability, up.threshold,
                                    f"called through its finding {label} (its own probability is below its "
                                    "operating point)", via=label)
            elif "its finding" not in up.reason:
                note = f"its finding {label} is called"
                calls[group] = Call(group, up.decision, up.probability, None,
                                    f"{up.reason}; {note}" if up.reason else note)
    no_finding = calls.get(NO_FINDING)
    if no_finding is not None and no_finding.called:
        abnormal = set(nx.descendants(graph, ABNORMAL)) | {ABNORMAL} if ABNORMAL in graph else set()
        contradicting = [k for k, c in calls.items() if c.called and k in abnormal]
        if contradicting:
            calls[NO_FINDING] = Call(NO_FINDING, NO_CALL, no_finding.probability, None,
                                     f"no call: contradicted by the call on {', '.join(contradicting)}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _opt(value: Any) -> float | None:
    return float(value) if _number(value) else None


def _normal_quantile(q: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)
