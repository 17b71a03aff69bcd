"""A DICOMweb client for HiCXR (``dicomweb-client`` underneath): search, retrieve in memory, store.

* :meth:`PacsClient.search_studies` - QIDO-RS: a date range, modalities in the study (CR/DX by default; one query
  per modality, merged, since servers differ on multi-value matching), an accession number.
* :meth:`PacsClient.instances` - QIDO-RS series and instances of one study (modality, view, body part, SOP class).
* :meth:`PacsClient.retrieve` - WADO-RS of one instance as the raw bytes the PACS holds (any transfer syntax),
  in memory only, refused before download when the answer declares more than the upload limit; the bytes then go
  through :func:`core.imaging.read_image` like an upload, so every reader limit and warning applies. The raw
  bytes come from ``dicomweb-client``'s own multipart decoder (``_http_get`` + ``_decode_multipart_message``):
  its public ``retrieve_instance`` parses the file with pydicom before HiCXR's limits could look at it.
* :meth:`PacsClient.store` - STOW-RS; a partial failure (some instances refused) is retried for those instances
  only, and what finally failed is returned, never dropped.

Every failure is a :class:`PacsError` whose message says what happened and what to do, without credentials or
patient data: the PACS is unreachable (:class:`PacsUnavailableError`), refuses the credentials
(:class:`PacsAuthError`), does not answer in time (:class:`PacsTimeoutError`), answers something unexpected
(:class:`PacsResponseError`). Credentials live on the HTTP session (``requests`` auth), never in headers passed
around or logged; ``dicomweb-client``'s own logger is kept at WARNING because it logs UIDs at INFO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.web import _Transaction

from core.imaging import DEFAULT_MAX_BYTES
from core.imaging.coded import BODY_PARTS, MODALITIES, VIEW_POSITIONS, coded, uid_text
from core.pacs.credentials import PacsSettings

__all__ = [
    "InstanceRef",
    "PacsAuthError",
    "PacsClient",
    "PacsError",
    "PacsResponseError",
    "PacsTimeoutError",
    "PacsTooLargeError",
    "PacsUnavailableError",
    "StoreOutcome",
    "StudySummary",
]

logger = logging.getLogger("hicxr.pacs")
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its INFO lines carry study/instance UIDs
logging.getLogger("retrying").setLevel(logging.ERROR)  # a traceback (with request URLs) per quick retry

T = TypeVar("T")
CHEST_MODALITIES = ("CR", "DX")
# WADO-RS: the instance as stored, whatever its transfer syntax (no transcoding by the PACS).
ACCEPT_DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
STORE_ATTEMPTS = 3


class PacsError(RuntimeError):
    """Anything that went wrong talking to the PACS; ``str(e)`` says what and what to do."""


class PacsUnavailableError(PacsError):
    """The PACS cannot be reached (down, wrong address, connection dropped)."""


class PacsAuthError(PacsError):
    """The PACS refused the credentials (HTTP 401/403)."""


class PacsTimeoutError(PacsError):
    """The PACS did not answer within the timeout."""


class PacsResponseError(PacsError):
    """The PACS answered, but with an error status or content HiCXR cannot use."""


class PacsTooLargeError(PacsError):
    """An instance is larger than the upload limit (refused before download)."""


class _BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` added at send time (so it is never in a headers dict that gets logged)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


# ---------------------------------------------------------------------------------------------- records


def _value(item: dict[str, Any], tag: str) -> Any:
    """First value of a DICOM JSON attribute (PN as its Alphabetic form), or None."""
    element = item.get(tag) or {}
    values = element.get("Value") or []
    if not values:
        return None
    first = values[0]
    if isinstance(first, dict):  # PN
        return first.get("Alphabetic")
    return first


def _values(item: dict[str, Any], tag: str) -> tuple[str, ...]:
    element = item.get(tag) or {}
    return tuple(str(v) for v in element.get("Value") or [] if v is not None)


def _text(value: Any, limit: int = 64) -> str:
    """Header text for display: printable characters only, bounded."""
    text = "" if value is None else str(value)
    return "".join(ch for ch in text if ch.isprintable())[:limit].strip()


@dataclass(frozen=True)
class StudySummary:
    """One study as QIDO-RS describes it.

    ``patient_name`` and ``patient_id`` are filled only when asked for (:meth:`PacsClient.search_studies` with
    ``with_patient=True``, i.e. the site turned them on); they are never logged or written to result rows.
    """

    study_uid: str
    date: str = ""
    time: str = ""
    accession: str = ""
    modalities: tuple[str, ...] = ()
    description: str = ""
    n_instances: int | None = None
    patient_name: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)

    @classmethod
    def from_json(cls, item: dict[str, Any], with_patient: bool = False) -> StudySummary | None:
        """From a QIDO-RS study result; ``None`` when it has no usable Study Instance UID."""
        uid = uid_text(_value(item, "0020000D"))
        if uid is None:
            return None
        n = _value(item, "00201208")
        return cls(
            study_uid=uid,
            date=_text(_value(item, "00080020"), 8),
            time=_text(_value(item, "00080030"), 6),
            accession=_text(_value(item, "00080050"), 16),
            modalities=tuple(sorted({coded(m, MODALITIES) or "" for m in _values(item, "00080061")} - {""})),
            description=_text(_value(item, "00081030")),
            n_instances=int(n) if isinstance(n, (int, float, str)) and str(n).isdigit() else None,
            patient_name=_text(_value(item, "00100010")) if with_patient else "",
            patient_id=_text(_value(item, "00100020")) if with_patient else "",
        )


@dataclass(frozen=True)
class InstanceRef:
    """One instance of a study, as QIDO-RS describes it (header fields reduced to DICOM defined terms)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""
    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    series_description: str = ""
    series_number: int | None = None
    instance_number: int | None = None

    @property
    def key(self) -> str:
        """``study/series/instance`` UIDs: the row key of batch output (unique, no patient data)."""
        return f"{self.study_uid}/{self.series_uid}/{self.sop_uid}"


@dataclass
class StoreOutcome:
    """What a STOW-RS store did: SOP Instance UIDs stored, and those that failed with the reason."""

    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """True when every instance was stored."""
        return not self.failed


# ---------------------------------------------------------------------------------------------- client


class PacsClient:
    """DICOMweb access to one PACS (see the module docstring). Thread-safe for reads (one ``requests`` session)."""

    def __init__(self, settings: PacsSettings, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 store_attempts: int = STORE_ATTEMPTS, retry_wait_s: float = 0.5) -> None:
        """Open a session to ``settings.url`` (no request is sent yet).

        Args:
            settings: URL, credentials and timeout.
            max_bytes: Largest instance retrieved (the upload limit by default).
            store_attempts: Tries per store before the failures are returned.
            retry_wait_s: Wait before the first store retry (doubled each time).
        """
        self.settings = settings
        self.max_bytes = int(max_bytes)
        self.store_attempts = max(1, int(store_attempts))
        self.retry_wait_s = float(retry_wait_s)
        session = requests.Session()
        session.trust_env = False  # no proxy or .netrc credentials picked up behind the site's back
        if settings.token:
            session.auth = _BearerAuth(settings.token)
        elif settings.user:
            session.auth = (settings.user, settings.password)
        self._client = DICOMwebClient(url=settings.url, session=session, callback=self._check_size,
                                      timeout=(min(10.0, settings.timeout_s), settings.timeout_s))
        # Retry only what servers say is temporary (429/503/504/408), briefly; a refused connection fails at once.
        self._client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=200)

    def __repr__(self) -> str:
        return f"PacsClient({self.settings!r})"

    def _check_size(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        """Refuse an instance download whose declared size is over the limit, before its body is read."""
        if response.headers.get("Content-Type", "").startswith("multipart/related"):
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > self.max_bytes + 65536:
                response.close()
                raise PacsTooLargeError(
                    f"The PACS offers an instance of {int(length) / 2**20:.1f} MB; the limit is "
                    f"{self.max_bytes / 2**20:.0f} MB, as for uploads. It was not downloaded.")
        return response

    # ------------------------------------------------------------------------------------------ calls

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one DICOMweb request, turning every failure into a :class:`PacsError` that says what to do."""
        where = self.settings.url
        try:
            return fn()
        except PacsError:
            raise
        except requests.exceptions.Timeout:
            raise PacsTimeoutError(
                f"The PACS at {where} did not answer within {self.settings.timeout_s:.0f} s while {what}. It may be "
                "overloaded: try again later, or raise the timeout (HICXR_PACS_TIMEOUT).") from None
        except requests.exceptions.ConnectionError:
            raise PacsUnavailableError(
                f"The PACS at {where} cannot be reached while {what} (connection refused or dropped). Check that "
                "it is running and that the address is right; nothing was lost, run again when it is back.") from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise PacsAuthError(
                    f"The PACS at {where} refused HiCXR's credentials (HTTP {status}) while {what}. Check "
                    "HICXR_PACS_USER / HICXR_PACS_PASSWORD / HICXR_PACS_TOKEN or the [pacs] table of the secrets "
                    "file.") from None
            if status == 404:
                raise PacsResponseError(
                    f"The PACS at {where} does not know what HiCXR asked for while {what} (HTTP 404): the study "
                    "may have been deleted, or the URL is not the DICOMweb root (it often ends in /dicom-web)."
                ) from None
            raise PacsResponseError(f"The PACS at {where} answered HTTP {status} while {what}.") from None
        except requests.exceptions.RequestException as exc:
            raise PacsUnavailableError(
                f"The request to the PACS at {where} failed while {what} ({type(exc).__name__}).") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise PacsResponseError(
                f"The PACS at {where} answered in a form HiCXR cannot read while {what} ({type(exc).__name__})."
            ) from None

    def ping(self) -> None:
        """One cheap QIDO-RS request; raises the :class:`PacsError` that says why the PACS is not usable."""
        self._call("checking the connection", lambda: self._client.search_for_studies(limit=1))

    def search_studies(self, *, since: str | None = None, until: str | None = None, accession: str | None = None,
                       modalities: Sequence[str] | None = CHEST_MODALITIES, limit: int | None = None,
                       with_patient: bool = False) -> list[StudySummary]:
        """Studies matching the filters, newest first.

        Args:
            since: First study date, ``YYYYMMDD`` (inclusive).
            until: Last study date, ``YYYYMMDD`` (inclusive).
            accession: Accession number (exact).
            modalities: Keep studies holding one of these modalities (one query each); ``None``: any.
            limit: At most this many studies per query.
            with_patient: Fill patient name and ID (only when the site turned them on).
        """
        for name, value in (("since", since), ("until", until)):
            if value is not None and not (len(value) == 8 and value.isdigit()):
                raise ValueError(f"{name} must be a date as YYYYMMDD, got {value!r}")
        filters: dict[str, Any] = {}
        if since or until:
            filters["StudyDate"] = f"{since or ''}-{until or ''}"
        if accession:
            filters["AccessionNumber"] = accession
        fields = ["StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "StudyDescription",
                  "NumberOfStudyRelatedInstances"] + (["PatientName", "PatientID"] if with_patient else [])
        queries = [None] if not modalities else list(modalities)
        found: dict[str, StudySummary] = {}
        for modality in queries:
            query = dict(filters, **({"ModalitiesInStudy": modality} if modality else {}))
            items = self._call("searching for studies", lambda q=query: self._client.search_for_studies(
                search_filters=q, fields=fields, limit=limit))
            for item in items:
                study = StudySummary.from_json(item, with_patient)
                if study is not None:
                    found.setdefault(study.study_uid, study)
        return sorted(found.values(), key=lambda s: (s.date, s.time, s.study_uid), reverse=True)

    def instances(self, study_uid: str) -> list[InstanceRef]:
        """Every instance of a study (series by series), with modality, view, body part and SOP class."""
        series_items = self._call("listing the series of a study", lambda: self._client.search_for_series(
            study_instance_uid=study_uid, fields=["Modality", "SeriesDescription", "SeriesNumber",
                                                  "BodyPartExamined"]))
        out: list[InstanceRef] = []
        for series in series_items:
            series_uid = uid_text(_value(series, "0020000E"))
            if series_uid is None:
                continue
            items = self._call("listing the instances of a series", lambda s=series_uid: (
                self._client.search_for_instances(
                    study_instance_uid=study_uid, series_instance_uid=s,
                    fields=["SOPClassUID", "ViewPosition", "BodyPartExamined", "InstanceNumber"])))
            for item in items:
                sop_uid = uid_text(_value(item, "00080018"))
                if sop_uid is None:
                    continue
                number = _value(item, "00200013")
                series_number = _value(series, "00200011")
                out.append(InstanceRef(
                    study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                    sop_class_uid=uid_text(_value(item, "00080016")) or "",
                    modality=coded(_value(series, "00080060") or _value(item, "00080060"), MODALITIES),
                    view_position=coded(_value(item, "00185101"), VIEW_POSITIONS),
                    body_part=coded(_value(item, "00180015") or _value(series, "00180015"), BODY_PARTS),
                    series_description=_text(_value(series, "0008103E")),
                    series_number=_int(series_number), instance_number=_int(number)))
        return sorted(out, key=lambda r: (r.series_number or 0, r.series_uid, r.instance_number or 0, r.sop_uid))

    def retrieve(self, ref: InstanceRef) -> bytes:
        """The instance's bytes as stored (any transfer syntax), in memory; over the size limit: refused.

        Raises:
            PacsTooLargeError: larger than ``max_bytes`` (checked on the declared size and on what arrived).
            PacsError: any other failure (see :meth:`_call`).
        """
        def get() -> bytes:
            url = self._client._get_instances_url(_Transaction.RETRIEVE, ref.study_uid, ref.series_uid, ref.sop_uid)
            response = self._client._http_get(url, headers={"Accept": ACCEPT_DICOM_ANY})
            parts = [p for p in self._client._decode_multipart_message(response, stream=False) if p]
            if len(parts) != 1:
                raise PacsResponseError(f"The PACS sent {len(parts)} parts for one instance; expected one.")
            return bytes(parts[0])

        data = _as_part10(self._call("retrieving an image", get))
        if len(data) > self.max_bytes:
            raise PacsTooLargeError(f"The instance is {len(data) / 2**20:.1f} MB; the limit is "
                                    f"{self.max_bytes / 2**20:.0f} MB, as for uploads.")
        return data

    def retrieve_dataset(self, ref: InstanceRef) -> pydicom.Dataset:
        """The instance parsed with pydicom (for HiCXR's own small results, e.g. reading an SR back)."""
        from io import BytesIO

        return pydicom.dcmread(BytesIO(self.retrieve(ref)))

    def store(self, datasets: Iterable[pydicom.Dataset]) -> StoreOutcome:
        """STOW-RS the datasets; instances the PACS refuses (or a store that fails) are retried, with a growing wait,
        up to ``store_attempts`` times in all; what still failed is in :attr:`StoreOutcome.failed` with the reason.

        Never raises for a refused or failed store (the caller keeps its results and decides); raises
        :class:`PacsAuthError` at once for refused credentials, as retrying cannot help.
        """
        pending = {ds.SOPInstanceUID: ds for ds in datasets}
        outcome = StoreOutcome()
        wait = self.retry_wait_s
        while pending and outcome.attempts < self.store_attempts:
            if outcome.attempts:
                time.sleep(wait)
                wait *= 2
            outcome.attempts += 1
            try:
                answer = self._call("storing results", lambda: self._client.store_instances(list(pending.values())))
            except PacsAuthError:
                raise
            except PacsError as exc:
                outcome.failed = {uid: str(exc) for uid in pending}
                continue
            refused = _failed_uids(answer)
            listed = _stored_uids(answer)
            for uid in list(pending):
                if uid in refused:
                    outcome.failed[uid] = refused[uid]
                elif listed is not None and uid not in listed:  # neither stored nor refused: not known to be kept
                    outcome.failed[uid] = "the PACS's answer did not list it as stored"
                else:
                    outcome.stored.append(uid)
                    outcome.failed.pop(uid, None)
                    del pending[uid]
        return outcome


def _as_part10(data: bytes) -> bytes:
    """A DICOM file as PS3.10 bytes: some servers (Orthanc among them) send the file meta group without the
    128-byte preamble and ``DICM`` marker in a WADO-RS part; they are put back so the part reads as the file."""
    if data[128:132] != b"DICM" and data[:2] == b"\x02\x00" and data[4:6] in (b"UL", b"OB", b"UI"):
        return bytes(128) + b"DICM" + data
    return data


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _stored_uids(answer: pydicom.Dataset) -> set[str] | None:
    """The SOP Instance UIDs a STOW-RS answer lists as stored (its Referenced SOP Sequence, PS3.18 10.5.3), or
    None when the answer has no such list at all (a lax server that answers success with an empty body)."""
    items = getattr(answer, "ReferencedSOPSequence", None)
    if items is None:
        return None
    return {str(getattr(item, "ReferencedSOPInstanceUID", "")) for item in items}


def _failed_uids(answer: pydicom.Dataset) -> dict[str, str]:
    """SOP Instance UID -> reason for each instance a STOW-RS answer lists as failed."""
    out = {}
    for item in getattr(answer, "FailedSOPSequence", None) or []:
        uid = str(getattr(item, "ReferencedSOPInstanceUID", ""))
        reason = getattr(item, "FailureReason", None)
        out[uid] = f"the PACS refused it (failure reason {int(reason):#06x})" if reason is not None else \
            "the PACS refused it"
    return out
