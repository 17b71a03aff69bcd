"""A local Orthanc PACS for development, tests, the demo and the benchmark: generated config, own process, own pid.

Orthanc is Debian's ``orthanc`` package with its ``orthanc-dicomweb`` plugin (``make system-deps`` installs both;
the system service is never used). :class:`OrthancServer` writes a configuration into a temporary folder:

* storage and index in that folder (removed on :meth:`OrthancServer.stop` unless a storage folder was given);
* HTTP on a free loopback port; ``RemoteAccessAllowed: false`` (Orthanc refuses any non-loopback client);
* HTTP basic authentication on, with a user and a password generated per start (:func:`secrets.token_urlsafe`);
* the DICOMweb plugin at ``/dicom-web/`` (QIDO-RS, WADO-RS, STOW-RS);
* the DICOM (DIMSE) listener off (``DicomServerEnabled: false``) unless ``dicom_port=True``.

The process is started with :class:`subprocess.Popen` and stopped by its own pid (terminate, then kill), never by
name. The password is handed to callers as an attribute and written only into the private (0600) config file.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ORTHANC_BINARY", "DICOMWEB_PLUGIN", "OrthancError", "OrthancServer", "free_port", "stop_process"]

ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0


class OrthancError(RuntimeError):
    """Orthanc could not be started (not installed, plugin missing, did not answer); the message says which."""


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG).

    Linux ties this to the thread that forked, so it is set only when Orthanc is started from the main thread
    (a worker thread's exit would otherwise stop it). Elsewhere it does nothing.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Stop a server process this program started, by its pid: SIGTERM, then SIGKILL if it has not exited after
    ``timeout`` seconds (never by name, so no other process is touched)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@dataclass
class OrthancServer:
    """One Orthanc process with a generated configuration (see the module docstring).

    Attributes:
        storage_dir: Where Orthanc keeps its files and index; a temporary folder (removed at :meth:`stop`) if
            ``None``.
        port: HTTP port on 127.0.0.1 (a free one if 0).
        user: Basic-auth user (generated if empty).
        password: Basic-auth password (generated if empty).
        dicom_port: Also open the DIMSE listener (on a free port) when True.
        name: Orthanc's name (shown in Orthanc Explorer).
    """

    storage_dir: Path | None = None
    port: int = 0
    user: str = ""
    password: str = ""
    dicom_port: bool = False
    name: str = "HiCXR-dev-PACS"

    def __post_init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._own_storage = self.storage_dir is None

    # ------------------------------------------------------------------------------------------ urls

    @property
    def url(self) -> str:
        """Root of Orthanc's REST API and Orthanc Explorer (``/app/explorer.html``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb API (what HiCXR's client is pointed at)."""
        return f"{self.url}/dicom-web"

    @property
    def pid(self) -> int | None:
        """The Orthanc process id while running."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    # ---------------------------------------------------------------------------------------- config

    def config(self) -> dict:
        """The configuration Orthanc is started with (contains the password)."""
        assert self._workdir is not None and self.storage_dir is not None
        return {
            "Name": self.name,
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "HttpServerEnabled": True,
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "DicomServerEnabled": bool(self.dicom_port),
            "DicomPort": free_port() if self.dicom_port else 4242,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1",
                         "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
            "HttpsVerifyPeers": False,
            "StableAge": 1,
            "SaveJobs": False,
            "MetricsEnabled": False,
            "WebDavEnabled": False,
            "OrthancExplorerEnabled": True,
            "DeidentifyLogs": True,
            "OverwriteInstances": True,
        }

    # -------------------------------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float = START_TIMEOUT_S) -> OrthancServer:
        """Write the config, start Orthanc and wait until its REST API answers with the generated credentials.

        Raises:
            OrthancError: Orthanc or the DICOMweb plugin is not installed, or the server did not come up (the
                message carries the tail of Orthanc's own log).
        """
        if self._process is not None and self._process.poll() is None:
            return self
        binary = shutil.which(ORTHANC_BINARY)
        if binary is None:
            raise OrthancError("Orthanc is not installed: run `make system-deps` (Debian packages orthanc and "
                               "orthanc-dicomweb).")
        if not DICOMWEB_PLUGIN.exists():
            raise OrthancError(f"Orthanc's DICOMweb plugin is missing ({DICOMWEB_PLUGIN}): run `make system-deps` "
                               "(Debian package orthanc-dicomweb).")
        if self._workdir is None:  # kept across kill() so a restart finds its storage
            self._workdir = Path(tempfile.mkdtemp(prefix="hicxr-orthanc-"))
        if self.storage_dir is None:
            self.storage_dir = self._workdir / "storage"
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.user = self.user or "hicxr-" + secrets.token_hex(4)
        self.password = self.password or secrets.token_urlsafe(18)
        config_path = self._workdir / "orthanc.json"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.config(), f, indent=1)
        log = (self._workdir / "orthanc.log").open("wb")
        # start_new_session: Ctrl-C in a terminal reaches our process, which stops Orthanc itself (by pid).
        # _die_with_parent: if this process is killed outright (SIGKILL, a CI timeout), Orthanc is not left behind.
        on_main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self._workdir, start_new_session=True,
                                         preexec_fn=_die_with_parent if on_main_thread else None)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                rc, tail = self._process.returncode, self.log_tail()
                self._process = None
                raise OrthancError(f"Orthanc exited at start (status {rc}): {tail}")
            if self._answers():
                return self
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise OrthancError(f"Orthanc did not answer on {self.url} within {timeout_s:.0f} s: {tail}")

    def _answers(self) -> bool:
        request = urllib.request.Request(f"{self.url}/system", headers={"Authorization": self.basic_auth_header()})
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def basic_auth_header(self) -> str:
        """``Basic ...`` for the generated credentials."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return f"Basic {token}"

    def log_tail(self, n_chars: int = 1500) -> str:
        """The end of Orthanc's own log (for error messages)."""
        if self._workdir is None:
            return ""
        try:
            return (self._workdir / "orthanc.log").read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """Kill the process at once (SIGKILL by pid), as a crash would; storage is kept (tests of a PACS that
        goes down mid-run). :meth:`start` brings it back on the same port with the same storage."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def stop(self) -> None:
        """Stop Orthanc by its pid (SIGTERM, SIGKILL after 10 s) and remove the temporary folder."""
        if self._process is not None:
            stop_process(self._process, timeout=10)
        self._process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._own_storage:
            self.storage_dir = None

    def restart(self) -> OrthancServer:
        """Start again after :meth:`kill`: same port, credentials and storage."""
        return self.start()

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
