"""The audit trail: who did what, when, to which image or study, with which model — and nothing that names a patient.

One JSON object per line, appended to a file of mode 0600 (``streamlit run dashboard/app.py -- --audit-log PATH``;
default :data:`DEFAULT_PATH`)::

    {"time": "2026-12-03T11:52:07.412Z", "user": "3f2c…", "action": "image analysed",
     "subject": {"image_sha256": "9a1e…"}, "model_version": "c0ffee…", "variant": "bce", "outcome": "ok",
     "detail": null}

- ``user`` is the identity provider's ``sub`` claim, or ``"local"`` in local mode (no login).
- ``subject`` is the image's content hash (``image_sha256``) or a salted hash of a study's UID
  (``study_uid_hmac``, HMAC-SHA256 with the site's salt, see :func:`load_salt`): a study can be looked up by whoever
  holds the salt, and the UID itself is never written.
- ``model_version`` is the model card's ``tensor_sha256`` (a hash of the weights).
- ``outcome`` and ``detail`` are short words chosen by the code (``ok``, ``refused``, ``pdf``, ``idle timeout``…),
  never text taken from a file, a header or a server's answer, so no patient name, ID, birth date or free-text
  header can reach the log.

Writing is fail-closed: :meth:`AuditLog.record` raises :class:`AuditError` when the entry cannot be written and
synced, and the dashboard then refuses the action. Each entry opens the file anew (``O_APPEND``), so rotating by
renaming the file is safe: the next entry creates a fresh file with mode 0600. This module has no Streamlit and no
environment lookups; the dashboard wires it in (:mod:`dashboard.access`).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where the log goes without ``--audit-log`` or ``$HICXR_AUDIT_LOG`` (git-ignored).
DEFAULT_PATH = ROOT / "logs" / "audit.jsonl"
ENV_AUDIT_LOG = "HICXR_AUDIT_LOG"
#: ``[audit] salt`` in the secrets overrides the salt file kept beside the log.
SALT_SUFFIX = ".salt"
FILE_MODE = 0o600


class Action(StrEnum):
    """What a user did. The values are the words written in the log."""

    LOGIN = "login"
    LOGOUT = "logout"
    REFUSAL = "refusal"
    IMAGE_ANALYSED = "image analysed"
    STUDY_OPENED = "study opened"
    EXPORT_DOWNLOADED = "export downloaded"
    RESULTS_SENT = "results sent to PACS"


class AuditError(RuntimeError):
    """The audit log could not be written: the action must be refused."""


@dataclass(frozen=True)
class Subject:
    """What an action was about: an image by its content hash, or a study by a salted hash of its UID.

    Build it with :meth:`image` or :meth:`study`; never put an identifier here unhashed.
    """

    kind: str
    digest: str

    @classmethod
    def image(cls, sha256_hex: str) -> Subject:
        """An image by the SHA-256 of its file bytes (the analysis record's ``image_sha256``)."""
        if len(sha256_hex) != 64 or any(c not in "0123456789abcdef" for c in sha256_hex):
            raise ValueError("an image subject is the 64-digit lowercase hex SHA-256 of its bytes")
        return cls("image_sha256", sha256_hex)

    @classmethod
    def study(cls, study_uid: str, salt: bytes) -> Subject:
        """A study by HMAC-SHA256(salt, StudyInstanceUID): linkable within a site, not reversible without the salt."""
        if not salt:
            raise ValueError("a study subject needs the site's salt")
        return cls("study_uid_hmac", hmac.new(salt, study_uid.strip().encode(), hashlib.sha256).hexdigest())

    def to_dict(self) -> dict[str, str]:
        """``{kind: digest}`` as written in the log."""
        return {self.kind: self.digest}


@dataclass(frozen=True)
class AuditEntry:
    """One line of the log (see the module docstring for each field)."""

    time: str
    user: str
    action: Action
    subject: Subject | None = None
    model_version: str | None = None
    variant: str | None = None
    outcome: str = "ok"
    detail: str | None = None

    def to_json(self) -> str:
        """The entry as one line of JSON (no newline)."""
        return json.dumps({
            "time": self.time, "user": self.user, "action": str(self.action),
            "subject": self.subject.to_dict() if self.subject else None, "model_version": self.model_version,
            "variant": self.variant, "outcome": self.outcome, "detail": self.detail,
        }, ensure_ascii=True, separators=(", ", ": "))


def utc_now() -> str:
    """The current UTC time, ISO 8601 with milliseconds and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """An append-only JSON-lines audit log at ``path`` (created with mode 0600, its folder with 0700).

    Thread-safe within a process (one lock), and line-atomic across processes (one ``write`` per entry on an
    ``O_APPEND`` descriptor).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, user: str, action: Action, *, subject: Subject | None = None, model_version: str | None = None,
               variant: str | None = None, outcome: str = "ok", detail: str | None = None) -> AuditEntry:
        """Append one entry and sync it to disk; raise :class:`AuditError` if that fails (then refuse the action)."""
        entry = AuditEntry(time=utc_now(), user=user, action=Action(action), subject=subject,
                           model_version=model_version, variant=variant, outcome=outcome, detail=detail)
        line = (entry.to_json() + "\n").encode("ascii")
        with self._lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
                try:
                    os.fchmod(fd, FILE_MODE)
                    if os.write(fd, line) != len(line):
                        raise OSError("short write")
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as err:
                raise AuditError(
                    f"The audit log {self.path} cannot be written ({err.strerror or err}), so this action was "
                    "refused. Tell the administrator: every action must be recorded before it is allowed."
                ) from None
        return entry

    def check_writable(self) -> None:
        """Raise :class:`AuditError` unless an entry could be appended now (creates the file if needed)."""
        with self._lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE))
            except OSError as err:
                raise AuditError(f"The audit log {self.path} cannot be written ({err.strerror or err}).") from None


def load_salt(log_path: str | Path, configured: str | None = None) -> bytes:
    """The site's salt for study-UID hashes: ``configured`` (``[audit] salt`` in the secrets) if given, else the
    random salt kept in ``<log>.salt`` (mode 0600, created on first use, kept across rotations)."""
    if configured:
        return configured.encode()
    path = Path(str(log_path) + SALT_SUFFIX)
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:
        raise AuditError(f"The audit salt file {path} cannot be read ({err}).") from None
    salt = secrets.token_bytes(32)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(salt.hex())
    except FileExistsError:  # another process made it first
        return bytes.fromhex(path.read_text().strip())
    except OSError as err:
        raise AuditError(f"The audit salt file {path} cannot be written ({err.strerror or err}).") from None
    return salt


def audit_path_from(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """``--audit-log PATH`` among the app arguments (after ``--``), else ``$HICXR_AUDIT_LOG``, else
    :data:`DEFAULT_PATH`. Relative paths are taken relative to the repository root."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--audit-log", default=None)
    args, _ = parser.parse_known_args(list(argv))
    chosen = args.audit_log or environ.get(ENV_AUDIT_LOG)
    if not chosen:
        return DEFAULT_PATH
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else ROOT / path
