"""How the dashboard is served: loopback unless login is configured, protective headers, no outbound calls.

``streamlit run dashboard/app.py`` finds the module-level ``st.App`` in ``dashboard/app.py`` and serves it with
uvicorn; importing that module calls :func:`refuse_unsafe_start` and builds the app with :func:`app_options`. So
every check here runs once per server process, before the first request is answered:

- **Address.** Without an ``[auth]`` section in the secrets, the server must listen on a loopback address
  (``.streamlit/config.toml`` sets ``server.address = "127.0.0.1"``). Any other address is refused unless the
  operator passes :data:`RISK_FLAG` after ``--``, which names what it allows. With ``[auth]``, an access rule
  (``[access]`` in the secrets, see :mod:`dashboard.access`) is required, else nobody could be let in.
- **Headers.** Every HTTP response carries :data:`SECURITY_HEADERS` (no framing by other sites, no MIME sniffing,
  no referrer), and no ``server`` header naming the software (:func:`drop_server_header`).
- **No phoning home.** ``browser.gatherUsageStats = false`` and a fixed ``server.address`` keep Streamlit from
  contacting anything at start-up; :func:`disable_external_ip_lookup` also stops the lookup of the machine's
  external address that Streamlit makes when a cross-origin page tries to open the app's websocket.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The app argument (after ``--``) that lets the dashboard serve a non-loopback address without login.
RISK_FLAG = "--allow-anyone-on-the-network-without-login"

#: Sent with every HTTP response of the app.
SECURITY_HEADERS: dict[str, str] = {
    # Same origin only: the dashboard frames its own components (the radiograph viewer is a component page
    # served by this server); no other site may frame it.
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class UnsafeStartError(RuntimeError):
    """The server would be reachable beyond this machine without login (or with login but no access rule)."""


@dataclass(frozen=True)
class StartPlan:
    """What the server is about to do, as read from Streamlit's config, the secrets and the app arguments.

    Attributes:
        address: ``server.address`` (``None``: Streamlit's default, every interface).
        auth: An ``[auth]`` section is configured.
        access_rule: An ``[access]`` allow-list or required claim is configured.
        risk_accepted: :data:`RISK_FLAG` was passed.
    """

    address: str | None
    auth: bool
    access_rule: bool
    risk_accepted: bool


def is_loopback(address: str | None) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1).

    Any other host name counts as non-loopback: resolving it could ask a DNS server, and a name can be re-pointed.
    ``None`` or empty (Streamlit's default: every interface) is not loopback.
    """
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_start(plan: StartPlan) -> None:
    """Raise :class:`UnsafeStartError` with a message for the operator if ``plan`` is not safe to serve."""
    if plan.auth and not plan.access_rule:
        raise UnsafeStartError(
            "HiCXR: login is configured ([auth] in .streamlit/secrets.toml) but nobody is allowed in: add an "
            "[access] section with allowed_users (e-mail addresses or subject IDs) or required_claim and "
            "required_values (a group or role), see the README's 'Login' section."
        )
    if plan.auth or is_loopback(plan.address) or plan.risk_accepted:
        return
    where = plan.address or "every network interface (Streamlit's default)"
    raise UnsafeStartError(
        f"HiCXR refuses to listen on {where} without login: anyone who can reach the port could open patient "
        "images and results. Configure login ([auth] and [access] in .streamlit/secrets.toml, see the README), or "
        "keep the default address 127.0.0.1, or accept the risk explicitly with "
        f"`streamlit run dashboard/app.py --server.address ADDRESS -- {RISK_FLAG}`."
    )


def current_plan(argv: Sequence[str] | None = None) -> StartPlan:
    """The :class:`StartPlan` of this process: Streamlit's resolved config, its secrets and ``sys.argv``."""
    from streamlit import config

    from dashboard.access import AccessPolicy, auth_configured, secrets_section

    args = list(sys.argv[1:] if argv is None else argv)
    policy = AccessPolicy.from_mapping(secrets_section("access"))
    return StartPlan(address=config.get_option("server.address"), auth=auth_configured(),
                     access_rule=policy.has_rule, risk_accepted=RISK_FLAG in args)


def refuse_unsafe_start(argv: Sequence[str] | None = None) -> None:
    """Exit the process (status 2) with the operator's message if :func:`current_plan` is unsafe."""
    try:
        check_start(current_plan(argv))
    except (UnsafeStartError, ValueError) as err:  # ValueError: a malformed [access] section, named in the text
        print(err, file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def disable_external_ip_lookup() -> None:
    """Make Streamlit's external-address lookup (an HTTP request to checkip.amazonaws.com) answer "unknown".

    Streamlit asks for the machine's external address to print an "External URL" at start-up (avoided by the fixed
    ``server.address``) and, later, to decide whether a cross-origin websocket may connect. The dashboard never
    needs it: an origin it serves is either same-origin or listed in ``server.corsAllowedOrigins``.
    """
    from streamlit import net_util

    net_util.get_external_ip = _no_external_ip


def _no_external_ip() -> None:
    return None


def drop_server_header() -> bool:
    """Stop uvicorn from naming itself (``server: uvicorn``) in every response; True if it was done.

    uvicorn adds the header unless its ``Config`` says ``server_header=False``, and Streamlit builds that ``Config``
    without a way to say so. This runs while uvicorn imports ``dashboard/app.py`` (``Config.load``), so the loading
    ``Config`` is found up the call stack; uvicorn copies ``Config.encoded_headers`` into every response (HTTP and
    websocket) from then on. ``tests/test_serving.py`` checks the header is gone from a real server's responses.
    """
    import uvicorn

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, uvicorn.Config):
            candidate.server_header = False
            candidate.encoded_headers = [(k, v) for k, v in getattr(candidate, "encoded_headers", []) if k != b"server"]
            return True
        frame = frame.f_back
    return False


class SecurityHeadersMiddleware:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response (websockets pass through)."""

    def __init__(self, app: Any, headers: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in (headers or SECURITY_HEADERS).items()]
        self.names = {name for name, _ in self.headers}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Pass the request on; rewrite the response start to carry the headers."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message.get("type") == "http.response.start":
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in self.names]
                message = {**message, "headers": kept + self.headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def app_options() -> dict[str, Any]:
    """Keyword arguments of the dashboard's ``st.App``: the security-headers middleware."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(SecurityHeadersMiddleware)]}
