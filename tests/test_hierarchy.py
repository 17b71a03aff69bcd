"""The one violation rule, the descendant matrix, the C-HMCNN max constraint and its loss (golden values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.analysis import find_violations
from core.loss import HierarchicalBCELoss, MaxConstraintLoss, edge_violations
from core.metrics import violation_rate
from core.model import ModelConfig, build_model, constraint_matrix, output_probabilities
from core.penalties import fixed_penalties


def test_descendant_matrix_follows_the_dag(taxonomy):
    r = taxonomy.descendant_matrix
    idx = taxonomy.index
    assert r.shape == (21, 21) and r.diagonal().all()
    assert r[idx("Abnormal")].sum() == 19  # itself and every label except No Finding and Uncertain
    assert r[idx("Abnormal"), idx("Pneumonia")] and r[idx("Consolidation"), idx("Pneumonia")]
    assert r[idx("Enlarged Cardiomediastinum"), idx("Cardiomegaly")]
    assert not r[idx("Pneumonia"), idx("Consolidation")]  # edges point one way
    # the other two roots have no children: each is only its own descendant
    assert r[idx("No Finding")].sum() == 1 and r[idx("Uncertain")].sum() == 1


def test_one_violation_rule_everywhere(taxonomy):
    rng = np.random.default_rng(0)
    probs = rng.random((40, 21))
    mask = taxonomy.violations(probs)
    expected = (probs[:, taxonomy.parent_index] < 0.5) & (probs[:, taxonomy.child_index] > 0.5)
    assert np.array_equal(mask, expected) and mask.any()
    # metrics, the analysis record and the loss's hard penalty use the same rule
    assert violation_rate(probs, taxonomy) == pytest.approx(expected.mean())
    found = find_violations(probs[3], taxonomy)
    assert [(v.parent, v.child) for v in found] == [e for e, f in zip(taxonomy.edges, expected[3], strict=True) if f]
    hard = edge_violations(torch.from_numpy(probs), torch.as_tensor(taxonomy.parent_index),
                           torch.as_tensor(taxonomy.child_index), "hard")
    assert np.array_equal(hard.numpy().astype(bool), expected)
    # not-learnt labels are left out of the record's violations
    skipped = find_violations(probs[3], taxonomy, skip=[c for _, c in taxonomy.edges])
    assert skipped == []


def test_max_constraint_makes_every_parent_at_least_its_children(taxonomy):
    torch.manual_seed(0)
    logits = torch.randn(64, 21) * 3
    r = torch.from_numpy(taxonomy.descendant_matrix)
    probs = output_probabilities(logits, r)
    parent, child = probs[:, taxonomy.parent_index], probs[:, taxonomy.child_index]
    assert torch.all(parent >= child)
    assert violation_rate(probs.numpy(), taxonomy) == 0.0
    # A leaf keeps its own sigmoid; without a matrix it is the plain sigmoid.
    leaf = taxonomy.index("Pneumonia")
    torch.testing.assert_close(probs[:, leaf], torch.sigmoid(logits[:, leaf]))
    torch.testing.assert_close(output_probabilities(logits, None), torch.sigmoid(logits))
    assert constraint_matrix(ModelConfig.for_taxonomy()) is None
    assert torch.equal(constraint_matrix(ModelConfig.for_taxonomy(constraint="max")), r)
    with pytest.raises(ValueError, match="constraint"):
        build_model(ModelConfig.for_taxonomy(constraint="min"))


def test_mcloss_golden_values(taxonomy):
    """Hand-computed MCLoss on one image: positives take the max over their positive descendants only."""
    loss_fn = MaxConstraintLoss(taxonomy)
    z = torch.zeros(1, 21)
    i = taxonomy.index
    z[0, i("Consolidation")] = 2.0
    z[0, i("Pneumonia")] = -1.0
    y = torch.zeros(1, 21)
    m = torch.zeros(1, 21, dtype=torch.bool)
    # Known: Consolidation = 0, Pneumonia = 1, Fluid Accumulation = 1.
    y[0, i("Pneumonia")] = 1
    y[0, i("Fluid Accumulation")] = 1
    for label in ("Consolidation", "Pneumonia", "Fluid Accumulation"):
        m[0, i(label)] = True
    s = torch.sigmoid
    # Consolidation (negative): max over {Consolidation, Pneumonia} = sigmoid(2)
    neg = -math.log(1 - s(torch.tensor(2.0)).item())
    # Pneumonia (positive): only itself -> sigmoid(-1)
    pos_pneu = -math.log(s(torch.tensor(-1.0)).item())
    # Fluid Accumulation (positive): positive descendants {FA, Pneumonia} -> max(sigmoid(0), sigmoid(-1)) = 0.5
    pos_fa = -math.log(0.5)
    expected = (neg + pos_pneu + pos_fa) / 3
    assert loss_fn(z, y, m).item() == pytest.approx(expected, rel=1e-5)
    # The gradient of the positive parent reaches itself (the max), not the larger negative Consolidation.
    z.requires_grad_(True)
    loss_fn(z, y, m).backward()
    assert z.grad[0, i("Consolidation")] > 0  # pushed down
    assert z.grad[0, i("Fluid Accumulation")] < 0  # pushed up
    assert z.grad[0, i("Atelectasis")] == 0  # unknown everywhere above it


def test_mcloss_terms_match_hbce_interface(taxonomy):
    loss_fn = MaxConstraintLoss(taxonomy)
    hbce = HierarchicalBCELoss(taxonomy, fixed_penalties(taxonomy, 0.5))
    z, y = torch.randn(4, 21), torch.randint(0, 2, (4, 21)).float()
    for fn in (loss_fn, hbce):
        terms = fn.terms(z, y, None)
        assert torch.isfinite(terms.data) and terms.total.item() == pytest.approx(fn(z, y).item())
        assert terms.total.item() == pytest.approx((terms.data + terms.weight * terms.penalty).item())
    mc = loss_fn.terms(z, y)
    assert mc.weight == 0.0 and mc.penalty == 0 and torch.equal(mc.total, mc.data)
