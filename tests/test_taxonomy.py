"""The clinical DAG: exact edges, multi-parent nodes, layers and validation errors."""

from __future__ import annotations

import pytest

from core.taxonomy import TaxonomyError, load_taxonomy, taxonomy_from_dict

PAPER_EDGES = {
    ("Abnormal", "Opacity"), ("Abnormal", "Cardiac"), ("Abnormal", "Other"),
    ("Opacity", "Lung Opacity"), ("Opacity", "Lung Lesion"), ("Opacity", "Fluid Accumulation"),
    ("Opacity", "Missing Lung Tissue"),
    ("Fluid Accumulation", "Edema"), ("Fluid Accumulation", "Consolidation"),
    ("Fluid Accumulation", "Pleural Effusion"), ("Fluid Accumulation", "Pneumonia"),
    ("Missing Lung Tissue", "Atelectasis"), ("Missing Lung Tissue", "Pneumothorax"),
    ("Missing Lung Tissue", "Pleural Other"),
    ("Cardiac", "Enlarged Cardiomediastinum"), ("Cardiac", "Cardiomegaly"),
    ("Other", "Fracture"), ("Other", "Support Devices"),
    ("Enlarged Cardiomediastinum", "Cardiomegaly"), ("Consolidation", "Pneumonia"),
}
PAPER_ORDER = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices", "Uncertain", "Abnormal", "Cardiac", "Fluid Accumulation",
    "Missing Lung Tissue", "Opacity", "Other",
]


def test_exactly_the_papers_twenty_edges(taxonomy):
    assert len(taxonomy.edges) == 20
    assert set(taxonomy.edges) == PAPER_EDGES
    assert set(taxonomy.graph.edges) == PAPER_EDGES


def test_output_order_matches_official_code(taxonomy):
    assert list(taxonomy.labels) == PAPER_ORDER
    assert taxonomy.num_labels == 21


def test_two_parents_for_cardiomegaly_and_pneumonia(taxonomy):
    assert taxonomy.parents("Cardiomegaly") == ["Enlarged Cardiomediastinum", "Cardiac"]
    assert taxonomy.parents("Pneumonia") == ["Consolidation", "Fluid Accumulation"]
    multi = [n for n in taxonomy.labels if len(taxonomy.parents(n)) > 1]
    assert sorted(multi) == ["Cardiomegaly", "Pneumonia"]


def test_index_lists_point_at_edge_ends(taxonomy):
    for (parent, child), p, c in zip(taxonomy.edges, taxonomy.parent_index, taxonomy.child_index, strict=True):
        assert taxonomy.labels[p] == parent and taxonomy.labels[c] == child


def test_layers_put_roots_first_and_pneumonia_last(taxonomy):
    layers = taxonomy.layers()
    assert layers[0] == ["No Finding", "Uncertain", "Abnormal"]
    assert layers[1] == ["Cardiac", "Opacity", "Other"]
    assert layers[-1] == ["Pneumonia"]
    assert "Cardiomegaly" in layers[3]  # below Enlarged Cardiomediastinum, which is in layer 2
    assert sorted(x for layer in layers for x in layer) == sorted(PAPER_ORDER)


def test_hash_is_stable_and_changes_with_edges(taxonomy):
    spec = taxonomy.to_dict()
    assert taxonomy_from_dict(spec).hash == taxonomy.hash
    spec["edges"]["Other"] = ["Fracture"]
    assert taxonomy_from_dict(spec).hash != taxonomy.hash


def test_cycle_is_rejected_with_the_cycle_named(tmp_path):
    bad = tmp_path / "cyclic.yaml"
    bad.write_text("chexpert_labels: [A, B]\nderived_labels: [C]\nedges:\n  A: [B]\n  B: [C]\n  C: [A]\n")
    with pytest.raises(TaxonomyError, match=r"cycle: (A -> B -> C -> A|B -> C -> A -> B|C -> A -> B -> C)"):
        load_taxonomy(bad)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("chexpert_labels: [A, B]\nderived_labels: [P]\nedges:\n  P: [A, Z]\n", "unknown label 'Z'"),
        ("chexpert_labels: [A, A]\nderived_labels: [P]\nedges: {}\n", "duplicate label"),
        ("chexpert_labels: [A, B]\nderived_labels: [P]\nedges:\n  P: [A, A]\n", "duplicate edge P -> A"),
        ("chexpert_labels: [A, B]\nderived_labels: [P]\nedges:\n  P: [A]\n  P: [B]\n", "duplicate key 'P'"),
        ("chexpert_labels: [A]\nderived_labels: [P]\nedges:\n  P: [P]\n", "its own parent"),
        ("chexpert_labels: [A]\nedges: {}\n", "missing key"),
    ],
)
def test_invalid_files_give_specific_errors(tmp_path, yaml_text, message):
    path = tmp_path / "t.yaml"
    path.write_text(yaml_text)
    with pytest.raises(TaxonomyError, match=message):
        load_taxonomy(path)
