"""Studies per second analysed end to end from a local Orthanc, against the same images read from files.

A local Orthanc (:mod:`core.pacs.orthanc`) is seeded with ``--studies`` NIH test films wrapped as one-image DX
studies; the same DICOM files are written to a temporary folder. Each round times, interleaved (files, PACS, files,
PACS, ...): **files** = ``Predictor.analyse_all(path)`` on every file; **PACS** = for every study: QIDO-RS series and
instances, the study plan, WADO-RS retrieve in memory, ``analyse_all(bytes)``. Same model (the shipped default),
same MC samples. The headline is the median over rounds of (PACS studies/s) / (files studies/s), wall clock, one
run (Orthanc's own work happens in its process, so process CPU time would flatter the PACS path). With ``--send``
the cost of building and storing the SR and the secondary capture per study is printed too (not in the ratio).

Usage: ``python bench/pacs.py [--studies 8] [--rounds 3] [--send]``. Last line: ``pacs_over_files=<ratio>``
(goal >= 0.8: the PACS path adds little).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.inference import Predictor  # noqa: E402
from core.pacs.devserver import start_seeded  # noqa: E402
from core.pacs.results import build_sc, build_sr  # noqa: E402
from core.pacs.studies import plan_study  # noqa: E402
from core.pacs.wrap import encode  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    """Run the benchmark and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mc", type=int, default=10)
    parser.add_argument("--send", action="store_true", help="also time building + storing SR and map per study")
    args = parser.parse_args()

    predictor = Predictor(ROOT / "weights", mc_samples=args.mc)
    pacs = start_seeded(DATA, nih_count=args.studies, real_dicoms=False)
    try:
        client = pacs.client()
        chest = [s for s in pacs.studies if s.kind == "chest"]
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for k, study in enumerate(chest):
                path = Path(tmp) / f"{k:03d}.dcm"
                path.write_bytes(encode(study.datasets[0]))
                paths.append(path)
            predictor.analyse_all(paths[0])  # warm-up: model and first-call costs out of the timing
            files_rates, pacs_rates = [], []
            for r in range(args.rounds):
                t0 = time.perf_counter()
                for path in paths:
                    predictor.analyse_all(path)
                files_rates.append(len(paths) / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for study in chest:
                    plan = plan_study(study.study_uid, client.instances(study.study_uid))
                    for ref in plan.analyse:
                        predictor.analyse_all(client.retrieve(ref))
                pacs_rates.append(len(chest) / (time.perf_counter() - t0))
                print(f"round {r + 1}: files {files_rates[-1]:.2f} studies/s, PACS {pacs_rates[-1]:.2f} studies/s",
                      flush=True)
        if args.send:
            import pydicom

            from core.pacs.batch import model_identity

            model = model_identity(predictor, predictor.variant_names[0])
            t0 = time.perf_counter()
            for study in chest:
                ds = study.datasets[0]
                analysis = predictor.analyse_all(encode(ds))[model.name]
                source = pydicom.dcmread(__import__("io").BytesIO(encode(ds)))
                client.store([build_sr(analysis, source, model), build_sc(analysis, source, model)])
            print(f"analyse + build + store SR and map: {(time.perf_counter() - t0) / len(chest):.2f} s per study")
    finally:
        pacs.stop()
    ratios = [p / f for p, f in zip(pacs_rates, files_rates, strict=True)]
    print(f"files: median {statistics.median(files_rates):.2f} studies/s; PACS: median "
          f"{statistics.median(pacs_rates):.2f} studies/s ({len(chest)} one-image studies, {args.rounds} rounds, "
          f"MC {args.mc})")
    print(f"pacs_over_files={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
