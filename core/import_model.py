"""``python -m core.import_model txv:NAME --export weights/NAME``: a torchxrayvision DenseNet as a HiCXR variant.

torchxrayvision's DenseNet121 weights (``densenet121-res224-all``, ``-nih``, ``-chex``, ``-mimic_ch``, ...) were
trained on hundreds of thousands of radiographs. This module converts one into an ordinary HiCXR weights file
(safetensors, no pickle) with a model card built by the project's export path (:func:`core.export.export_model`,
on the project's test split), so the dashboard compares it with the project's own variants number for number.

What is kept from torchxrayvision (the model's own input contract, :class:`core.model.ModelConfig`):

* 224 px, its centre crop (the central square of the shorter side, ``XRayCenterCrop``) and its resize
  (scikit-image, ``XRayResizer``): ``crop="center"``, ``resize="skimage"``;
* its [-1024, 1024] scaling (``xrv.utils.normalize``): pixels in [0, 1] normalised with ``mean=0.5,
  std=1/2048``;
* its DenseNet121 features and its 18-row linear classifier, unchanged; no dropout (so no Monte-Carlo spread).

Its 18 outputs are mapped onto the taxonomy by :func:`label_map` (the README has the table): an output with the
taxonomy's name (or ``Effusion`` -> Pleural Effusion) maps directly; NIH classes stand in for a label only when the
weights have no direct output for it, as the project maps NIH's labels (:data:`core.labels.NIH_TO_CHEXPERT`:
Infiltration -> Lung Opacity, Mass/Nodule -> Lung Lesion by the max, Pleural_Thickening -> Pleural Other);
Emphysema, Fibrosis and Hernia have no taxonomy node and are dropped. A parent without its own output is
*derived* as the maximum of its children (the probability of the most likely child: coherent with them by
construction) and is listed as not learnt, as are labels no output covers (No Finding, Support Devices,
Uncertain). The probabilities are torchxrayvision's sigmoid outputs (``apply_sigmoid=True``), not its ``op_norm``
rescaling: the card's operating points, set on held-out NIH images, play that role.

Loading torchxrayvision's files goes through torchxrayvision's own loader, only here: it downloads the weights
(or reads them from ``--weights-file``) and unpickles them, so use files from torchxrayvision's release only. The
dashboard loads the exported safetensors file and never imports torchxrayvision.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.labels import NIH_ONLY_FINDINGS, NIH_TO_CHEXPERT
from core.model import HiCXRNet, ModelConfig
from core.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

PREFIX = "txv:"
#: torchxrayvision's input side and scaling: pixels in [0, 1] -> (x - 0.5) * 2048, i.e. [-1024, 1024].
TXV_SIZE = 224
TXV_MEAN = 0.5
TXV_STD = 1.0 / 2048.0
#: torchxrayvision output name -> taxonomy label, where they are the same finding.
SAME_FINDING = {"Effusion": "Pleural Effusion"}
DEFAULT_CONFIG = "configs/nih_bce.yaml"


class ImportModelError(ValueError):
    """A model cannot be imported: unknown name, weights that cannot be had, or outputs that do not fit."""


@dataclass(frozen=True)
class LabelSource:
    """How one taxonomy label gets its value from the imported model's outputs.

    Attributes:
        label: The taxonomy label.
        kind: ``direct`` (an output of that finding), ``nih`` (NIH classes standing in, as the project maps NIH's
            labels), ``derived`` (the maximum of its children; not learnt) or ``none`` (no output: not learnt).
        outputs: The torchxrayvision output names whose maximum is the label's value.
    """

    label: str
    kind: str
    outputs: tuple[str, ...]

    @property
    def learnt(self) -> bool:
        """Whether the imported model has learnt this label itself (``direct`` or ``nih``)."""
        return self.kind in ("direct", "nih")

    def to_dict(self) -> dict[str, Any]:
        """One row of the card's label map."""
        return {"label": self.label, "kind": self.kind, "outputs": list(self.outputs)}


def label_map(outputs: Sequence[str], taxonomy: Taxonomy | None = None) -> list[LabelSource]:
    """Where each taxonomy label comes from, given the model's output names (``""`` marks an unused output).

    Rules (module docstring): direct outputs first; NIH classes only where no direct output exists; a parent with
    no output of its own is the maximum of its children's sources (``derived``); anything else has none.
    """
    taxonomy = taxonomy or load_taxonomy()
    names = [n for n in outputs if n]
    resolved: dict[str, LabelSource] = {}
    for label in taxonomy.labels:
        direct = tuple(n for n in names if n == label or SAME_FINDING.get(n) == label)
        nih = tuple(n for n in names if n not in SAME_FINDING and NIH_TO_CHEXPERT.get(n) == label and n != label)
        if direct:
            resolved[label] = LabelSource(label, "direct", direct)
        elif nih:
            resolved[label] = LabelSource(label, "nih", nih)
    # Parents without an output: the maximum over their children, deepest first (children resolve before parents).
    for layer in reversed(taxonomy.layers()):
        for label in layer:
            if label in resolved or not taxonomy.children(label):
                continue
            sources = tuple(dict.fromkeys(n for child in taxonomy.children(label)
                                          for n in (resolved[child].outputs if child in resolved else ())))
            if sources:
                resolved[label] = LabelSource(label, "derived", sources)
    return [resolved.get(label, LabelSource(label, "none", ())) for label in taxonomy.labels]


def dropped_outputs(outputs: Sequence[str], sources: Sequence[LabelSource]) -> list[str]:
    """Outputs no taxonomy label uses (NIH-only findings, and NIH classes shadowed by a direct output)."""
    used = {n for s in sources for n in s.outputs}
    return [n for n in outputs if n and n not in used]


def hicxr_config(outputs: Sequence[str], sources: Sequence[LabelSource], taxonomy: Taxonomy,
                 extra: dict[str, Any] | None = None) -> ModelConfig:
    """The HiCXR config of an imported torchxrayvision DenseNet: its input contract and its mapped head."""
    index = {n: k for k, n in enumerate(outputs) if n}
    return ModelConfig.for_taxonomy(
        taxonomy, backbone="densenet121", in_channels=1, input_size=TXV_SIZE, dropout=0.0, mean=TXV_MEAN,
        std=TXV_STD, output_stride=32, constraint="none", crop="center", resize="skimage", head="mapped",
        head_outputs=list(outputs), sources=[[index[n] for n in s.outputs] for s in sources], extra=extra or {},
    )


def txv_names() -> list[str]:
    """The torchxrayvision DenseNet weight names this converter knows (``densenet121-res224-*`` and short forms)."""
    import torchxrayvision as xrv

    urls = xrv.models.model_urls
    return sorted(k for k, v in urls.items() if "densenet121" in str(v.get("weights_url", ""))
                  and len(v.get("labels", ())) == 18)


def parse_source(source: str) -> str:
    """``txv:NAME`` -> ``NAME``; :class:`ImportModelError` for another prefix or an unknown name."""
    if not source.startswith(PREFIX):
        raise ImportModelError(f"unknown model source {source!r}: expected txv:NAME, e.g. txv:densenet121-res224-all")
    name = source[len(PREFIX):]
    known = txv_names()
    if name not in known:
        raise ImportModelError(f"torchxrayvision has no DenseNet121 weights named {name!r}; known: {', '.join(known)}")
    return name


def txv_outputs(name: str) -> list[str]:
    """The 18 output names of torchxrayvision's weights ``name`` (``""`` for an output those weights leave unused)."""
    import torchxrayvision as xrv

    return [str(n) for n in xrv.models.model_urls[name]["labels"]]


def load_txv(name: str, weights_file: str | Path | None = None) -> nn.Module:
    """torchxrayvision's DenseNet ``name`` with its trained weights, through torchxrayvision's own loader.

    Without ``weights_file`` torchxrayvision looks in its cache (``~/.torchxrayvision``) and downloads what is
    missing; with it, that local file is used (offline).

    Raises:
        ImportModelError: the weights cannot be downloaded or read (the message says how to get them).
    """
    import torchxrayvision as xrv

    url = xrv.models.model_urls[name]["weights_url"]
    expected = Path(url).name
    with tempfile.TemporaryDirectory(prefix="hicxr-txv-") as tmp:
        cache_dir = None
        if weights_file is not None:
            path = Path(weights_file).expanduser()
            if not path.is_file():
                raise ImportModelError(f"{path}: weights file not found")
            # torchxrayvision's loader finds a file by its release name in a cache folder: give it one.
            cache_dir = tmp
            (Path(tmp) / expected).symlink_to(path.resolve())
        try:
            return xrv.models.DenseNet(weights=name, cache_dir=cache_dir).eval()
        except Exception as exc:  # noqa: BLE001 - requests, OSError, unpickling: all mean "no usable weights"
            if weights_file is not None:
                raise ImportModelError(
                    f"{weights_file}: torchxrayvision could not load it as {name} ({type(exc).__name__}: {exc}); "
                    f"it should be {expected} from torchxrayvision's release") from None
            raise ImportModelError(
                f"could not download torchxrayvision's weights {name} ({type(exc).__name__}: {exc}). On a machine "
                f"with internet access, download {url} (torchxrayvision keeps it as ~/.torchxrayvision/{expected}) "
                f"and run again with --weights-file PATH/{expected}.") from None


def random_txv(name: str | None = None, seed: int = 0) -> nn.Module:
    """A torchxrayvision DenseNet with random weights (``weights=None``, then randomised): for tests and demos.

    Batch-norm statistics and affine terms and the classifier's bias are drawn at random too, so outputs vary
    between labels and images like a trained model's do (torchxrayvision's own init leaves them constant).
    """
    import torchxrayvision as xrv

    torch.manual_seed(seed)
    model = xrv.models.DenseNet(weights=None, apply_sigmoid=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        model.classifier.bias.normal_(-1.0, 0.5)
    if name is not None:
        model.targets = model.pathologies = txv_outputs(name)
    return model.eval()


def convert(txv_model: nn.Module, outputs: Sequence[str] | None = None, taxonomy: Taxonomy | None = None,
            extra: dict[str, Any] | None = None) -> HiCXRNet:
    """A :class:`~core.model.HiCXRNet` with the torchxrayvision model's weights and its outputs mapped.

    Args:
        txv_model: A ``torchxrayvision.models.DenseNet`` (trained or random).
        outputs: Its output names (default: the model's ``targets``; ``""`` for an unused output).
        taxonomy: The output taxonomy (the packaged one by default).
        extra: Facts stored in the weights file's config (e.g. where the weights came from).

    Raises:
        ImportModelError: the model is not an 18-output, 1-channel DenseNet121 with ``features``/``classifier``.
    """
    taxonomy = taxonomy or load_taxonomy()
    outputs = [str(n) for n in (outputs if outputs is not None else txv_model.targets)]
    classifier = getattr(txv_model, "classifier", None)
    if not isinstance(classifier, nn.Linear) or classifier.out_features != len(outputs):
        raise ImportModelError(f"expected a DenseNet with a linear classifier of {len(outputs)} outputs")
    sources = label_map(outputs, taxonomy)
    config = hicxr_config(outputs, sources, taxonomy, extra)
    model = HiCXRNet(config)
    state = {f"features.{k}": v for k, v in txv_model.features.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ImportModelError(f"the torchxrayvision model does not fit DenseNet121: {len(missing)} missing "
                               f"(e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]}) tensors")
    return model.eval()


def card_facts(name: str, outputs: Sequence[str], sources: Sequence[LabelSource], random_init: bool,
               weights_file: str | Path | None) -> dict[str, Any]:
    """What the card says about the import: origin, label map, what is not learnt and why, data and limits."""
    import torchxrayvision as xrv

    url = xrv.models.model_urls[name]["weights_url"]
    derived = [s.label for s in sources if s.kind == "derived"]
    absent = [s.label for s in sources if s.kind == "none"]
    dropped = dropped_outputs(outputs, sources)
    origin = {
        "source": "torchxrayvision", "weights": name, "url": url, "torchxrayvision_version": xrv.__version__,
        "randomly_initialised": random_init, "weights_file": str(weights_file) if weights_file else None,
        "label_map": [s.to_dict() for s in sources], "dropped_outputs": dropped,
        "nih_only_dropped": [n for n in dropped if n in NIH_ONLY_FINDINGS],
    }
    warning = ("RANDOMLY INITIALISED: these are not torchxrayvision's trained weights but a random DenseNet with "
               "its architecture and outputs, made to test the converter and the dashboard; every number and map "
               "of it is meaningless. " if random_init else "")
    limitations = (
        f"{warning}Imported from torchxrayvision ({name}); trained by its authors on their datasets, not by this "
        "project. The NIH-trained weights (-nih, -all) saw NIH ChestX-ray14 images, which may include this "
        "project's test images, so its test figures here may be optimistic. Derived, not learnt (the maximum of "
        f"their children's outputs): {', '.join(derived) or 'none'}. No output: {', '.join(absent) or 'none'}. "
        f"Outputs dropped (no taxonomy node, or shadowed by a direct output): {', '.join(dropped) or 'none'}. "
        "No dropout, so no Monte-Carlo spread (std 0). Probabilities are torchxrayvision's sigmoid outputs, "
        "temperature-scaled on this project's validation images.")
    return {
        "origin": origin,
        "not_learnt": derived + absent,
        "not_learnt_rule": ("no output of the imported model covers it, or derived as the maximum of its children "
                            "(derived, not learnt)"),
        "data": {"trained_on": f"torchxrayvision {name} (not this project's data)",
                 "sources": [{"name": "torchxrayvision", "url": "https://github.com/mlmed/torchxrayvision",
                              "licence": "Apache-2.0 (code and weights)",
                              "citation": "Cohen J.P. et al., TorchXRayVision: A library of chest X-ray datasets "
                                          "and models, MIDL 2022"}],
                 "attribution": ("Model weights from torchxrayvision (Cohen J.P. et al., MIDL 2022), "
                                 f"{name}; evaluated on NIH ChestX-ray14 images (NIH Clinical Center).")},
        "limitations": limitations,
    }


def import_txv(name: str, prefix: str | Path, *, weights_file: str | Path | None = None, random_init: bool = False,
               seed: int = 0, config_path: str | Path = DEFAULT_CONFIG, overrides: Sequence[str] = (),
               reproduce: str = "") -> Any:
    """Convert torchxrayvision's ``name`` and export it to ``prefix`` with a card on the project's test split.

    Returns the :class:`core.card.ModelCard` written. ``random_init`` uses random weights instead (labelled so).
    """
    from core.config import load_config, resolve_path
    from core.export import export_model

    taxonomy = load_taxonomy()
    txv = random_txv(name, seed) if random_init else load_txv(name, weights_file)
    outputs = txv_outputs(name)
    sources = label_map(outputs, taxonomy)
    facts = card_facts(name, outputs, sources, random_init, weights_file)
    model = convert(txv, outputs, taxonomy, extra={"imported_from": f"torchxrayvision:{name}",
                                                   "randomly_initialised": random_init})
    config = load_config(resolve_path(config_path), [
        f"model.input_size={TXV_SIZE}", "model.output_stride=32", "model.dropout=0.0", f"model.mean={TXV_MEAN}",
        f"model.std={TXV_STD!r}", "data.fit_on=train", *overrides])
    from core.card_sections import DataInfo, ImportedInfo, LossInfo

    return export_model(
        model, config, prefix, reproduce=reproduce, taxonomy=taxonomy,
        training={"imported": True, "note": "not trained here: weights converted from torchxrayvision"},
        not_learnt=facts["not_learnt"], not_learnt_rule=facts["not_learnt_rule"],
        card_updates={
            "data": DataInfo.from_dict(facts["data"], "data"), "limitations": facts["limitations"],
            "training_positives": {}, "penalty_table": [],
            "loss": LossInfo.from_dict({"name": "torchxrayvision", "note": "trained by torchxrayvision's authors"}),
            "imported": ImportedInfo.from_dict(facts["origin"], "imported"),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 written, 2 refused with a message)."""
    parser = argparse.ArgumentParser(prog="python -m core.import_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="txv:NAME, e.g. txv:densenet121-res224-all (see --list)")
    parser.add_argument("--export", required=False, metavar="PREFIX", help="write PREFIX.safetensors and PREFIX.json")
    parser.add_argument("--weights-file", help="a torchxrayvision weights file already downloaded (offline use)")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights instead of the trained ones (tests and demos; labelled as such)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the project config whose splits build the card")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of that config, e.g. --set eval.n_boot=200 (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the torchxrayvision weight names and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.list:
        print("\n".join(txv_names()))
        return 0
    from core.card import CardError
    from core.config import ConfigError, resolve_path
    from core.data import DataError
    from core.model import ModelLoadError

    try:
        name = parse_source(args.source or "")
        if not args.export:
            raise ImportModelError("say where to write the variant: --export weights/NAME")
        if args.random_init and args.weights_file:
            raise ImportModelError("--random-init and --weights-file exclude each other")
        reproduce = shlex.join(["python", "-m", "core.import_model", *(argv if argv is not None else sys.argv[1:])])
        card = import_txv(name, resolve_path(args.export), weights_file=args.weights_file,
                          random_init=args.random_init, seed=args.seed, config_path=args.config,
                          overrides=args.overrides, reproduce=reproduce)
    except (ImportModelError, CardError, ConfigError, DataError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.export}.safetensors and {args.export}.json: test macro AUROC {card.macro_auroc('test')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
