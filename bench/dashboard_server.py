"""The dashboard as a real ``streamlit run dashboard/app.py`` server on a free loopback port, for a browser to drive.

The one start-up that the browser tests (``tests/test_browser.py``, ``test_login.py``, ``test_pacs_browser.py``),
the serving tests (``tests/test_serving.py``) and the dashboard benchmarks (``bench/dashboard.py``,
``bench/screenshot_import.py``) share: the process is started from the repository root (so the repository's
``.streamlit/config.toml`` applies), its output goes to a log file, ``/_stcore/health`` is polled until it answers
200, and it is stopped by its own pid (terminate, then kill). Each caller passes what is its own: Streamlit
options (address, secrets file), the app's arguments (weights folder, audit log) and environment variables.

It lives under ``bench/`` because both the benchmarks and the tests import it (tests already import
``bench.hostile``; a benchmark must not import from ``tests/``), and it is test and benchmark tooling, not part of
the dashboard that is shipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.pacs.orthanc import free_port, stop_process

__all__ = ["DashboardServer", "DashboardStartError", "free_port", "launch", "running", "start", "stop_process",
           "wait_healthy"]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: How much of the log's end a start-up failure quotes.
LOG_TAIL = 3000


class DashboardStartError(RuntimeError):
    """The server exited or did not answer its health check in time (the message quotes the end of its log)."""


@dataclass
class DashboardServer:
    """A running dashboard server: its process, the URL it answers on and its log file."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        """Everything the server has written so far (stdout and stderr)."""
        return self.log.read_text()

    def stop(self) -> None:
        """Stop the server by its pid (:func:`core.pacs.orthanc.stop_process`: terminate, kill after 15 s)."""
        stop_process(self.process)


def launch(port: int, log: Path, server_args: Sequence[str] = (), app_args: Sequence[str] = (),
           env: Mapping[str, str] | None = None, streamlit: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Start ``streamlit run dashboard/app.py`` on ``port`` without waiting for it.

    Args:
        port: the port to serve on.
        log: file that receives the server's stdout and stderr (created or emptied).
        server_args: Streamlit options after ``--server.port`` and ``--server.headless true``, e.g.
            ``["--server.address", "127.0.0.1"]`` or ``["--secrets.files", path]``.
        app_args: the app's own arguments, after ``--`` (e.g. ``["--weights-dir", folder]``).
        env: variables added to this process's environment (``PYTHONUNBUFFERED=1`` is always set, so the log is
            current when a failure quotes it).
        streamlit: the command that stands for ``streamlit`` (default ``python -m streamlit``), e.g. the
            benchmark's ``python bench/timed_streamlit.py LOG``, which times every script run.
    """
    cmd = [*(streamlit or [sys.executable, "-m", "streamlit"]), "run", "dashboard/app.py", "--server.port", str(port),
           "--server.headless", "true", *server_args]
    if app_args:
        cmd += ["--", *app_args]
    with open(log, "w") as out:  # the child keeps its own handle; ours closes here
        return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 120.0) -> None:
    """Poll ``url``'s ``/_stcore/health`` until it answers 200.

    Raises:
        DashboardStartError: the process exited first, or ``timeout`` seconds passed (the process is left as it
            is: the caller that started it stops it).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass  # not listening yet
        if process.poll() is not None or time.monotonic() > deadline:
            raise DashboardStartError(f"streamlit did not start:\n{log.read_text()[-LOG_TAIL:]}")
        time.sleep(0.3)


def start(log: Path, port: int | None = None, server_args: Sequence[str] = (), app_args: Sequence[str] = (),
          env: Mapping[str, str] | None = None, timeout: float = 120.0,
          streamlit: Sequence[str] = ()) -> DashboardServer:
    """Start the dashboard (see :func:`launch`; ``port`` None: a free one) and return it once it is healthy.

    The URL is ``http://127.0.0.1:PORT``: the repository's config serves on loopback unless ``server_args`` say
    otherwise (then use :func:`launch` and :func:`wait_healthy` with that address).

    Raises:
        DashboardStartError: it did not become healthy; the process has been stopped.
    """
    port = port or free_port()
    process = launch(port, log, server_args, app_args, env, streamlit)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url, log, timeout)
    except BaseException:
        stop_process(process)
        raise
    return DashboardServer(process, url, log)


@contextmanager
def running(log: Path, port: int | None = None, server_args: Sequence[str] = (), app_args: Sequence[str] = (),
            env: Mapping[str, str] | None = None, timeout: float = 120.0,
            streamlit: Sequence[str] = ()) -> Iterator[DashboardServer]:
    """:func:`start` the dashboard for the ``with`` block and stop it after, however the block ends."""
    server = start(log, port, server_args, app_args, env, timeout, streamlit)
    try:
        yield server
    finally:
        server.stop()
