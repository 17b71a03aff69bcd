"""Cost of a full analysis against one plain forward pass, and the batch CLI's throughput, on this machine.

Full analysis = ``Predictor.analyse`` on a decoded image: preprocessing, one backbone pass, deterministic
probabilities, MC dropout (N=10) on the head, CAMs for all labels, violations. Plain forward = ``model(x)`` on the
already preprocessed tensor. Both at the same resolution: the default shipped variant's ``input_size`` when
``weights/`` has one, else 320 px with a random model. Repetitions are interleaved (A, B, A, B, ...) so drifts in
machine load hit both; medians are reported. Each repetition is timed twice: wall clock and process CPU time
(all threads). The headline ratio is the median of the per-repetition CPU-time ratios (each analysis over the
forward pass just before it): on a shared machine, other jobs stretch wall-clock times several-fold at random,
while CPU time counts only the work done. Wall-clock figures are printed too.

Usage: ``python bench/inference.py [--reps 9] [--mc 10] [--weights-dir weights] [--threads N]``.
The last line printed is ``full_analysis_over_forward=<ratio>`` (goal <= 1.3).
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

import torch  # noqa: E402

from core.imaging import read_image  # noqa: E402
from core.inference import Predictor  # noqa: E402
from core.model import ModelConfig, build_model, save_model  # noqa: E402
from core.registry import default_variant, get_variant, resolve_weights_dir  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
NIH_SAMPLE = "00000317_003.png"  # a 512 px test-split image
CLI_PNGS = 8


def _random_weights(folder: Path, size: int) -> Path:
    """A seeded random 320 px model saved as a variant (no card metrics): stands in until weights ship."""
    import json

    torch.manual_seed(0)
    model = build_model(ModelConfig.for_taxonomy(input_size=size))
    save_model(model, folder / "random.safetensors")
    (folder / "random.json").write_text(json.dumps({"variant": "random"}))
    return folder


def _time(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark, print the figures, return the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--mc", type=int, default=10)
    parser.add_argument("--weights-dir", default="weights")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 gives steadier figures on a busy machine")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        weights = resolve_weights_dir(args.weights_dir)
        name = default_variant(weights)
        if name is None:
            weights, name = _random_weights(Path(tmp), 320), "random"
            source = "random-init model (no shipped weights)"
        else:
            source = f"shipped variant {name!r}"
        size = get_variant(name, weights).input_size
        predictor = Predictor(weights, [name], mc_samples=args.mc)
        model = predictor.get(name).model
        image = read_image(DATA / "nih" / "images" / NIH_SAMPLE)
        x = predictor.model_input(image, name)

        def forward() -> None:
            with torch.inference_mode():
                model(x)

        def full() -> None:
            predictor.analyse(image, name)

        print(f"device: CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
        print(f"model: {source}, input {size} px, MC samples {args.mc}, image {image.pixels.shape}")
        for _ in range(2):  # warm-up: allocator, first-call overheads
            forward()
            full()
        forward_runs, full_runs = [], []
        for _ in range(args.reps):
            forward_runs.append(_time(forward))
            full_runs.append(_time(full))
        for clock, k in (("wall", 0), ("cpu", 1)):
            fw, fu = [r[k] for r in forward_runs], [r[k] for r in full_runs]
            print(f"{clock:4s} plain forward median {statistics.median(fw) * 1e3:8.1f} ms  "
                  f"[{', '.join(f'{t * 1e3:.0f}' for t in fw)}]")
            print(f"{clock:4s} full analysis median {statistics.median(fu) * 1e3:8.1f} ms  "
                  f"[{', '.join(f'{t * 1e3:.0f}' for t in fu)}]")
            print(f"{clock:4s} ratio of medians {statistics.median(fu) / statistics.median(fw):.3f}, "
                  f"median of paired ratios {statistics.median(a / f for a, f in zip(fu, fw, strict=True)):.3f}")
        stages = predictor.analyse(image, name).timings
        print("stages of one analysis (ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in stages.items()))

        # The batch CLI end to end: decoding (PNG + every shared DICOM), analysis, CSV writing.
        from core.predict import main as predict_main

        dicoms = sorted((DATA / "dicom").glob("*.dcm"))
        pngs = sorted((DATA / "nih" / "images").glob("*.png"), key=lambda p: -p.stat().st_size)[:CLI_PNGS]
        files = [str(p) for p in dicoms + pngs]
        out = Path(tmp) / "results.csv"
        t0 = time.perf_counter()
        code = predict_main([*files, "--weights-dir", str(weights), "--variant", name, "--mc", str(args.mc),
                             "--out", str(out), "--no-progress"])
        cli_s = time.perf_counter() - t0
        print(f"CLI: {len(files)} files ({len(dicoms)} DICOM, {len(pngs)} PNG), exit {code}, {cli_s:.1f} s, "
              f"{len(files) / cli_s:.2f} images/s")
    ratio = statistics.median(a[1] / f[1] for a, f in zip(full_runs, forward_runs, strict=True))
    print(f"full_analysis_over_forward={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
