"""Peak memory of reading each hostile or large input (issue 10), each in a fresh process.

Builds the cases of ``bench/hostile.py`` in a temporary folder: decoder bombs whose codec header declares far more
than the file holds (a DICOM whose JPEG frame header says 20000 x 20000, a JPEG 2000 SIZ bomb, a Deflated DICOM
inflating to 1 GiB, PNG/JPEG/JP2/GIF/WebP/TIFF header bombs), broken files (a TIFF whose second directory points
past the end, a float TIFF with +inf, a PNG cut cleanly after 20 rows) and the largest images that are accepted
(a palette PNG and a 16-bit PNG of 7,000 x 7,000 = 49 MP, just under the 50 MP limit).

Each case runs ``read_image(path)`` in its own Python process, which first imports everything and decodes a small
PNG and a small DICOM (so the lazily loaded codecs count as idle), then resets its peak RSS (``/proc/self/
clear_refs``), notes its RSS as idle, reads the case, and reports its peak RSS (``VmHWM``) over that idle figure.

Usage: ``python bench/robustness.py [--cases NAME ...] [--keep DIR]``. One line per case, then the last line
``max_rss_over_idle_mb=N`` (goal <= 1000).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import hostile  # noqa: E402

CASES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "dicom_jpeg_sof_20000": ("dcm", hostile.dicom_jpeg_sof_bomb),
    "dicom_j2k_siz_20000": ("dcm", hostile.dicom_j2k_siz_bomb),
    "dicom_deflated_1gib": ("dcm", hostile.dicom_deflate_bomb),
    "png_ihdr_30000": ("png", hostile.png_ihdr_bomb),
    "jpeg_sof_20000": ("jpg", hostile.jpeg_sof_bomb),
    "j2k_siz_20000": ("j2k", hostile.j2k_siz_bomb),
    "jp2_siz_20000": ("jp2", lambda: hostile.j2k_siz_bomb(jp2=True)),
    "gif_screen_65535": ("gif", hostile.gif_screen_bomb),
    "webp_canvas_16384": ("webp", hostile.webp_canvas_bomb),
    "tiff_ifd_100000": ("tif", hostile.tiff_size_bomb),
    "tiff_bad_second_ifd": ("tif", hostile.tiff_bad_second_ifd),
    "float_tiff_inf": ("tif", hostile.float_tiff),
    "png_cut_after_20_rows": ("png", hostile.png_clean_truncation),
    "palette_png_49mp": ("png", hostile.palette_png),
    "png16_49mp": ("png", hostile.png16),
    # issue 22: a 49.6 MP JPEG-in-DICOM and PNG in small files, and the odd cases (each read in a fresh process)
    "dicom_jpeg_49mp": ("dcm", hostile.dicom_jpeg_large),
    "dicom_jpeg_ybr_49mp": ("dcm", lambda: hostile.dicom_jpeg_large(colour=True)),
    "png8_49mp": ("png", hostile.png_large),
    **{f"odd_{name}": (suffix, build) for name, (suffix, build, _outcome, _phrase) in hostile.ODD_CASES.items()},
}

# Runs in the child: imports and warms up the codecs, then measures one read_image call.
CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy, PIL.Image, pydicom, pydicom.pixels
from bench import hostile
from core.imaging import ImageError, read_image
read_image(hostile.encode(PIL.Image.fromarray(hostile.chest_like(96, 96)), "PNG"))
read_image(hostile.dicom_native(hostile.chest_like(96, 96)))
for module in ("libjpeg", "openjpeg", "rle"):
    try:
        __import__(module)
    except ImportError:
        pass

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0

try:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
except OSError:
    pass
idle = status("VmRSS")
start = time.perf_counter()
try:
    image = read_image(sys.argv[2])
    outcome = f"analysable ({image.metadata.width} x {image.metadata.height})"
except ImageError as exc:
    outcome = f"{type(exc).__name__}: {exc}"
seconds = time.perf_counter() - start
print(json.dumps({"idle_mb": idle, "peak_mb": status("VmHWM"), "seconds": seconds, "outcome": outcome}))
"""


def measure(path: Path) -> dict:
    """Run one case in a fresh interpreter and return its JSON report."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path)], capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        return {"idle_mb": 0.0, "peak_mb": 0.0, "seconds": 0.0,
                "outcome": f"CRASH (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Build the cases, measure each, print one line per case and the maximum."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), help="only these cases")
    parser.add_argument("--keep", type=Path, help="write the case files here and keep them (default: a temp folder)")
    args = parser.parse_args(argv)
    names = args.cases or list(CASES)
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="hicxr-robustness-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            suffix, build = CASES[name]
            started = time.perf_counter()
            path = folder / f"{name}.{suffix}"
            path.write_bytes(build())
            built = time.perf_counter() - started
            report = measure(path)
            over = max(0.0, report["peak_mb"] - report["idle_mb"])
            worst = max(worst, over)
            outcome = report["outcome"] if len(report["outcome"]) <= 110 else report["outcome"][:107] + "..."
            print(f"{name}: file={path.stat().st_size / 1024:.0f}KB built_in={built:.1f}s "
                  f"read_in={report['seconds']:.2f}s peak_over_idle_mb={over:.0f} -> {outcome}", flush=True)
    print(f"max_rss_over_idle_mb={worst:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
