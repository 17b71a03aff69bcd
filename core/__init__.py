"""HiCXR core: the ML toolkit (importable without Streamlit)."""
