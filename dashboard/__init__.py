"""HiCXR clinician dashboard (Streamlit): renders Analysis records from core.inference; no ML logic here."""
