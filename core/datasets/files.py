"""Finding a dataset's files by their official names, compressed or not."""

from __future__ import annotations

from pathlib import Path

from core.labels import LabelError


def table_path(path: str | Path) -> Path:
    """``path`` itself, or ``path.gz`` when only the compressed copy exists (PhysioNet ships ``.csv.gz``)."""
    path = Path(path)
    gz = Path(f"{path}.gz")
    return gz if not path.exists() and gz.is_file() else path


def beside(table: Path, name: str, what: str, required: bool = True) -> Path | None:
    """The file ``name`` (or ``name.gz``) in the folder of ``table``.

    Args:
        table: The label table the file must sit beside.
        name: The file's official name.
        what: What the file is, for the error message.
        required: Raise when the file is missing (else return None).

    Raises:
        LabelError: ``required`` and neither ``name`` nor ``name.gz`` exists; the message names the path.
    """
    path = table_path(table.parent / name)
    if path.is_file():
        return path
    if required:
        raise LabelError(f"{table.parent / name}: {what} not found (expected beside {table.name}; "
                         f"{name}.gz is accepted too)")
    return None
