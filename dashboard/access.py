"""Who may use the dashboard, and the audit entries the dashboard writes: login, allow-list, idle timeout, logout.

``dashboard/app.py`` calls :func:`gate` once at the top of every run. Without an ``[auth]`` section in
``.streamlit/secrets.toml`` the page says "local mode: no login" and everything is recorded as user ``"local"``
(the server then listens on loopback only, :mod:`dashboard.serving`). With ``[auth]`` (Streamlit's OpenID Connect
login, ``st.login``):

- nothing of the app runs before login: :func:`gate` draws a login screen and stops the script;
- ``[access]`` decides who may enter (:class:`AccessPolicy`): ``allowed_users`` (e-mail addresses, matched only when
  the provider has not marked the address unverified, or ``sub`` values) and/or ``required_claim`` with
  ``required_values`` (e.g. ``groups`` containing ``radiology``); anyone else sees a plain refusal and is logged out;
- an idle session (no interaction for ``idle_timeout_minutes``, default 15) is logged out and needs a new login,
  also when the page is left open (a timer fragment checks) or reopened later (the last activity is kept per login,
  keyed by the ID token's ``sub`` and ``iat``, in the server process);
- "Log out" in the sidebar is one click.

Every login, logout and refusal, and the actions the page triggers (:func:`record`), go to the audit log
(:mod:`dashboard.audit`); if the log cannot be written the action is refused with a message. Secrets (client secret,
cookie secret) are read by Streamlit itself and never shown or logged here. ``core/`` knows nothing of identity.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import streamlit as st

from dashboard.audit import Action, AuditError, AuditLog, Subject, audit_path_from, load_salt

LOCAL_USER = "local"
DEFAULT_IDLE_MINUTES = 15.0
#: How long a refused user sees the refusal before being logged out.
REFUSAL_PAUSE_S = 4.0
IDENTITY_KEY = "hicxr_identity"
LOGIN_KEY = "hicxr_login"
RUNS_KEY, SEEN_RUNS_KEY, INLINE_KEY = "hicxr_page_runs", "hicxr_idle_seen_runs", "hicxr_idle_inline"
LOCAL_MODE_TEXT = "local mode: no login"


# ---------------------------------------------------------------------------------------------------- configuration


def secrets_section(name: str) -> dict[str, Any]:
    """A section of Streamlit's secrets as a plain dict (empty when there is no secrets file or no such section)."""
    from streamlit.runtime.secrets import secrets_singleton

    try:
        if not secrets_singleton.load_if_toml_exists():
            return {}
        section = secrets_singleton.get(name)
    except Exception:  # noqa: BLE001 - an unreadable secrets file is reported by Streamlit; here it means "none"
        return {}
    if section is None:
        return {}
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def auth_configured() -> bool:
    """True when ``.streamlit/secrets.toml`` (or ``secrets.files``) has an ``[auth]`` section."""
    return bool(secrets_section("auth"))


def login_provider() -> str | None:
    """The provider to pass to ``st.login``: ``[access] provider``, else the first named ``[auth.<name>]`` section,
    else ``None`` (the unnamed provider configured directly in ``[auth]``)."""
    named = secrets_section("access").get("provider")
    if named:
        return str(named)
    providers = [k for k, v in secrets_section("auth").items() if isinstance(v, Mapping)]
    return providers[0] if providers else None


@dataclass(frozen=True)
class AccessPolicy:
    """Who may enter, from the ``[access]`` section of the secrets.

    Attributes:
        allowed_users: E-mail addresses (matched case-insensitively) or ``sub`` values (matched exactly).
        required_claim: A claim of the ID token (e.g. ``groups``, ``roles``) that must hold one of ``required_values``.
        required_values: Accepted values of ``required_claim`` (a string claim or a list claim).
        idle_timeout_s: Seconds without interaction after which a session is logged out.
    """

    allowed_users: frozenset[str] = field(default_factory=frozenset)
    required_claim: str | None = None
    required_values: frozenset[str] = field(default_factory=frozenset)
    idle_timeout_s: float = DEFAULT_IDLE_MINUTES * 60

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> AccessPolicy:
        """Read ``[access]``; a malformed value raises ``ValueError`` naming the key."""
        def strings(key: str) -> frozenset[str]:
            value = section.get(key, [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"[access] {key} must be a list of strings")
            return frozenset(v.strip() for v in value if v.strip())

        minutes = section.get("idle_timeout_minutes", DEFAULT_IDLE_MINUTES)
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0:
            raise ValueError("[access] idle_timeout_minutes must be a positive number")
        claim = section.get("required_claim")
        return cls(allowed_users=strings("allowed_users"),
                   required_claim=str(claim) if claim else None, required_values=strings("required_values"),
                   idle_timeout_s=float(minutes) * 60)

    @property
    def has_rule(self) -> bool:
        """True when someone can be let in (an allow-list or a required claim with values)."""
        return bool(self.allowed_users) or bool(self.required_claim and self.required_values)

    def allows(self, claims: Mapping[str, Any]) -> bool:
        """True if the ID token's ``claims`` pass the allow-list or the required claim."""
        sub = str(claims.get("sub", ""))  # subject IDs are case-sensitive; e-mail addresses are not
        email = str(claims.get("email", "")).lower()
        email_ok = bool(email) and claims.get("email_verified") is not False
        if sub and sub in self.allowed_users or email_ok and email in {u.lower() for u in self.allowed_users}:
            return True
        if self.required_claim and self.required_values:
            value = claims.get(self.required_claim)
            values = {value} if isinstance(value, str) else set(value) if isinstance(value, list | tuple) else set()
            return bool({str(v) for v in values} & self.required_values)
        return False


# ---------------------------------------------------------------------------------------------------- audit log


@st.cache_resource(show_spinner=False)
def _audit_log(path: str) -> AuditLog:
    return AuditLog(path)


def audit_log() -> AuditLog:
    """The process's audit log (path from ``--audit-log`` after ``--``, else the documented default)."""
    return _audit_log(str(audit_path_from(sys.argv[1:], os.environ)))


def study_salt() -> bytes:
    """The site's salt for hashing study UIDs (``[audit] salt`` in the secrets, else the salt file beside the log)."""
    return load_salt(audit_log().path, secrets_section("audit").get("salt"))


def current_user() -> str:
    """The ``sub`` of the logged-in user, or ``"local"`` in local mode."""
    return st.session_state.get(IDENTITY_KEY, LOCAL_USER)


def record(action: Action, *, subject: Subject | None = None, model_version: str | None = None,
           variant: str | None = None, outcome: str = "ok", detail: str | None = None,
           user: str | None = None) -> bool:
    """Write one audit entry for this session's user. If it cannot be written, show why and return ``False``:
    the caller must then refuse the action (fail closed)."""
    try:
        audit_log().record(user or current_user(), action, subject=subject, model_version=model_version,
                           variant=variant, outcome=outcome, detail=detail)
    except AuditError as err:
        st.error(str(err), icon=":material/block:")
        return False
    return True


def record_once(key: tuple, action: Action, **fields: Any) -> bool:
    """:func:`record` the first time ``key`` is seen in this session (reruns of the page are not new actions).

    Called after the page's long step (an analysis), it also marks the login active: waiting for a result is not
    idleness."""
    login = st.session_state.get(LOGIN_KEY)
    if login is not None:
        _activity().touch(login, time.time())
    done: set = st.session_state.setdefault("hicxr_audited", set())
    if key in done:
        return True
    if not record(action, **fields):
        return False
    done.add(key)
    return True


def model_version(scan: Any, variant: str) -> str | None:
    """The model card's ``tensor_sha256`` of a variant in a registry scan (``None`` if the card has none)."""
    found = next((v for v in (scan.variants if scan is not None else []) if v.name == variant), None)
    return getattr(found.card, "tensor_sha256", None) if found is not None else None


def record_analysis(scan: Any, digest: str, variant: str, mc_samples: int, failure: str | None) -> bool:
    """Record "image analysed" once per (image, variant, samples) in this session; ``failure`` is the outcome's
    kind when the analysis failed. ``False`` (with a message on the page) when the log cannot be written."""
    return record_once(("analysis", digest, variant, mc_samples), Action.IMAGE_ANALYSED,
                       subject=Subject.image(digest), model_version=model_version(scan, variant), variant=variant,
                       outcome="ok" if failure is None else "failed", detail=failure)


def record_study_opened(study_uid: str, *, outcome: str = "ok", detail: str | None = None) -> bool:
    """Record "study opened" (a study retrieved from the PACS worklist) once per study in this session; the study is
    written as a salted hash of ``study_uid``. ``False`` (with a message) means: do not show the study."""
    try:
        subject = Subject.study(study_uid, study_salt())
    except AuditError as err:
        st.error(str(err), icon=":material/block:")
        return False
    return record_once(("study", subject.digest, outcome), Action.STUDY_OPENED, subject=subject, outcome=outcome,
                       detail=detail)


def record_results_sent(study_uid: str, scan: Any, variant: str, *, outcome: str = "ok",
                        detail: str | None = None) -> bool:
    """Record "results sent to PACS" for a study (salted hash) and the variant's model version. Call it before the
    STOW (``outcome="requested"``; ``False``: do not send) and again with the PACS's answer (``"ok"``/``"failed"``)."""
    try:
        subject = Subject.study(study_uid, study_salt())
    except AuditError as err:
        st.error(str(err), icon=":material/block:")
        return False
    return record(Action.RESULTS_SENT, subject=subject, model_version=model_version(scan, variant), variant=variant,
                  outcome=outcome, detail=detail)


def audited_download(make: Callable[[], bytes | str], *, kind: str, subject: Subject,
                     model_version: str | None, variant: str | None) -> Callable[[], bytes | str]:
    """A download button's deferred data: records "export downloaded" when the user clicks, then builds the file.

    If the entry cannot be written the callable raises, so the browser gets no file (Streamlit says the download
    failed; the Export tab also says why beforehand when the log is not writable).
    """
    user = current_user()  # the callable runs outside the script thread, without session state
    log = audit_log()

    def build() -> bytes | str:
        log.record(user, Action.EXPORT_DOWNLOADED, subject=subject, model_version=model_version, variant=variant,
                   detail=kind)
        return make()

    return build


def audit_writable() -> bool:
    """Show the audit log's problem and return ``False`` if an entry could not be written now."""
    try:
        audit_log().check_writable()
    except AuditError as err:
        st.error(f"{err} Downloads are refused until it can be written.", icon=":material/block:")
        return False
    return True


# ---------------------------------------------------------------------------------------------------- login gate


class _Activity:
    """Last interaction per login (``sub``, ``iat``), shared by the sessions of one server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[str, float], float] = {}

    def last(self, key: tuple[str, float]) -> float | None:
        with self._lock:
            return self._last.get(key)

    def touch(self, key: tuple[str, float], now: float) -> bool:
        """Mark activity; True if this login was not seen before."""
        with self._lock:
            new = key not in self._last
            self._last[key] = now
            return new

    def forget(self, key: tuple[str, float]) -> None:
        with self._lock:
            self._last.pop(key, None)


@st.cache_resource(show_spinner=False)
def _activity() -> _Activity:
    return _Activity()


def idle_for(last: float | None, issued_at: float, now: float) -> float:
    """Seconds since the last interaction of a login (since it was issued, for a login this process has not seen)."""
    return now - (last if last is not None else issued_at)


def policy() -> AccessPolicy:
    """The ``[access]`` policy of the secrets."""
    return AccessPolicy.from_mapping(secrets_section("access"))


def _login_screen() -> None:
    st.title("HiCXR · hierarchical chest X-ray findings")
    st.write("Log in with your hospital account to use this dashboard.")
    provider = login_provider()
    st.button("Log in", key="login", type="primary", icon=":material/login:",
              on_click=st.login, args=(provider,) if provider else ())


def _logout(key: tuple[str, float], reason: str) -> None:
    if record(Action.LOGOUT, detail=reason):
        _activity().forget(key)
        st.session_state.pop(IDENTITY_KEY, None)
        st.session_state.pop(LOGIN_KEY, None)
        st.logout()
    st.stop()


def gate() -> str:
    """Let this run through only for an allowed, active, logged-in user (or in local mode); return the user.

    Draws the login screen, the refusal, or the idle logout and stops the script otherwise.
    """
    if not auth_configured():
        st.session_state[IDENTITY_KEY] = LOCAL_USER
        st.caption(f":material/lock_open: **{LOCAL_MODE_TEXT}** · this dashboard answers on this computer only, "
                   "unless started with the flag that accepts the risk (see the README).")
        return LOCAL_USER
    if not st.user.is_logged_in:
        st.session_state.pop(IDENTITY_KEY, None)
        _login_screen()
        st.stop()

    claims = dict(st.user.to_dict())
    sub = str(claims.get("sub", ""))
    try:
        rules = policy()
    except ValueError as err:  # a malformed [access] section: nobody gets in until it is fixed
        st.error(f"The dashboard's access settings are invalid ({err}); tell the administrator.",
                 icon=":material/block:")
        st.stop()
    if not sub or not rules.allows(claims):
        if sub and not st.session_state.get("hicxr_refused"):
            record(Action.REFUSAL, user=sub, outcome="refused", detail="not on the access list")
            st.session_state["hicxr_refused"] = True
        st.error("Access refused: your account is not allowed to use this dashboard. You are being logged out; ask "
                 "the administrator to add you to the access list.", icon=":material/block:")
        time.sleep(REFUSAL_PAUSE_S)  # the refusal is on screen before the browser leaves for the logout
        st.session_state.pop("hicxr_refused", None)
        st.logout()
        st.stop()

    key = (sub, float(claims.get("iat") or 0.0))
    activity = _activity()
    now = time.time()
    if idle_for(activity.last(key), key[1], now) > rules.idle_timeout_s:
        st.session_state[IDENTITY_KEY] = sub
        _logout(key, "idle timeout")
    st.session_state[IDENTITY_KEY] = sub
    if activity.last(key) is None and not record(Action.LOGIN):
        st.stop()  # fail closed: no entry, no entry into the app
    activity.touch(key, now)
    st.session_state[LOGIN_KEY] = key
    st.session_state[RUNS_KEY] = st.session_state.get(RUNS_KEY, 0) + 1

    with st.sidebar:
        who = claims.get("email") or claims.get("name") or sub
        st.caption(f":material/person: Logged in as **{who}**")
        if st.button("Log out", key="logout", icon=":material/logout:"):
            _logout(key, "user")
        st.session_state[INLINE_KEY] = True
        try:
            _watch_idle(key, rules.idle_timeout_s)
        finally:
            st.session_state[INLINE_KEY] = False
    return sub


def _watch_idle(key: tuple[str, float], timeout_s: float) -> None:
    """A timer fragment that reruns the whole page once the login has been idle too long, so the gate logs it out
    even when nobody touches the page. Its own runs are not activity; but a page run that ended since its last
    check was (a long analysis is not idleness), so the check counts from now then."""
    def check() -> None:
        state = st.session_state
        if state.get(INLINE_KEY):  # the call from the page run itself: that run has not ended yet
            return
        runs = state.get(RUNS_KEY, 0)
        if state.get(SEEN_RUNS_KEY) != runs:
            state[SEEN_RUNS_KEY] = runs
            _activity().touch(key, time.time())
        elif idle_for(_activity().last(key), key[1], time.time()) > timeout_s:
            st.rerun(scope="app")

    interval = timedelta(seconds=max(1.0, min(30.0, timeout_s / 4)))
    st.fragment(check, run_every=interval)()
