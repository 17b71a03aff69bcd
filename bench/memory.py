"""Memory of many large images (issue 22): the batch CLI on a folder, and the dashboard's cache after uploads.

* ``--folder``: a folder of 49.6-megapixel images in small files (7,040 x 7,040: JPEG-in-DICOM grey and YBR
  colour, 8-bit PNG; about 0.1-1 MB each) through ``python -m core.predict`` with the shipped default variant at
  the default batch size; prints the CLI process's peak RSS (``cli_folder_peak_mb``, goal <= 2,500).
* ``--dashboard``: the dashboard's own pipeline (``dashboard.pipeline.AnalysisCache``, one session, the shipped
  default variant) fed 10 different 49.6 MP uploads in one process; prints the RSS over the idle process after each
  and at the end (``dashboard_rss_over_idle_after_10_mb``) and the peak over idle.

Usage: ``python bench/memory.py [--folder] [--dashboard] [--files N] [--uploads N] [--batch-size N]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import hostile  # noqa: E402

BUILDERS = (
    ("grey.dcm", lambda seed: hostile.dicom_jpeg_large(seed=seed)),
    ("ybr.dcm", lambda seed: hostile.dicom_jpeg_large(colour=True, seed=seed)),
    ("plain.png", lambda seed: hostile.png_large(seed=seed)),
)

# Runs the CLI as its child and reports the child's peak RSS (ru_maxrss of the waited-for children: only it).
WRAPPER = r"""
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0)
print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "", file=sys.stderr)
"""

DASHBOARD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench import hostile
from core.inference import Predictor
from dashboard.pipeline import AnalysisCache, sha256

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0

predictor = Predictor(str(Path(sys.argv[1]) / "weights"))
name = predictor.variant_names[0]
cache = AnalysisCache()
warm = hostile.encode(hostile.Image.fromarray(hostile.chest_like(512, 512)), "PNG")
cache.analyses(predictor, warm, sha256(warm), [name], 10)
Path("/proc/self/clear_refs").write_text("5")
idle = status("VmRSS")
after = []
for seed in range(int(sys.argv[2])):
    data = hostile.dicom_jpeg_large(seed=100 + seed) if seed % 2 else hostile.png_large(seed=100 + seed)
    start = time.perf_counter()
    outcome = cache.analyses(predictor, data, sha256(data), [name], 10)
    assert outcome.ok, outcome.error
    del data, outcome
    after.append((round(status("VmRSS") - idle), round(time.perf_counter() - start, 1), cache.nbytes / 2**20))
print(json.dumps({"idle_mb": idle, "after": after, "peak_over_idle_mb": status("VmHWM") - idle}))
"""


def folder_run(files: int, batch_size: int | None) -> None:
    """Build the folder, run the CLI on it, print its peak RSS."""
    with tempfile.TemporaryDirectory(prefix="hicxr-memory-") as tmp:
        folder = Path(tmp) / "large"
        folder.mkdir()
        for k in range(files):
            name, build = BUILDERS[k % len(BUILDERS)]
            (folder / f"{k:02d}_{name}").write_bytes(build(200 + k))
        size_mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        command = [sys.executable, "-m", "core.predict", str(folder), "--no-progress", "--out",
                   str(Path(tmp) / "r.csv")] + (["--batch-size", str(batch_size)] if batch_size else [])
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", WRAPPER, *command], cwd=ROOT, capture_output=True, text=True,
                              check=True)
        code, peak = proc.stdout.split()
        print(f"folder: {files} files of 49.6 MP ({size_mb:.1f} MB on disk), batch size "
              f"{batch_size or 'default'}: exit {code}, {time.perf_counter() - start:.0f} s; {proc.stderr.strip()}")
        print(f"cli_folder_peak_mb={float(peak):.0f}")


def dashboard_run(uploads: int) -> None:
    """Feed the dashboard's cache ``uploads`` large files in one process; print RSS over idle."""
    proc = subprocess.run([sys.executable, "-c", DASHBOARD, str(ROOT), str(uploads)], capture_output=True,
                          text=True, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for k, (over, seconds, cached) in enumerate(report["after"], 1):
        print(f"upload {k}: rss_over_idle_mb={over} analysed_in={seconds}s cache_mb={cached:.0f}")
    print(f"dashboard_peak_over_idle_mb={report['peak_over_idle_mb']:.0f}")
    print(f"dashboard_rss_over_idle_after_{uploads}_mb={report['after'][-1][0]}")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen measurements (both by default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", action="store_true", help="the batch CLI on a folder of large images")
    parser.add_argument("--dashboard", action="store_true", help="the dashboard's cache after large uploads")
    parser.add_argument("--files", type=int, default=6, help="images in the folder (default 6)")
    parser.add_argument("--uploads", type=int, default=10, help="uploads to the dashboard cache (default 10)")
    parser.add_argument("--batch-size", type=int, help="the CLI's --batch-size (default: its own default)")
    args = parser.parse_args(argv)
    both = not (args.folder or args.dashboard)
    if args.folder or both:
        folder_run(args.files, args.batch_size)
    if args.dashboard or both:
        dashboard_run(args.uploads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
