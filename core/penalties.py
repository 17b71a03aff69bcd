"""Per-edge penalty weights ``P_pc`` for the hierarchical loss.

* ``fixed``: the same constant on every edge (the paper's fixed penalty).
* ``data_driven``: ``P_pc = 1 - P(child = 1 | parent = 0)`` estimated on the training labels with Laplace
  smoothing::

      P(child = 1 | parent = 0) = (n_inconsistent + alpha) / (n_parent_negative + 2 * alpha)

  where ``n_parent_negative`` counts images whose parent is a known 0 and child is known, and
  ``n_inconsistent`` those among them whose child is 1. An edge the data often "violates" (the child is
  commonly positive without its parent) is penalised less. The official code uses ``alpha = 1e-6``, which makes
  an edge seen on no parent-negative image weigh 0.5; ``alpha = 1`` (add-one) is the default here.
"""

from __future__ import annotations

import numpy as np

from core.card_sections import PenaltyRow
from core.taxonomy import Taxonomy


def fixed_penalties(taxonomy: Taxonomy, value: float = 1.0) -> np.ndarray:
    """The same penalty ``value`` on every edge, shape ``(E,)``."""
    return np.full(len(taxonomy.edges), float(value), dtype=np.float32)


def edge_counts(targets: np.ndarray, mask: np.ndarray, taxonomy: Taxonomy) -> tuple[np.ndarray, np.ndarray]:
    """Per edge: images with parent known 0 and child known, and among them those with child = 1."""
    p, c = taxonomy.parent_index, taxonomy.child_index
    both_known = mask[:, p] & mask[:, c]
    parent_neg = both_known & (targets[:, p] == 0)
    inconsistent = parent_neg & (targets[:, c] == 1)
    return parent_neg.sum(axis=0).astype(np.int64), inconsistent.sum(axis=0).astype(np.int64)


def data_driven_penalties(
    targets: np.ndarray, mask: np.ndarray, taxonomy: Taxonomy, alpha: float = 1.0
) -> np.ndarray:
    """``P_pc = 1 - (n_inconsistent + alpha) / (n_parent_negative + 2 alpha)`` per edge, shape ``(E,)``.

    Args:
        targets: ``(N, L)`` training labels (0/1) in taxonomy output order.
        mask: ``(N, L)`` known flags; rows where the parent or the child is unknown are not counted.
        taxonomy: Gives the edges.
        alpha: Laplace smoothing pseudo-count (> 0).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    n_neg, n_inc = edge_counts(targets, mask, taxonomy)
    return (1.0 - (n_inc + alpha) / (n_neg + 2.0 * alpha)).astype(np.float32)


def penalty_table(
    penalties: np.ndarray, taxonomy: Taxonomy, targets: np.ndarray | None = None, mask: np.ndarray | None = None
) -> list[PenaltyRow]:
    """Rows for a model card: each edge, its counts on ``targets`` (zeros when not given) and its penalty."""
    if targets is not None and mask is not None:
        n_neg, n_inc = edge_counts(targets, mask, taxonomy)
    else:
        n_neg = n_inc = np.zeros(len(taxonomy.edges), dtype=np.int64)
    return [
        PenaltyRow(parent=parent, child=child, n_parent_negative=int(n_neg[e]), n_inconsistent=int(n_inc[e]),
                   penalty=round(float(penalties[e]), 6))
        for e, (parent, child) in enumerate(taxonomy.edges)
    ]
