"""HBCE: golden values, lambda = 0, gradients of hard and soft violations, masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.loss import HierarchicalBCELoss, masked_bce_with_logits
from core.penalties import fixed_penalties
from core.taxonomy import taxonomy_from_dict

L3 = math.log(3.0)


@pytest.fixture()
def tiny():
    return taxonomy_from_dict({"chexpert_labels": ["C1", "C2"], "derived_labels": ["P"], "edges": {"P": ["C1", "C2"]}})


@pytest.fixture()
def batch():
    # columns C1, C2, P; sigmoid(+-ln 3) = 0.75 / 0.25
    logits = torch.tensor([[L3, -L3, 0.0], [L3, 0.0, -L3]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    return logits, targets, mask


def test_golden_values_by_hand(tiny, batch):
    logits, targets, mask = batch
    # known entries: -log .75 four times, -log .5 once -> mean over 5
    bce = (4 * -math.log(0.75) - math.log(0.5)) / 5
    pen = np.array([2.0, 1.0], dtype=np.float32)
    soft = HierarchicalBCELoss(tiny, pen, lam=0.5, violation="soft")
    # image 1: relu(.75-.5)*2 + relu(.25-.5)*1 = 0.5 ; image 2: relu(.75-.25)*2 + relu(.5-.25)*1 = 1.25
    assert soft(logits, targets, mask).item() == pytest.approx(bce + 0.5 * (0.5 + 1.25) / 2, abs=1e-6)
    hard = HierarchicalBCELoss(tiny, pen, lam=0.5, violation="hard")
    # image 1: parent .5 is not < .5 -> 0 ; image 2: C1 .75 > .5 with parent .25 -> 2, C2 .5 not > .5 -> 0
    assert hard(logits, targets, mask).item() == pytest.approx(bce + 0.5 * (0 + 2) / 2, abs=1e-6)
    terms = hard.terms(logits, targets, mask)
    assert terms.data.item() == pytest.approx(bce, abs=1e-6) and terms.penalty.item() == pytest.approx(1.0)
    assert terms.weight == 0.5 and terms.total.item() == pytest.approx(bce + 0.5, abs=1e-6)


def test_lambda_zero_is_exactly_bce(taxonomy):
    torch.manual_seed(0)
    logits = torch.randn(8, 21)
    targets = (torch.rand(8, 21) > 0.5).float()
    loss = HierarchicalBCELoss(taxonomy, fixed_penalties(taxonomy), lam=0.0, violation="soft")
    assert torch.equal(loss(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


def test_hard_penalty_has_exactly_bce_gradient(taxonomy):
    torch.manual_seed(1)
    logits = (torch.randn(16, 21) * 3).requires_grad_()
    targets = (torch.rand(16, 21) > 0.5).float()
    hard = HierarchicalBCELoss(taxonomy, fixed_penalties(taxonomy), lam=5.0, violation="hard")
    value = hard(logits, targets)
    (grad_hard,) = torch.autograd.grad(value, logits)
    plain = HierarchicalBCELoss(taxonomy, fixed_penalties(taxonomy), lam=0.0, violation="hard")
    (grad_plain,) = torch.autograd.grad(plain(logits, targets), logits)
    (grad_bce,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(logits, targets), logits)
    assert hard.terms(logits, targets).penalty.item() > 0  # violations exist, yet...
    assert torch.equal(grad_hard, grad_plain)  # ...they change nothing in the gradient
    torch.testing.assert_close(grad_hard, grad_bce, rtol=1e-6, atol=1e-9)


def test_soft_penalty_pushes_violating_child_down_and_parent_up(tiny):
    logits = torch.tensor([[2.0, -3.0, -2.0]], requires_grad=True)  # C1 high, parent low: a violation
    targets = torch.zeros(1, 3)
    mask = torch.zeros(1, 3, dtype=torch.bool)  # no known labels: only the penalty acts
    loss = HierarchicalBCELoss(tiny, np.array([1.0, 1.0], np.float32), lam=1.0, violation="soft")
    loss(logits, targets, mask).backward()
    g = logits.grad[0]
    assert g[0] > 0  # gradient descent lowers the child C1
    assert g[2] < 0  # and raises the parent P
    assert g[1] == 0  # C2 is below its parent: no violation, no push


def test_masked_entries_contribute_nothing(taxonomy):
    torch.manual_seed(2)
    logits = torch.randn(4, 21, requires_grad=True)
    targets = (torch.rand(4, 21) > 0.5).float()
    mask = torch.rand(4, 21) > 0.3
    changed = targets.clone()
    changed[~mask] = 1 - changed[~mask]  # flip only the unknown targets
    a = masked_bce_with_logits(logits, targets, mask)
    b = masked_bce_with_logits(logits, changed, mask)
    assert torch.equal(a, b)
    a.backward()
    assert torch.all(logits.grad[~mask] == 0)
    assert masked_bce_with_logits(logits, targets, torch.zeros_like(mask)).item() == 0.0


def test_bad_arguments_are_rejected(taxonomy):
    with pytest.raises(ValueError, match="20 penalties"):
        HierarchicalBCELoss(taxonomy, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="unknown violation"):
        HierarchicalBCELoss(taxonomy, fixed_penalties(taxonomy), violation="smooth")


def test_build_loss_picks_the_registered_loss_and_its_penalty_table(taxonomy):
    """Golden numbers through the registry: every output at 0.25 but Cardiomegaly at 0.75, every target 0."""
    import pandas as pd

    from core.config import CHOICES, REPO_ROOT, config_from_dict, load_config
    from core.labels import LabelSet
    from core.loss import LOSSES, MaxConstraintLoss, build_loss, penalty_rows

    assert set(LOSSES) == set(CHOICES["loss.name"])  # every name a config may give builds a loss
    z = torch.full((1, 21), -L3)
    z[0, taxonomy.index("Cardiomegaly")] = L3
    y = torch.zeros(1, 21)
    labels = LabelSet(paths=["a.png"], targets=np.zeros((1, 21), np.float32), mask=np.ones((1, 21), bool),
                      labels=tuple(taxonomy.labels), metadata=pd.DataFrame({"patient_id": ["p"]}))
    bce = (20 * math.log(4 / 3) + math.log(4)) / 21  # -log(1 - .25) twenty times, -log(1 - .75) once
    # Cardiomegaly's two parents (Cardiac, Enlarged Cardiomediastinum) at .25: two edges violated by .5 each
    cases = {
        "nih_bce": bce,
        "nih_hbce_soft_fixed": bce + 1.0 * 0.5 * (0.5 + 0.5),  # lambda 1, P = .5, soft v = .75 - .25
        "nih_hbce_fixed": bce + 1.0 * 0.5 * (1 + 1),  # hard v = 1 on both edges
        # MCLoss: Cardiomegaly and its ancestors (Cardiac, Enlarged Cardiomediastinum, Abnormal) reach .75
        "nih_chmcnn": (4 * math.log(4) + 17 * math.log(4 / 3)) / 21,
    }
    for name, expected in cases.items():
        config = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
        loss_fn, table = build_loss(config, labels, taxonomy)
        assert loss_fn(z, y).item() == pytest.approx(expected, abs=1e-6), name
        assert [r.to_dict() for r in table] == [r.to_dict() for r in penalty_rows(config, labels, taxonomy)]
        assert (table == []) == isinstance(loss_fn, MaxConstraintLoss)
    bad = config_from_dict({"data": {"csv": "x.csv"}})
    bad.loss.name = "focal"
    with pytest.raises(ValueError, match="unknown loss 'focal'; registered: hbce, mcloss"):
        build_loss(bad, labels, taxonomy)
