"""Safe network defaults: loopback unless login is configured, refusal without the risk flag, headers, no outbound.

Real ``streamlit run dashboard/app.py`` servers on this machine: on 127.0.0.1 (the default) and on the machine's own
non-loopback address (traffic stays on this machine). A trap proxy (``HTTP(S)_PROXY`` pointing at a loopback socket)
catches any outbound HTTP request the server makes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import dashboard_server
from dashboard.serving import RISK_FLAG, SECURITY_HEADERS, StartPlan, UnsafeStartError, check_start, is_loopback

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ the rule itself


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("fd00::2", False),
    ("hicxr.example.org", False), ("localhost.evil.example", False), (None, False), ("", False),
])
def test_is_loopback(address, expected):
    assert is_loopback(address) is expected


def test_check_start_matrix():
    check_start(StartPlan("127.0.0.1", auth=False, access_rule=False, risk_accepted=False))
    check_start(StartPlan("0.0.0.0", auth=True, access_rule=True, risk_accepted=False))
    check_start(StartPlan("0.0.0.0", auth=False, access_rule=False, risk_accepted=True))
    for plan in (StartPlan("0.0.0.0", False, False, False), StartPlan(None, False, False, False),
                 StartPlan("192.0.2.7", False, False, False)):
        with pytest.raises(UnsafeStartError, match=RISK_FLAG):
            check_start(plan)
    # Login without an access rule would let nobody in: refused even on loopback, and says what to add.
    with pytest.raises(UnsafeStartError, match="allowed_users"):
        check_start(StartPlan("127.0.0.1", auth=True, access_rule=False, risk_accepted=False))


# ------------------------------------------------------------------------------------------------ real servers


#: The app's arguments of every server here: the shipped weights.
WEIGHTS_ARGS = ["--weights-dir", str(REPO_ROOT / "weights")]


def own_address() -> str | None:
    """This machine's first non-loopback IPv4 address (``ip`` or, failing that, the routing table's choice)."""
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts:
                return parts[parts.index("inet") + 1].split("/")[0]
    except (OSError, subprocess.SubprocessError):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it asks the routing table for a source
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if is_loopback(address) else address


class TrapProxy:
    """A loopback socket posing as the HTTP(S) proxy: every connection to it is an outbound attempt, counted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def env(self) -> dict[str, str]:
        url = f"http://127.0.0.1:{self.port}"
        return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url, "ALL_PROXY": url,
                "NO_PROXY": "", "no_proxy": ""}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module")
def trap() -> Iterator[TrapProxy]:
    proxy = TrapProxy()
    yield proxy
    proxy.close()


def refused(host: str, port: int) -> bool:
    """True if nothing accepts a TCP connection at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except (ConnectionRefusedError, TimeoutError, OSError):
        return True


@pytest.fixture(scope="module")
def local_server(tmp_path_factory, trap) -> Iterator[tuple[str, int]]:
    """The dashboard as `make dashboard` starts it (no address given: the config's default), behind the trap."""
    port = dashboard_server.free_port()
    log = tmp_path_factory.mktemp("serving") / "streamlit.log"
    with dashboard_server.running(log, port=port, app_args=WEIGHTS_ARGS, env=trap.env()) as server:
        yield server.url, port


def _get(url: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}


def test_default_listens_on_loopback_only(local_server):
    url, port = local_server
    assert _get(url)[0] == 200
    address = own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    assert refused(address, port), f"the dashboard without login answers on {address}:{port}"


@pytest.mark.parametrize("path", ["/", "/_stcore/health", "/favicon.png"])
def test_security_headers(local_server, path):
    url, _ = local_server
    try:
        status, headers = _get(url + path)
    except urllib.error.HTTPError as err:  # a missing asset still carries the headers
        status, headers = err.code, {k.lower(): v for k, v in err.headers.items()}
    assert status in (200, 404)
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name.lower()) == value, (path, name, headers)
    assert "server" not in headers, headers  # no software name (uvicorn's own header is dropped)


def test_no_outbound_requests(local_server, trap, tmp_path):
    """The server made no outbound HTTP request at start-up or when a cross-origin page knocks on its websocket;
    the same proxy settings do catch a request (so the trap works)."""
    url, port = local_server
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus):  # cross-origin: Streamlit would look up the external address here
        connect(f"ws://127.0.0.1:{port}/_stcore/stream", origin="http://evil.example", open_timeout=10).close()
    time.sleep(1.5)
    assert trap.connections == 0
    probe = ("import requests\ntry:\n    requests.get('http://checkip.amazonaws.com', timeout=2)\n"
             "except Exception:\n    pass\n")
    subprocess.run([sys.executable, "-c", probe], env={**os.environ, **trap.env()}, timeout=30, check=True)
    time.sleep(0.5)
    assert trap.connections >= 1


def test_refuses_network_address_without_login(tmp_path, trap):
    address = own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    port = dashboard_server.free_port()
    log = tmp_path / "refused.log"
    proc = dashboard_server.launch(port, log, ["--server.address", address], WEIGHTS_ARGS, trap.env())
    try:
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            dashboard_server.stop_process(proc)
    text = log.read_text()
    assert rc == 2, text
    assert "refuses to listen" in text and RISK_FLAG in text
    assert refused(address, port)


def test_risk_flag_serves_network_address(tmp_path, trap):
    """With the flag that names the risk, the dashboard answers on the machine's own address (and still makes no
    outbound request)."""
    address = own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    before = trap.connections
    port = dashboard_server.free_port()
    log = tmp_path / "flag.log"
    proc = dashboard_server.launch(port, log, ["--server.address", address], [*WEIGHTS_ARGS, RISK_FLAG], trap.env())
    try:
        dashboard_server.wait_healthy(proc, f"http://{address}:{port}", log)
        assert _get(f"http://{address}:{port}/")[0] == 200
    finally:
        dashboard_server.stop_process(proc)
    assert trap.connections == before
