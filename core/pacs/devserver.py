"""A local Orthanc seeded with the sample studies: what the tests, ``make pacs-demo`` and ``bench/pacs.py`` share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.pacs.client import PacsClient
from core.pacs.credentials import PacsSettings
from core.pacs.orthanc import OrthancServer
from core.pacs.wrap import SeedStudy, all_datasets, demo_studies

__all__ = ["DevPacs", "settings_for", "start_seeded"]


def settings_for(server: OrthancServer, *, password: str | None = None, timeout_s: float = 10.0) -> PacsSettings:
    """Settings that reach ``server`` with its generated credentials (``password``: a wrong one, for tests)."""
    return PacsSettings(url=server.dicomweb_url, user=server.user,
                        password=server.password if password is None else password, timeout_s=timeout_s)


@dataclass
class DevPacs:
    """A running, seeded development PACS."""

    server: OrthancServer
    settings: PacsSettings
    studies: list[SeedStudy] = field(default_factory=list)

    def client(self, **kwargs: object) -> PacsClient:
        """A client with the generated credentials."""
        return PacsClient(self.settings, **kwargs)  # type: ignore[arg-type]

    def study(self, kind: str) -> SeedStudy:
        """The first seeded study of a kind (``chest``, ``ct``, ``sr_only``, ``lateral_only``)."""
        return next(s for s in self.studies if s.kind == kind)

    def stop(self) -> None:
        """Stop Orthanc (by its pid) and remove its storage."""
        self.server.stop()


def start_seeded(shared_data: Path, *, nih_count: int = 4, real_dicoms: bool | Sequence[str] = True, port: int = 0,
                 storage_dir: Path | None = None, user: str = "", password: str = "") -> DevPacs:
    """Start a local Orthanc and store the seed set (see :func:`core.pacs.wrap.demo_studies`) through STOW-RS.

    Raises:
        OrthancError: Orthanc could not be started.
        RuntimeError: the seed set could not be stored (the server is stopped first).
    """
    server = OrthancServer(port=port, storage_dir=storage_dir, user=user, password=password).start()
    try:
        settings = settings_for(server, timeout_s=30.0)
        studies = demo_studies(shared_data, nih_count=nih_count, real_dicoms=real_dicoms)
        outcome = PacsClient(settings).store(all_datasets(studies))
        if not outcome.ok:
            raise RuntimeError(f"seeding the development PACS failed: {sorted(set(outcome.failed.values()))}")
    except BaseException:
        server.stop()
        raise
    return DevPacs(server, settings, studies)
