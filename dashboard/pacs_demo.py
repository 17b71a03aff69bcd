"""``make pacs-demo``: a local Orthanc seeded with the sample studies, and the dashboard pointed at it.

Starts Orthanc (:mod:`core.pacs.orthanc`: loopback, a free port, generated credentials, storage in a temporary
folder), stores the seed set (the real DICOMs of ``../shared/data/dicom``, NIH films wrapped as made-up studies, a
CT, an SR-only and a lateral-only study), then runs ``streamlit run dashboard/app.py`` with the PACS settings in
its environment (``HICXR_PACS_*``; the worklist shows every date). Prints where to look: the dashboard, and
Orthanc Explorer with this run's generated user and password (they exist only for this run). Ctrl-C stops both,
each by its own pid; the temporary storage is removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.pacs.devserver import start_seeded  # noqa: E402
from core.pacs.orthanc import OrthancError, stop_process  # noqa: E402


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python dashboard/pacs_demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the shared data folder (default ../shared/data)")
    parser.add_argument("--nih", type=int, default=6, help="NIH films wrapped as made-up studies (default 6)")
    parser.add_argument("--port", type=int, default=8501, help="dashboard port on 127.0.0.1 (default 8501)")
    args = parser.parse_args(argv)
    if not (args.data / "dicom").is_dir():
        print(f"pacs-demo: the sample data is not at {args.data} (expected dicom/ and nih/ there)", file=sys.stderr)
        return 2
    # `kill`, a closed terminal or a CI timeout end the demo like Ctrl-C: through the finally below, which stops
    # the dashboard and Orthanc by their pids and removes the storage (Python's default would leave them running).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    try:
        pacs = start_seeded(args.data, nih_count=args.nih)
    except OrthancError as exc:
        print(f"pacs-demo: {exc}", file=sys.stderr)
        return 2
    env = {**os.environ, "HICXR_PACS_URL": pacs.settings.url, "HICXR_PACS_USER": pacs.settings.user,
           "HICXR_PACS_PASSWORD": pacs.settings.password, "HICXR_PACS_WORKLIST_DAYS": "0"}
    print(f"Orthanc (development PACS) with {len(pacs.studies)} studies: {pacs.server.url}/app/explorer.html\n"
          f"  this run's generated login: user {pacs.settings.user}, password {pacs.settings.password}\n"
          f"  DICOMweb root: {pacs.settings.url}\n"
          f"Dashboard: http://127.0.0.1:{args.port} (choose 'PACS worklist' in the sidebar). Ctrl-C stops both.",
          flush=True)
    dashboard = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
                                  "--server.port", str(args.port), "--server.address", "127.0.0.1",
                                  "--server.headless", "true"], cwd=ROOT, env=env)
    try:
        return dashboard.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_process(dashboard)
        pacs.stop()


if __name__ == "__main__":
    sys.exit(main())
