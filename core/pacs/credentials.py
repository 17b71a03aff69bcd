"""Where HiCXR's PACS settings come from: a secrets file or the environment, never the command line.

Settings (:class:`PacsSettings`):

* ``url``: the DICOMweb root (e.g. ``https://pacs.example.org/dicom-web``); a URL is not a secret, so the command
  line may give it (``--pacs URL``); it must not carry a user or password (``https://user:pw@host`` is refused).
* credentials: ``user`` + ``password`` (HTTP basic) or ``token`` (``Authorization: Bearer``), or none;
* ``timeout_s`` (default 30) and ``show_patient_identity`` (default off: the worklist never shows patient names or
  IDs unless the site turns this on).

Sources, later ones filling what earlier ones left empty: the secrets file, then the environment
(``HICXR_PACS_URL``, ``HICXR_PACS_USER``, ``HICXR_PACS_PASSWORD``, ``HICXR_PACS_TOKEN``, ``HICXR_PACS_TIMEOUT``,
``HICXR_PACS_SHOW_PATIENT_IDENTITY``). The secrets file is TOML with a ``[pacs]`` table holding the same keys in
lower case without the prefix (``url``, ``user``, ``password``, ``token``, ...); its path is
``$HICXR_PACS_SECRETS`` or ``.streamlit/secrets.toml`` in the repository (Streamlit's own secrets file, so the
dashboard and the CLI share one). A secrets file readable by other users gets a warning.

Nothing here logs or prints a credential; :meth:`PacsSettings.__repr__` masks them.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["ENV_PREFIX", "PacsSettings", "PacsSettingsError", "load_settings", "secrets_path"]

ENV_PREFIX = "HICXR_PACS_"
ENV_SECRETS = "HICXR_PACS_SECRETS"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SECRETS = REPO_ROOT / ".streamlit" / "secrets.toml"
DEFAULT_TIMEOUT_S = 30.0
_TRUE = {"1", "true", "yes", "on"}


class PacsSettingsError(ValueError):
    """The PACS settings are unusable (no URL, a URL with credentials in it, a malformed secrets file)."""


@dataclass(frozen=True)
class PacsSettings:
    """How to reach one PACS over DICOMweb.

    Attributes:
        url: DICOMweb root URL, without a trailing slash.
        user: HTTP basic-auth user ("" for none).
        password: HTTP basic-auth password.
        token: Bearer token ("" for none; used instead of user/password when set).
        timeout_s: Seconds to wait for a connection and for each answer.
        show_patient_identity: Site setting: show patient names and IDs in the worklist.
        warnings: Notes about the settings themselves (e.g. a secrets file others can read).
    """

    url: str
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    show_patient_identity: bool = False
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:
        auth = "bearer token" if self.token else ("user/password" if self.user else "none")
        return f"PacsSettings(url={self.url!r}, auth={auth}, timeout_s={self.timeout_s})"

    __str__ = __repr__

    @property
    def auth_kind(self) -> str:
        """``"token"``, ``"basic"`` or ``"none"``."""
        return "token" if self.token else ("basic" if self.user else "none")


def secrets_path(environ: Mapping[str, str] | None = None) -> Path:
    """The secrets file to read: ``$HICXR_PACS_SECRETS`` or the repository's ``.streamlit/secrets.toml``."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_SECRETS)
    return Path(value).expanduser() if value else DEFAULT_SECRETS


def _from_file(path: Path) -> tuple[dict[str, object], list[str]]:
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        raise PacsSettingsError(f"The PACS secrets file {path} cannot be read ({exc.strerror}).") from None
    notes = []
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        notes.append(f"The PACS secrets file {path} can be read by other users of this machine; "
                     f"restrict it with `chmod 600 {path}`.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PacsSettingsError(f"The PACS secrets file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        # The parser's message names a line and column, never the value.
        raise PacsSettingsError(f"The PACS secrets file {path} is not valid TOML ({exc}).") from None
    table = data.get("pacs", {})
    if not isinstance(table, dict):
        raise PacsSettingsError(f"The PACS secrets file {path}: [pacs] must be a table of settings.")
    return table, notes


def load_settings(url: str | None = None, *, environ: Mapping[str, str] | None = None,
                  secrets_file: Path | None = None, overrides: Mapping[str, object] | None = None) -> PacsSettings:
    """The PACS settings: ``url`` (if given) over the secrets file's and the environment's.

    Args:
        url: DICOMweb root from the command line, or ``None``.
        environ: Environment to read (``os.environ`` by default).
        secrets_file: TOML secrets file (default: :func:`secrets_path`).
        overrides: Settings given by the caller (e.g. the dashboard's ``st.secrets["pacs"]``), filling first.

    Raises:
        PacsSettingsError: no URL anywhere, a URL with credentials or not http(s), a malformed secrets file or
            timeout.
    """
    environ = os.environ if environ is None else environ
    table, notes = _from_file(secrets_file or secrets_path(environ))
    merged: dict[str, object] = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
    for key in ("url", "user", "password", "token", "timeout", "show_patient_identity"):
        value = table.get(key)
        if key not in merged and value not in (None, ""):
            merged[key] = value
        env_value = environ.get(ENV_PREFIX + key.upper())
        if key not in merged and env_value:
            merged[key] = env_value
    if url:
        merged["url"] = url
    raw_url = str(merged.get("url") or "").strip().rstrip("/")
    if not raw_url:
        raise PacsSettingsError("No PACS URL: give --pacs URL, set HICXR_PACS_URL, or put url = \"...\" in the "
                                "[pacs] table of the secrets file.")
    parts = urlsplit(raw_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsSettingsError("The PACS URL must be an http:// or https:// DICOMweb address, e.g. "
                                "https://pacs.example.org/dicom-web.")
    if parts.username or parts.password:
        raise PacsSettingsError("The PACS URL carries a user or password: put credentials in the secrets file or "
                                "in HICXR_PACS_USER / HICXR_PACS_PASSWORD / HICXR_PACS_TOKEN, never in the URL.")
    try:
        timeout = float(merged.get("timeout") or DEFAULT_TIMEOUT_S)
    except (TypeError, ValueError):
        raise PacsSettingsError("The PACS timeout must be a number of seconds.") from None
    if not 0 < timeout <= 3600:
        raise PacsSettingsError("The PACS timeout must be between 0 and 3600 seconds.")
    show = merged.get("show_patient_identity")
    show_identity = show if isinstance(show, bool) else str(show or "").strip().lower() in _TRUE
    user, password = str(merged.get("user") or ""), str(merged.get("password") or "")
    if password and not user:
        notes.append("A PACS password is set without a user, so it is not used.")
    return PacsSettings(url=raw_url, user=user, password=password, token=str(merged.get("token") or ""),
                        timeout_s=timeout, show_patient_identity=show_identity, warnings=tuple(notes))


def with_url(settings: PacsSettings, url: str) -> PacsSettings:
    """The same settings pointed at another URL (tests, the demo)."""
    return replace(settings, url=url.rstrip("/"))
