"""DenseNet121 classifier with one output per taxonomy node, saved and loaded as safetensors.

Architecture: ``torchvision`` DenseNet121 ``features`` -> explicit ``ReLU`` -> global average pool -> dropout ->
linear. torchvision's ``features`` ends at ``norm5`` without the final ReLU (its ``forward`` applies it); making the
ReLU an explicit step matters because the post-ReLU feature map is where one-pass CAMs are exact (for a
ReLU -> GAP -> linear head, Grad-CAM of each logit there equals its CAM) and where MC dropout can start.

Input contract (:class:`ModelConfig`): a single-channel grayscale image in [0, 1], resized to
``input_size`` x ``input_size`` and normalised as ``(x - mean) / std``. Single-channel input uses a 1-channel
first convolution; when a 3-channel ImageNet checkpoint is given, its first-layer filters are summed over RGB,
which gives the same response to a gray image replicated on three channels. Any size >= 64 px works (the
feature map is ``size / output_stride``).

Files: ``<name>.safetensors`` holds the tensors and, in its header metadata, the JSON :class:`ModelConfig`.
Loading never unpickles, and refuses a file whose labels, taxonomy hash or tensor shapes do not match.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.models import densenet121

from core.contract import CONSTRAINTS, MIN_INPUT_SIZE, OUTPUT_STRIDES, Architecture
from core.errors import HiCXRError
from core.taxonomy import Taxonomy, load_taxonomy

CONFIG_KEY = "hicxr_config"
#: How the classifier's rows become the taxonomy's outputs: ``linear`` (one row per label) or ``mapped`` (rows are
#: another model's outputs, each label the maximum of the logits of its sources; see :attr:`ModelConfig.sources`).
HEADS = ("linear", "mapped")
#: ``none``: the whole image is squashed to a square; ``center``: the central square of the shorter side is taken
#: first (torchxrayvision's ``XRayCenterCrop``).
CROPS = ("none", "center")
#: ``bilinear``: torch's antialiased bilinear resize (HiCXR's own models); ``skimage``: scikit-image's
#: ``transform.resize`` with anti-aliasing (torchxrayvision's ``XRayResizer``).
RESIZES = ("bilinear", "skimage")


class ModelLoadError(HiCXRError, ValueError):
    """A weights file cannot be loaded: not safetensors, no HiCXR config, or it does not match."""


@dataclass
class ModelConfig(Architecture):
    """Everything needed to rebuild a model and feed it correctly; stored inside the weights file.

    The input contract and architecture defaults (``input_size``, ``in_channels``, ``mean``, ``std``, ``dropout``,
    ``output_stride``, ``constraint``) are :class:`core.contract.Architecture`'s, shared with the training config.

    Attributes:
        labels: Output names in order.
        taxonomy_hash: :attr:`core.taxonomy.Taxonomy.hash` of the taxonomy the outputs follow.
        backbone: Backbone name (only ``densenet121``).
        output_stride: 32 (standard DenseNet121), 16 (the last transition's 2x2 average pool removed, so the
            last dense block runs at twice the resolution: 4x finer CAMs for about a third more compute) or 8
            (the last two transitions' pools removed: a 64 px input gives an 8 x 8 map). Pooling layers have no
            weights, so a checkpoint loads at any stride.
        constraint: ``none`` (independent sigmoids) or ``max``: the C-HMCNN max-constraint module, where a
            label's probability is the maximum of its own and its descendants' sigmoids (coherent by construction;
            see :func:`output_probabilities`).
        crop: One of :data:`CROPS` (applied to the decoded image before resizing).
        resize: One of :data:`RESIZES`.
        head: One of :data:`HEADS`.
        head_outputs: For a ``mapped`` head, the names of the classifier's rows (e.g. torchxrayvision's 18
            outputs, ``""`` for an unused one); empty for a ``linear`` head.
        sources: For a ``mapped`` head, per label (in ``labels`` order) the indices of the rows whose maximum
            logit is the label's logit; an empty list means the model has no output for that label (its logit
            is 0 and the card lists it as not learnt).
    """

    labels: list[str] = field(kw_only=True)
    taxonomy_hash: str = field(kw_only=True)
    backbone: str = "densenet121"
    crop: str = "none"
    resize: str = "bilinear"
    head: str = "linear"
    head_outputs: list[str] = field(default_factory=list)
    sources: list[list[int]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_head_outputs(self) -> int:
        """Rows of the classifier: one per label, or one per ``head_outputs`` entry for a mapped head."""
        return len(self.head_outputs) if self.head == "mapped" else len(self.labels)

    @classmethod
    def for_taxonomy(cls, taxonomy: Taxonomy | None = None, **kwargs: Any) -> ModelConfig:
        """A config whose outputs follow ``taxonomy`` (the packaged one by default)."""
        taxonomy = taxonomy or load_taxonomy()
        return cls(labels=list(taxonomy.labels), taxonomy_hash=taxonomy.hash, **kwargs)

    def to_json(self) -> str:
        """JSON form, as stored in the weights file."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Inverse of :meth:`to_json`; raises :class:`ModelLoadError` on unknown or missing fields."""
        try:
            data = json.loads(text)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelLoadError(f"the model config in the weights file is malformed ({exc})") from exc


class HiCXRNet(nn.Module):
    """DenseNet121 features -> ReLU -> GAP -> dropout -> linear (one logit per taxonomy node).

    Use :meth:`forward_features` for the post-ReLU map ``(B, 1024, H/32, W/32)`` and :meth:`forward_head` for
    logits from that map, e.g. to run the backbone once and the head many times (MC dropout, CAMs).
    """

    def __init__(self, config: ModelConfig, pretrained_path: str | Path | None = None) -> None:
        super().__init__()
        if config.backbone != "densenet121":
            raise ValueError(f"unsupported backbone {config.backbone!r}; only 'densenet121'")
        if config.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {config.in_channels}")
        if config.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {config.output_stride}")
        if config.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {config.constraint!r}")
        _check_contract(config)
        self.config = config
        net = densenet121(weights=None)
        if config.in_channels == 1:
            rgb = net.features.conv0
            gray = nn.Conv2d(1, rgb.out_channels, rgb.kernel_size, rgb.stride, rgb.padding, bias=False)
            with torch.no_grad():
                gray.weight.copy_(rgb.weight.sum(dim=1, keepdim=True))
            net.features.conv0 = gray
        if pretrained_path is not None:
            load_backbone(net.features, Path(pretrained_path))
        if config.output_stride <= 16:
            net.features.transition3.pool = nn.Identity()
        if config.output_stride <= 8:
            net.features.transition2.pool = nn.Identity()
        self.features = net.features
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(net.classifier.in_features, config.num_head_outputs)
        nn.init.zeros_(self.classifier.bias)
        # (L, K) bool: label l takes the maximum logit over the rows k with sources[l, k] (mapped heads only).
        self.register_buffer("sources", source_matrix(config), persistent=False)

    @property
    def num_features(self) -> int:
        """Channels of the feature map (1024)."""
        return self.classifier.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Post-ReLU feature map ``(B, 1024, H/s, W/s)`` (``s`` = output stride) of a normalised batch."""
        if x.shape[-1] < MIN_INPUT_SIZE or x.shape[-2] < MIN_INPUT_SIZE:
            size = tuple(x.shape[-2:])
            raise ValueError(f"input must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels, got {size}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} input channel(s), got {x.shape[1]}")
        return self.relu(self.features(x))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits ``(B, L)`` from a feature map (or pooled, dropped-out features if ``pre_logits``)."""
        pooled = self.dropout(torch.flatten(self.pool(features), 1))
        return pooled if pre_logits else self.label_logits(self.classifier(pooled))

    def label_logits(self, raw: torch.Tensor) -> torch.Tensor:
        """The label logits ``(..., L)`` from the classifier's rows ``(..., K)`` (the identity for a linear head).

        For a mapped head a label's logit is the maximum over its sources (so its probability is the maximum of
        theirs: the sigmoid is monotone); a label without a source gets 0.
        """
        if self.sources is None:
            return raw
        r = self.sources.to(raw.device)
        expanded = raw.unsqueeze(-2).expand(*raw.shape[:-1], *r.shape)
        low = torch.full((), float("-inf"), dtype=raw.dtype, device=raw.device)
        best = torch.where(r, expanded, low).amax(dim=-1)
        return torch.where(r.any(dim=-1), best, torch.zeros((), dtype=raw.dtype, device=raw.device))

    def label_source(self, raw: torch.Tensor) -> torch.Tensor | None:
        """``(B, L)`` index of the row whose logit each label takes (``K`` for a label without a source), or
        ``None`` for a linear head (every label is its own row)."""
        if self.sources is None:
            return None
        r = self.sources.to(raw.device)
        expanded = raw.unsqueeze(-2).expand(*raw.shape[:-1], *r.shape)
        low = torch.full((), float("-inf"), dtype=raw.dtype, device=raw.device)
        index = torch.where(r, expanded, low).argmax(dim=-1)
        return torch.where(r.any(dim=-1), index, torch.full_like(index, r.shape[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, L)``."""
        return self.forward_head(self.forward_features(x))


def _check_contract(config: ModelConfig) -> None:
    """Refuse an unknown crop, resize or head, or a mapped head whose sources do not fit its outputs."""
    for name, value, allowed in (("crop", config.crop, CROPS), ("resize", config.resize, RESIZES),
                                 ("head", config.head, HEADS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if config.head == "mapped":
        if not config.head_outputs:
            raise ValueError("a mapped head needs head_outputs")
        if len(config.sources) != len(config.labels):
            raise ValueError(f"a mapped head needs one source list per label ({len(config.labels)}), "
                             f"got {len(config.sources)}")
        bad = [k for row in config.sources for k in row if not 0 <= int(k) < len(config.head_outputs)]
        if bad:
            raise ValueError(f"source index {bad[0]} is outside the {len(config.head_outputs)} head outputs")


def source_matrix(config: ModelConfig) -> torch.Tensor | None:
    """``(L, K)`` bool matrix of a mapped head's sources, or ``None`` for a linear head."""
    if config.head != "mapped":
        return None
    r = torch.zeros(len(config.labels), len(config.head_outputs), dtype=torch.bool)
    for label, row in enumerate(config.sources):
        for k in row:
            r[label, int(k)] = True
    return r


def build_model(config: ModelConfig, pretrained_path: str | Path | None = None) -> HiCXRNet:
    """A new model for ``config``; randomly initialised unless a local backbone checkpoint is given."""
    return HiCXRNet(config, pretrained_path)


def output_probabilities(logits: torch.Tensor, descendants: torch.Tensor | None) -> torch.Tensor:
    """Output probabilities from logits ``(..., L)``: sigmoid, then the max constraint when ``descendants`` is set.

    With the C-HMCNN max-constraint module, ``p_a = max_{c : R[a, c]} sigmoid(z_c)`` over ``a`` and its
    descendants (``R`` = :attr:`core.taxonomy.Taxonomy.descendant_matrix`), so no parent is ever below a child.
    """
    probs = torch.sigmoid(logits)
    if descendants is None:
        return probs
    r = descendants.to(device=probs.device, dtype=torch.bool)
    expanded = probs.unsqueeze(-2).expand(*probs.shape[:-1], r.shape[0], r.shape[1])
    return torch.where(r, expanded, torch.zeros((), dtype=probs.dtype, device=probs.device)).amax(dim=-1)


def constraint_matrix(config: ModelConfig, taxonomy: Taxonomy | None = None) -> torch.Tensor | None:
    """The descendant matrix the model's outputs are constrained by, or ``None`` for independent sigmoids."""
    if config.constraint == "none":
        return None
    taxonomy = taxonomy or load_taxonomy()
    return torch.from_numpy(taxonomy.descendant_matrix)


def load_backbone(features: nn.Module, path: Path) -> None:
    """Load DenseNet121 ``features.*`` weights into ``features`` from a local checkpoint; nothing is downloaded.

    Accepts a HiCXR file (a trained model or a ``pretrain.py`` backbone, safetensors) or a torchvision ImageNet
    checkpoint (``.safetensors``, or ``.pth`` read weights-only). A 3-channel first convolution is summed over
    RGB for a 1-channel model (the same response to a gray image replicated on three channels).
    """
    if not path.exists():
        raise ModelLoadError(f"{path}: backbone checkpoint not found (nothing is downloaded)")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)[0]
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Old torchvision files name dense-layer modules "norm.1"; current ones "norm1".
    old_name = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")
    state = {old_name.sub(lambda m: m.group(1) + m.group(2), k): v for k, v in state.items()}
    weights = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    conv0 = features.conv0.weight
    if "conv0.weight" in weights and weights["conv0.weight"].shape[1] != conv0.shape[1]:
        w = weights["conv0.weight"]
        if conv0.shape[1] == 1:
            weights["conv0.weight"] = w.sum(dim=1, keepdim=True)
        else:
            weights["conv0.weight"] = w.expand(-1, conv0.shape[1], -1, -1) / conv0.shape[1]
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    missing, _ = features.load_state_dict(weights, strict=False)
    if missing:
        raise ModelLoadError(f"{path}: not a DenseNet121 checkpoint ({len(missing)} missing, e.g. {missing[0]})")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    return tensors, metadata


#: Tensors under this prefix in a weights file are not model weights (e.g. the out-of-distribution reference of
#: :mod:`core.ood`); the loader leaves them out of the model and :func:`read_extra_tensors` returns them.
EXTRA_PREFIXES = ("ood.",)


def save_model(model: HiCXRNet, path: str | Path, half: bool = False,
               extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` to ``path`` (``.safetensors``) with its config in the header; fp16 floats if ``half``.

    ``extra``: additional tensors (names under :data:`EXTRA_PREFIXES`), stored as given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    for k, v in (extra or {}).items():
        if not k.startswith(EXTRA_PREFIXES):
            raise ValueError(f"extra tensor {k!r} must be named under one of {EXTRA_PREFIXES}")
        state[k] = v.detach().cpu().contiguous()
    save_file(state, str(path), metadata={CONFIG_KEY: model.config.to_json(), "format": "pt"})
    return path


def read_model_config(path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in a weights file, without reading the tensors."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    return _config_from_metadata(path, metadata)


def _config_from_metadata(path: Path, metadata: dict[str, str]) -> ModelConfig:
    if CONFIG_KEY not in metadata:
        raise ModelLoadError(f"{path}: safetensors file without a HiCXR model config (not a HiCXR model)")
    return ModelConfig.from_json(metadata[CONFIG_KEY])


def load_model(path: str | Path, taxonomy: Taxonomy | None = None, device: str | torch.device = "cpu") -> HiCXRNet:
    """Load a model saved by :func:`save_model`, in eval mode, as float32 on ``device``.

    Raises:
        ModelLoadError: the file is missing or not safetensors, has no HiCXR config, its labels or taxonomy hash
            differ from ``taxonomy`` (the packaged one by default), or its tensors do not fit the architecture.
            The message says exactly what does not match.
    """
    return load_model_and_extras(path, taxonomy, device)[0]


def load_model_and_extras(
    path: str | Path, taxonomy: Taxonomy | None = None, device: str | torch.device = "cpu"
) -> tuple[HiCXRNet, dict[str, torch.Tensor]]:
    """:func:`load_model` plus the file's non-model tensors (:func:`read_extra_tensors`), opening the file once."""
    path = Path(path)
    taxonomy = taxonomy or load_taxonomy()
    if not path.exists():
        raise ModelLoadError(f"{path}: weights file not found")
    tensors, metadata = _read_safetensors(path)
    config = _config_from_metadata(path, metadata)
    if list(config.labels) != list(taxonomy.labels):
        missing = [x for x in taxonomy.labels if x not in config.labels]
        extra = [x for x in config.labels if x not in taxonomy.labels]
        detail = f"missing {missing}, unexpected {extra}" if missing or extra else "same labels in another order"
        raise ModelLoadError(f"{path}: output labels do not match taxonomy {taxonomy.name!r}: {detail}")
    if config.taxonomy_hash != taxonomy.hash:
        raise ModelLoadError(
            f"{path}: trained for taxonomy hash {config.taxonomy_hash}, but the loaded taxonomy has {taxonomy.hash} "
            "(the parent/child edges differ)"
        )
    extras = {k: tensors.pop(k) for k in list(tensors) if k.startswith(EXTRA_PREFIXES)}
    model = HiCXRNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s) (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es) (e.g. {wrong[0]})")
        raise ModelLoadError(f"{path}: weights do not fit the architecture: {'; '.join(parts)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    return model.to(device).eval(), extras


def read_extra_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The non-model tensors of a weights file (see :data:`EXTRA_PREFIXES`), without loading the model."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(EXTRA_PREFIXES)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
