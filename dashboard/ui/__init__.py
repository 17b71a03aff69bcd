"""Streamlit rendering of the dashboard, one module per part of the page (sidebar, tabs, shared state)."""
