"""HiCXR dashboard entry point (placeholder until the dashboard issue lands): lists the shipped weights."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

st.set_page_config(page_title="HiCXR", layout="wide")
st.title("HiCXR: hierarchical chest X-ray findings")
st.caption("Research use only, not a medical device.")
weights = sorted((ROOT / "weights").glob("*.safetensors"))
if weights:
    st.write("Model variants found in `weights/`:")
    st.table({"variant": [w.stem for w in weights], "size (MB)": [round(w.stat().st_size / 1e6, 1) for w in weights]})
else:
    st.info("No trained weights are shipped yet: `weights/` holds no `.safetensors` file.")
