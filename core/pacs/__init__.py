"""The reading room: a PACS as a source of studies and a home for results (DICOMweb), and a local Orthanc.

* :mod:`~core.pacs.orthanc` - start and stop a local Orthanc (development PACS, tests, demo, benchmark).
* :mod:`~core.pacs.credentials` - PACS URL and credentials from a secrets file or the environment.
* :mod:`~core.pacs.client` - DICOMweb client: QIDO-RS search, WADO-RS retrieve (in memory), STOW-RS store.
* :mod:`~core.pacs.studies` - which instances of a study are analysable chest radiographs, and why not.
* :mod:`~core.pacs.results` - DICOM results: TID 1500 Comprehensive SR and a Secondary Capture (highdicom).
* :mod:`~core.pacs.wrap` - image files wrapped as DICOM studies with made-up patient data (seeding, tests).
* :mod:`~core.pacs.codes` - SNOMED CT codes of the findings and HiCXR's documented private scheme ``99HICXR``.
* :mod:`~core.pacs.batch` - ``python -m core.predict --pacs URL``: analyse, write rows, send results back
  (:mod:`~core.pacs.cli`: its command-line options, without network imports).
* :mod:`~core.pacs.devserver` - a local Orthanc seeded with the sample studies (tests, demo, benchmark).
"""
