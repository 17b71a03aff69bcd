"""The radiograph viewer: a small Streamlit custom component (static HTML + JavaScript in ``viewer_frontend/``, no
build step, no network access: its page's Content-Security-Policy allows no connection at all).

Two panes, the radiograph and the selected label's map, share one window/level, invert and zoom, all applied in
the browser to the 16-bit display copy (:class:`core.display.DisplayImage`), so dragging the window costs no
round trip. Presets (the file's own window, lung, mediastinum, bone, full range), mouse-drag window/level, pan,
zoom, reset, a pixel-value readout in the file's units, and keyboard shortcuts. The map's colours, opacity and
threshold are set in the viewer's toolbar and applied there too (:class:`MapSettings`). The component returns the
window and map settings the reader settled on (the PDF report draws the image with that window, the gallery its
tiles with those settings) and, for the ``[``/``]`` keys, the label to select.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import streamlit as st
import streamlit.components.v1 as components

from core.display import PRESET_TITLES, DisplayImage
from core.explain import DASH_OFF, DASH_ON, RELATIVE_COLOR, RELATIVE_LEVELS, relative_line_width
from dashboard.components.cam import COLORMAPS, DEFAULT_COLORMAP, MapLayer, colormap_tables

_FRONTEND = Path(__file__).resolve().parent / "viewer_frontend"


def _component(**kwargs: Any) -> Any:
    # Declared on each use, inside the script run: Streamlit registers a component (and serves its files) only when
    # it is declared while a script runs, and `streamlit run` imports this module before any run (st.App mode).
    return components.declare_component("hicxr_viewer", path=str(_FRONTEND))(**kwargs)


@dataclass(frozen=True)
class MapSettings:
    """How the map pane draws a heat map: its colour map, opacity, the map value below which it is transparent, and
    whether the pane is shown at all. Set in the viewer's own toolbar and applied in the browser at once, then
    reported back (a run of the viewer's fragment only) so the gallery draws its tiles with the same settings."""

    colormap: str = DEFAULT_COLORMAP
    opacity: float = 0.45
    threshold: float = 0.2
    show_map: bool = True

    @classmethod
    def from_value(cls, value: Any) -> MapSettings | None:
        """The settings in a value the viewer sent, or ``None`` when it holds none (or malformed ones)."""
        if not isinstance(value, dict) or not isinstance(value.get("map"), dict):
            return None
        raw = value["map"]
        try:
            settings = cls(colormap=str(raw["colormap"]), opacity=float(raw["opacity"]),
                           threshold=float(raw["threshold"]), show_map=bool(raw["show_map"]))
        except (KeyError, TypeError, ValueError):
            return None
        ok = settings.colormap in COLORMAPS and 0.0 <= settings.opacity <= 1.0 and 0.0 <= settings.threshold <= 1.0
        return settings if ok else None


@dataclass(frozen=True)
class ViewerState:
    """What the viewer reports back: the window (file units), invert, the preset in use, and a label the reader
    asked for with the keyboard (``None`` otherwise)."""

    center: float
    width: float
    invert: bool
    preset: str
    select: str | None = None
    nonce: int | None = None

    @classmethod
    def from_value(cls, value: Any, image_id: str) -> ViewerState | None:
        """The state in a value the viewer sent for ``image_id``; ``None`` for another image or a malformed value."""
        if not isinstance(value, dict) or value.get("image_id") != image_id:
            return None
        try:
            return cls(center=float(value["center"]), width=float(value["width"]), invert=bool(value["invert"]),
                       preset=str(value.get("preset", "custom")), select=value.get("select"),
                       nonce=value.get("nonce"))
        except (KeyError, TypeError, ValueError):
            return None


def _sent_key(key: str) -> str:
    return f"_{key}_levels_sent"


def _needs_levels(key: str, image_id: str) -> bool:
    """Whether this run must send the image's pixels (a few MB) to the viewer.

    They go once per image and session: the browser keeps them while the image stays the same, so a display-only
    rerun sends a few hundred bytes, not the picture again. A viewer that lost them (drawn anew, e.g. after the
    reader came back from another tab) asks for them with ``need`` and a fresh ``nonce``, answered once.
    """
    if st.session_state.get(_sent_key(key)) != image_id:
        return True
    value = st.session_state.get(key)
    if isinstance(value, dict) and value.get("need") == image_id:
        nonce, answered = value.get("nonce"), st.session_state.get(f"_{key}_need_answered")
        if nonce != answered:
            st.session_state[f"_{key}_need_answered"] = nonce
            return True
    return False


def radiograph_viewer(
    display: DisplayImage,
    image_id: str,
    *,
    key: str,
    initial: ViewerState | None = None,
    layer: MapLayer | None = None,
    layer_id: str = "",
    map_title: str = "",
    image_title: str = "Radiograph",
    labels: list[str] | None = None,
    selected: str | None = None,
    height: int = 560,
    map_settings: MapSettings | None = None,
) -> ViewerState | None:
    """Draw the viewer; return the reader's last window (``None`` until they change it).

    Args:
        display: The bounded 16-bit display copy.
        image_id: Changes when the image changes (the viewer then starts from ``initial`` or the file's window).
        key: Streamlit widget key.
        initial: The window to start from for a new image (e.g. the last one the reader chose for it).
        layer: The selected label's map (stretched over the image), or ``None`` for no map.
        layer_id: Changes when the layer changes (the browser decodes each layer once).
        map_title: The map pane's title (label, probability, what kind of map).
        image_title: The radiograph pane's title.
        labels: Labels in tree order, for the ``[``/``]`` shortcuts.
        selected: The label whose map is shown.
        height: Height of each pane in CSS pixels.
        map_settings: The map controls to start from when the viewer is drawn anew (it keeps its own after that).
    """
    h, w = display.levels.shape
    levels = b""
    if _needs_levels(key, image_id):
        levels = display.levels.astype("<u2").tobytes()
    settings = map_settings or MapSettings()
    # Every argument that is not bytes goes in one JSON string: Streamlit inspects each argument of a component
    # (is it a data frame?), which costs milliseconds per list on every rerun.
    spec = json.dumps({
        "image_id": image_id, "width": int(w), "height_px": int(h), "raw_low": display.raw_low,
        "raw_high": display.raw_high, "scale": display.scale, "inverted": display.inverted,
        "sigmoid": display.sigmoid, "integer": display.integer, "source_size": list(display.source_size),
        "presets": [{"name": name, "title": PRESET_TITLES[name], "center": c, "width": w}
                    for name, (c, w) in display.presets.items()],
        "initial": None if initial is None else {"center": initial.center, "width": initial.width,
                                                 "invert": initial.invert, "preset": initial.preset},
        "layer_id": layer_id if layer is not None else "none",
        "layer": None if layer is None else {"kind": layer.kind, "width": layer.width, "height": layer.height,
                                             "paths": layer.paths},
        "map_title": map_title, "image_title": image_title, "labels": labels or [], "selected": selected,
        "height": int(height), "map": asdict(settings), "colormaps": list(COLORMAPS),
        "relative": {"color": [round(c * 255) for c in RELATIVE_COLOR], "on": DASH_ON, "off": DASH_OFF,
                     "widths": [relative_line_width(k) for k in range(len(RELATIVE_LEVELS))]},
    })
    value: Any = _component(key=key, default=None, spec=spec, levels=levels,
                            layer_png=layer.png if layer is not None else b"", tables=colormap_tables())
    if levels:
        st.session_state[_sent_key(key)] = image_id
    return ViewerState.from_value(value, image_id)
