"""Studies per second analysed end to end from a local Orthanc, against the same images read from files.

A local Orthanc (:mod:`core.pacs.orthanc`) is seeded with ``--studies`` NIH test films wrapped as one-image DX
studies; the same DICOM files are written to a temporary folder. Each round times, interleaved (files, PACS, files,
PACS, ... study by study): **files** = ``Predictor.analyse_all(path)``; **PACS** = QIDO-RS series and instances,
the study plan, WADO-RS retrieve in memory, ``analyse_all(bytes)``. Same model (the shipped default), same MC
samples. The headline ratio is studies/s of the PACS path over the files path measured in CPU time, HiCXR's process
**plus Orthanc's** (read from /proc), median over rounds: on a shared machine other jobs stretch wall-clock times
at random, while CPU time counts the work each path costs. The wall-clock rates and their ratio are printed too.
With ``--send`` the cost of analysing, building and storing the SR and the secondary capture per study is printed
(not in the ratio).

Usage: ``python bench/pacs.py [--studies 8] [--rounds 3] [--send]``. Last line: ``pacs_over_files=<ratio>``
(goal >= 0.8: the PACS path adds little). Needs Linux (/proc).
"""

from __future__ import annotations

import argparse
import os
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


def _cpu_of(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by another process (Orthanc), from /proc; 0 where unreadable."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
            files_rates, pacs_rates, files_cpu, pacs_cpu = [], [], [], []
            orthanc = pacs.server.pid
            for r in range(args.rounds):
                wall = {"files": 0.0, "pacs": 0.0}
                cpu = {"files": 0.0, "pacs": 0.0}
                # Interleaved per study (file k, then study k over DICOMweb), so load drifts hit both paths.
                for path, study in zip(paths, chest, strict=True):
                    w0, c0 = time.perf_counter(), time.process_time()
                    predictor.analyse_all(path)
                    wall["files"] += time.perf_counter() - w0
                    cpu["files"] += time.process_time() - c0
                    w0, c0, o0 = time.perf_counter(), time.process_time(), _cpu_of(orthanc)
                    plan = plan_study(study.study_uid, client.instances(study.study_uid))
                    for ref in plan.analyse:
                        predictor.analyse_all(client.retrieve(ref))
                    wall["pacs"] += time.perf_counter() - w0
                    cpu["pacs"] += time.process_time() - c0 + _cpu_of(orthanc) - o0
                files_rates.append(len(paths) / wall["files"])
                pacs_rates.append(len(chest) / wall["pacs"])
                files_cpu.append(cpu["files"] / len(paths))
                pacs_cpu.append(cpu["pacs"] / len(chest))
                print(f"round {r + 1}: wall clock: files {files_rates[-1]:.2f} studies/s, PACS {pacs_rates[-1]:.2f} "
                      f"studies/s; CPU per study (HiCXR + Orthanc): files {files_cpu[-1]:.3f} s, PACS "
                      f"{pacs_cpu[-1]:.3f} s", flush=True)
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
    wall_ratio = statistics.median(p / f for p, f in zip(pacs_rates, files_rates, strict=True))
    cpu_ratio = statistics.median(f / p for p, f in zip(pacs_cpu, files_cpu, strict=True))
    print(f"wall clock: files median {statistics.median(files_rates):.2f} studies/s, PACS median "
          f"{statistics.median(pacs_rates):.2f} studies/s, ratio {wall_ratio:.3f} ({len(chest)} one-image studies, "
          f"{args.rounds} rounds, MC {args.mc})")
    print(f"pacs_over_files={cpu_ratio:.3f}")


if __name__ == "__main__":
    main()
