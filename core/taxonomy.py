"""The clinical label taxonomy: a directed acyclic graph of findings, loaded from YAML.

The graph decides three things the rest of HiCXR relies on:

* the order of the model's outputs (``Taxonomy.labels``),
* the parent -> child edges that the hierarchical loss penalises (``Taxonomy.edges``),
* the layered layout the dashboard draws (``Taxonomy.layers``).

The default file, ``core/taxonomy.yaml``, is the 21-output taxonomy of Asadi et al. (2025) as implemented by the
official CIHMLC code: 14 CheXpert labels, ``Uncertain`` and six high-level parents, with 20 edges. Cardiomegaly
and Pneumonia have two parents each, so it is a DAG and not a tree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import yaml

from core.errors import HiCXRError

DEFAULT_TAXONOMY_PATH = Path(__file__).with_name("taxonomy.yaml")


def violation_mask(parent: Any, child: Any, threshold: float = 0.5) -> Any:
    """The one rule of a hierarchy violation: the parent below ``threshold`` while the child is above it.

    Works elementwise on NumPy arrays and torch tensors alike (the loss, the metrics, the analysis record and the
    dashboard's tree all call it through :meth:`Taxonomy.violations` or directly).
    """
    return (parent < threshold) & (child > threshold)


class TaxonomyError(HiCXRError, ValueError):
    """A taxonomy file is malformed: unknown or duplicate label, duplicate edge, or a cycle."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise TaxonomyError(f"duplicate key {key!r} in taxonomy file (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


@dataclass(frozen=True)
class Taxonomy:
    """A validated label DAG with a fixed output order.

    Attributes:
        name: Identifier of the taxonomy (e.g. ``cihmlc-21``).
        chexpert_labels: Labels read from data (the 14 CheXpert observations), in output order.
        derived_labels: Labels computed from the others (``Uncertain`` and the high-level parents).
        graph: ``networkx.DiGraph`` with one node per label and one edge per parent -> child pair.
        edges: The parent -> child pairs, in file order.
    """

    name: str
    chexpert_labels: tuple[str, ...]
    derived_labels: tuple[str, ...]
    graph: nx.DiGraph = field(compare=False, repr=False)
    edges: tuple[tuple[str, str], ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """All labels in model output order: source labels first, then derived ones."""
        return self.chexpert_labels + self.derived_labels

    @property
    def num_labels(self) -> int:
        """Number of model outputs."""
        return len(self.labels)

    def index(self, label: str) -> int:
        """Output index of ``label``; raises ``KeyError`` naming the label if it is unknown."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise KeyError(f"unknown label {label!r}; known labels: {', '.join(self.labels)}") from None

    @property
    def parent_index(self) -> np.ndarray:
        """Output index of the parent of each edge, shape ``(E,)``."""
        return np.array([self.index(p) for p, _ in self.edges], dtype=np.int64)

    @property
    def child_index(self) -> np.ndarray:
        """Output index of the child of each edge, shape ``(E,)``."""
        return np.array([self.index(c) for _, c in self.edges], dtype=np.int64)

    def parents(self, label: str) -> list[str]:
        """Direct parents of ``label`` in output order."""
        return sorted(self.graph.predecessors(label), key=self.index)

    def children(self, label: str) -> list[str]:
        """Direct children of ``label`` in output order."""
        return sorted(self.graph.successors(label), key=self.index)

    @property
    def descendant_matrix(self) -> np.ndarray:
        """``(L, L)`` bool matrix ``R`` with ``R[a, c]`` true when ``c`` is ``a`` or one of its descendants.

        The max-constraint module of C-HMCNN (Giunchiglia & Lukasiewicz 2020) takes, for each label, the maximum
        probability over its row: a parent is then never below any of its descendants.
        """
        matrix = np.eye(self.num_labels, dtype=bool)
        for label in self.labels:
            for child in nx.descendants(self.graph, label):
                matrix[self.index(label), self.index(child)] = True
        return matrix

    def violations(self, probs: Any, threshold: float = 0.5) -> Any:
        """The one rule of a hierarchy violation: parent below ``threshold`` while its child is above it.

        Args:
            probs: ``(..., L)`` probabilities, a NumPy array or a torch tensor (the result has the same kind).
            threshold: The decision threshold (0.5, the paper's).

        Returns:
            ``(..., E)`` booleans, one per edge in :attr:`edges` order.
        """
        return violation_mask(probs[..., self.parent_index], probs[..., self.child_index], threshold)

    def layers(self) -> list[list[str]]:
        """Topological layers (roots first); each layer in output order. Used to lay the DAG out."""
        return [sorted(layer, key=self.index) for layer in nx.topological_generations(self.graph)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the YAML schema), suitable for JSON model cards."""
        edges: dict[str, list[str]] = {}
        for parent, child in self.edges:
            edges.setdefault(parent, []).append(child)
        return {
            "name": self.name,
            "chexpert_labels": list(self.chexpert_labels),
            "derived_labels": list(self.derived_labels),
            "edges": edges,
        }

    @property
    def hash(self) -> str:
        """Short SHA-256 of the output order and the edges: two models agree on meaning iff hashes match."""
        canonical = json.dumps({"labels": list(self.labels), "edges": [list(e) for e in self.edges]})
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def taxonomy_from_dict(spec: dict[str, Any], source: str = "<dict>") -> Taxonomy:
    """Build and validate a :class:`Taxonomy` from its plain-data form.

    Raises:
        TaxonomyError: a required key is missing, a label is listed twice, an edge names an unknown label or
            appears twice, a label is its own parent, or the edges form a cycle (the message names it).
    """
    missing = [k for k in ("chexpert_labels", "derived_labels", "edges") if k not in spec]
    if missing:
        raise TaxonomyError(f"{source}: missing key(s) {', '.join(missing)}")
    chexpert = tuple(str(x) for x in spec["chexpert_labels"])
    derived = tuple(str(x) for x in spec["derived_labels"])
    labels = chexpert + derived
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise TaxonomyError(f"{source}: duplicate label(s) {', '.join(duplicates)}")

    edges: list[tuple[str, str]] = []
    for parent, children in (spec["edges"] or {}).items():
        for child in children or []:
            edge = (str(parent), str(child))
            for end in edge:
                if end not in labels:
                    raise TaxonomyError(f"{source}: edge {edge[0]} -> {edge[1]} names unknown label {end!r}")
            if edge[0] == edge[1]:
                raise TaxonomyError(f"{source}: label {edge[0]!r} is its own parent")
            if edge in edges:
                raise TaxonomyError(f"{source}: duplicate edge {edge[0]} -> {edge[1]}")
            edges.append(edge)

    graph = nx.DiGraph()
    graph.add_nodes_from(labels)
    graph.add_edges_from(edges)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([cycle[0][0]] + [v for _, v in cycle])
        raise TaxonomyError(f"{source}: the edges form a cycle: {path}")

    return Taxonomy(
        name=str(spec.get("name", "unnamed")),
        chexpert_labels=chexpert,
        derived_labels=derived,
        graph=graph,
        edges=tuple(edges),
    )


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load and validate a taxonomy YAML file (the packaged 21-label taxonomy when ``path`` is None)."""
    if path is None:
        return _default_taxonomy()
    path = Path(path)
    try:
        spec = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(spec, dict):
        raise TaxonomyError(f"{path}: expected a mapping at the top level")
    return taxonomy_from_dict(spec, source=str(path))


@lru_cache(maxsize=1)
def _default_taxonomy() -> Taxonomy:
    return load_taxonomy(DEFAULT_TAXONOMY_PATH)
