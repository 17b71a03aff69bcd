# HiCXR: two commands on a fresh machine.
#   make dashboard   set up .venv and start the dashboard on the shipped weights (http://localhost:8501)
#   make test        set up .venv (and Debian chromium for the browser tests) and run the whole test suite
PYTHON ?= python3
# The dashboard's port: `make dashboard PORT=8600`.
PORT ?= 8501
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup dashboard pacs-demo test test-fast lint bench system-deps clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

dashboard: $(STAMP)
	$(VENV)/bin/streamlit run dashboard/app.py --server.port $(PORT)

# A local Orthanc seeded with the sample DICOMs and the dashboard pointed at it (Ctrl-C stops both).
pacs-demo: $(STAMP) system-deps
	$(PY) dashboard/pacs_demo.py

# Debian packages the tests need: chromium drives the browser tests (Playwright's own browser download does not
# work here), Orthanc + its DICOMweb plugin is the real PACS of the PACS tests, dicom3tools' dciodvfy validates the
# DICOM results. Installed only when one of them is missing.
SYSTEM_PACKAGES := chromium orthanc orthanc-dicomweb dicom3tools
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v Orthanc >/dev/null 2>&1 \
		|| ! command -v dciodvfy >/dev/null 2>&1 || ! test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; fi

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not browser"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP) system-deps
	$(PY) bench/train_step.py
	$(PY) bench/inference.py
	$(PY) bench/loader.py
	$(PY) bench/robustness.py
	$(PY) bench/pacs.py
	$(PY) bench/dashboard.py

clean:
	rm -rf $(VENV) .pytest_cache
