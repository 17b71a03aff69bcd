"""``streamlit`` with every script run timed on the server: ``python bench/timed_streamlit.py LOG [--profile] run APP``.

A benchmark aid only (``bench/dashboard.py`` starts the dashboard through it). Each finished run of the page
appends one JSON line to LOG: ``{"fragment": bool, "seconds": float}``, where ``fragment`` says the run redrew only
``st.fragment`` panels (a display-only interaction) rather than the whole page. The time is the script's own
execution on the server (Streamlit's ``exec_func_with_error_handling``), so the browser's drawing and the network
are not in it. With ``--profile`` each run is also profiled (``cProfile``) into ``LOG.<n>.prof`` (read them with
``python -m pstats``), to see where a slow run spends its time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _install(log: Path, profile: bool) -> None:
    """Wrap the function Streamlit's script runner calls once per run (whole page or fragments)."""
    import cProfile
    import itertools

    from streamlit.runtime.scriptrunner import script_runner

    original = script_runner.exec_func_with_error_handling
    counter = itertools.count()

    def timed(func, ctx):  # noqa: ANN001, ANN202 - Streamlit's own signature
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        try:
            if profiler is None:
                return original(func, ctx)
            return profiler.runcall(original, func, ctx)
        finally:
            seconds = time.perf_counter() - start
            n = next(counter)
            if profiler is not None:
                profiler.dump_stats(f"{log}.{n}.prof")
            with log.open("a") as out:
                out.write(json.dumps({"run": n, "fragment": bool(ctx.fragment_ids_this_run),
                                      "seconds": seconds}) + "\n")

    script_runner.exec_func_with_error_handling = timed


def main() -> int:
    log = Path(sys.argv[1])
    profile = sys.argv[2:3] == ["--profile"]
    sys.argv = ["streamlit", *sys.argv[3 if profile else 2:]]
    _install(log, profile)
    from streamlit.web.cli import main as streamlit_main

    return streamlit_main()


if __name__ == "__main__":
    raise SystemExit(main())
