"""Pure view builders for the HiCXR dashboard: Analysis records and model cards in, figures and tables out.

Nothing here imports Streamlit or torch, so every view can be tested directly with hand-made ``Analysis`` objects.
"""
