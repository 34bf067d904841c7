"""Atomic output directories and files, and small file helpers.

``feedrec prepare`` writes a whole ``DATA_DIR`` (several Parquet files and a
``manifest.json``). A crash half-way must never leave something that looks
complete, so everything is written into a hidden temporary directory beside
the destination and renamed into place at the very end:

* a new destination is created by one ``rename``;
* an existing one (with ``overwrite=True``) is swapped with the new one in one
  ``renameat2(RENAME_EXCHANGE)`` call where the kernel supports it, otherwise
  by two renames (old -> backup, new -> destination), then the old copy is
  deleted.

Example:

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_directory(root / "data") as tmp:
...     _ = (tmp / "a.txt").write_text("hello")
>>> (root / "data" / "a.txt").read_text()
'hello'
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def is_nonempty_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory with at least one entry."""
    path = Path(path)
    return path.is_dir() and any(path.iterdir())


def check_destination(path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse a destination that exists and is not an empty directory (unless ``overwrite``).

    Raises:
        FileExistsError: ``path`` is a non-empty directory and ``overwrite`` is False.
        NotADirectoryError: ``path`` exists and is not a directory.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output {path} exists and is not a directory")
    if is_nonempty_dir(path) and not overwrite:
        raise FileExistsError(
            f"output directory {path} exists and is not empty; pass --overwrite "
            "(overwrite=True) to replace it"
        )
    return path


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``path`` when the block succeeds.

    The temporary directory is created beside ``path`` (same filesystem, so
    the final rename is atomic) and is named ``.{name}.tmp-{random}``. If the
    block raises, it is deleted and ``path`` is left as it was.

    Args:
        path: str or Path. The destination directory.
        overwrite: bool. Replace a non-empty existing ``path``. Defaults to False.
    """
    path = check_destination(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        # Checked again: another process may have written `path` meanwhile.
        check_destination(path, overwrite=overwrite)
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    if not is_nonempty_dir(path):
        os.rmdir(path)
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # `tmp` now holds the old directory
        return
    backup = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(path, backup)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(backup, path)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2``; False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE)
    )
    return result == 0


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON via a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_info(path: str | Path, chunk_size: int = 1 << 20) -> dict:
    """``{"path", "bytes", "sha256"}`` of a file (the manifest's record of an input)."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}
