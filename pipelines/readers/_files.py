"""Finding, opening and fingerprinting raw input files.

This module is the only place that touches the file system for the readers:

* ``resolve`` turns the user's inputs (files, directories, globs, zip
  archives) into an ordered list of :class:`Source` objects, each one raw text
  or binary stream with a display name used in error messages and in the
  ``source_file`` column;
* zip archives are inspected, never extracted: a member name that is an
  absolute path or has a ``..`` component makes the whole archive refused;
* gzip is undone by suffix (``.gz``) or by its magic bytes;
* ``fingerprint`` gives the ``{"path", "bytes", "sha256"}`` records of the
  physical files read (an archive counts once);
* ``read_blocks`` streams sources as blocks of whole lines, so that a large
  file (or zip member, gzipped or not) is never held in memory at once;
  ``seekable`` gives formats that seek (Parquet) a file to read in parts.

Nothing here unpickles anything; readers only parse text, JSON and Parquet.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import glob
import gzip
import hashlib
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
_GLOB_CHARS = re.compile(r"[*?\[]")
_DRIVE = re.compile(r"^[A-Za-z]:")

#: Decides from a file's base name (``"clicks_hour_000.csv"``) whether it is read.
Accept = Callable[[str], bool]


@dataclasses.dataclass(frozen=True)
class Source:
    """One raw input stream: a plain file or a member of a zip archive.

    Attributes:
        name: how errors and the ``source_file`` column name it: the path as
            given (or as found in a directory / glob), or
            ``"{archive}:{member}"`` for a zip member.
        path: the physical file on disk (the archive, for a member).
        member: the member name inside the archive, or ``None``.
    """

    name: str
    path: Path
    member: str | None = None

    @property
    def basename(self) -> str:
        """The file's own name, without folders (``"behaviors.tsv"``)."""
        return PurePosixPath(self.member).name if self.member else self.path.name

    @property
    def stem(self) -> str:
        """The base name without a ``.gz`` suffix."""
        name = self.basename
        return name[:-3] if name.lower().endswith(".gz") else name

    def read_bytes(self) -> bytes:
        """The stream's content, gunzipped when it is gzip."""
        if self.member is None:
            data = self.path.read_bytes()
        else:
            with zipfile.ZipFile(self.path) as archive:
                data = archive.read(self.member)
        return gunzip(self.name, data)

    @property
    def streamable(self) -> bool:
        """Whether the content can be read from disk in blocks (:func:`read_blocks`).

        False for subclasses that supply their bytes themselves (they override
        ``read_bytes``); those are read whole.
        """
        return type(self).read_bytes is Source.read_bytes


@dataclasses.dataclass(frozen=True)
class Size:
    """How big a source is: ``stored`` bytes on disk (a zip member's compressed
    size) and ``content`` bytes once read (None when gzip hides it)."""

    stored: int
    content: int | None


def sizes(sources: Iterable[Source]) -> list[Size]:
    """The :class:`Size` of each source (each archive is opened once)."""
    sources = list(sources)
    archives: dict[Path, zipfile.ZipFile] = {}
    found = []
    try:
        for source in sources:
            if source.member is None:
                stored = source.path.stat().st_size
                with source.path.open("rb") as file:
                    gzipped = file.read(2) == GZIP_MAGIC
                found.append(Size(stored, None if gzipped else stored))
                continue
            if source.path not in archives:
                archives[source.path] = zipfile.ZipFile(source.path)
            info = archives[source.path].getinfo(source.member)
            with archives[source.path].open(info) as file:
                gzipped = file.read(2) == GZIP_MAGIC
            found.append(Size(info.compress_size, None if gzipped else info.file_size))
    finally:
        for archive in archives.values():
            archive.close()
    return [
        Size(size.stored, None if source.basename.lower().endswith(".gz") else size.content)
        for source, size in zip(sources, found, strict=True)
    ]


def head(source: Source, size: int) -> bytes:
    """The first ``size`` bytes of a source's content (gunzipped), or all of a shorter one."""
    if not source.streamable:
        return source.read_bytes()[:size]
    with contextlib.ExitStack() as stack:
        _, stream, _ = _open(source, stack)
        return _read(source.name, stream, size)


def read_all(
    sources: Iterable[Source], *, workers: int = 2, ahead: int = 8
) -> Iterator[tuple[Source, bytes]]:
    """Each source with its (gunzipped) bytes, in order.

    Up to ``ahead`` sources are read and decompressed in ``workers`` threads
    while the caller parses earlier ones (zlib releases the GIL); each zip
    archive is opened once and shared (``zipfile`` reads members of one
    archive safely from several threads).
    """
    archives: dict[Path, zipfile.ZipFile] = {}

    def load(source: Source) -> bytes:
        if source.member is None:
            return source.read_bytes()
        return gunzip(source.name, archives[source.path].read(source.member))

    pending: collections.deque = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        for source in sources:
            if source.member is not None and source.path not in archives:
                archives[source.path] = zipfile.ZipFile(source.path)
            pending.append((source, pool.submit(load, source)))
            if len(pending) > ahead:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        # Stop reading ahead (a caller may stop early on a bad row), then close.
        pool.shutdown(wait=True, cancel_futures=True)
        for archive in archives.values():
            archive.close()


@dataclasses.dataclass(frozen=True)
class Block:
    """Part of a source's content, cut after a line break (see :func:`read_blocks`).

    Attributes:
        source: the source it comes from.
        data: the bytes (gunzipped); the blocks of a source concatenate to its content.
        index: 0 for the source's first block, then 1, 2, ...
        last: whether it is the source's last block.
        done: fraction of the source's stored bytes consumed once this block is read.
    """

    source: Source
    data: bytes
    index: int = 0
    last: bool = True
    done: float = 1.0


def read_blocks(
    sources: Iterable[Source],
    *,
    block_bytes: int,
    whole: Callable[[Source], bool] = lambda source: False,
    workers: int = 2,
    ahead: int = 8,
    known_sizes: Sequence[Size] | None = None,
) -> Iterator[Block]:
    """The content of each source in order, as blocks of whole lines.

    A source is read whole (one block) when ``whole(source)`` is true, when it
    is not ``streamable``, or when its content is known to be at most
    ``block_bytes``; whole sources are read ahead and gunzipped in threads, as
    :func:`read_all` does. Any other source is streamed: blocks of about
    ``block_bytes`` bytes, each ending just after a line break (a longer line
    makes a longer block), read from disk only as they are needed.
    ``known_sizes`` (one :class:`Size` per source) saves looking the sizes up again.
    """
    if not isinstance(block_bytes, int) or block_bytes < 1:
        raise ValueError(
            f"`block_bytes` should be a positive integer. Received: block_bytes={block_bytes!r}"
        )
    sources = list(sources)
    streamable = [source.streamable and not whole(source) for source in sources]
    if known_sizes is None:
        known = iter(sizes(source for source, can in zip(sources, streamable, strict=True) if can))
    else:
        known = (size for size, can in zip(known_sizes, streamable, strict=True) if can)
    small = [
        not can or (next(known).content or block_bytes + 1) <= block_bytes for can in streamable
    ]
    loaded = read_all(
        (source for source, one in zip(sources, small, strict=True) if one),
        workers=workers,
        ahead=ahead,
    )
    try:
        for source, one in zip(sources, small, strict=True):
            if one:
                yield Block(source, next(loaded)[1])
            else:
                yield from _stream(source, block_bytes)
    finally:
        loaded.close()


def _stream(source: Source, block_bytes: int) -> Iterator[Block]:
    """Blocks of whole lines of one source (see :func:`read_blocks`)."""
    with contextlib.ExitStack() as stack:
        raw, stream, size = _open(source, stack)
        previous, index = None, 0
        for data, position in _line_blocks(source.name, stream, block_bytes, raw.tell):
            if previous is not None:
                yield Block(source, previous[0], index, False, previous[1])
                index += 1
            previous = data, min(0.999, position / max(size, 1))  # gzip reads ahead: not 1
        yield Block(source, previous[0], index, True, 1.0)


def seekable(source: Source, stack: contextlib.ExitStack):
    """A seekable binary file of ``source``'s content (gunzipped), closed with ``stack``.

    A plain file on disk is opened as it is; the content of a gzip file or a
    zip member is first copied, a megabyte at a time, into a temporary file
    (bounded memory, for formats such as Parquet that seek).
    """
    if source.member is None:
        raw = stack.enter_context(source.path.open("rb"))
        if not (source.basename.lower().endswith(".gz") or raw.peek(2)[:2] == GZIP_MAGIC):
            return raw
        raw.close()
    local = stack.enter_context(tempfile.TemporaryFile())
    with contextlib.ExitStack() as reading:
        _, stream, _ = _open(source, reading)
        while data := _read(source.name, stream, 1 << 20):
            local.write(data)
    local.seek(0)
    return local


def _open(source: Source, stack: contextlib.ExitStack):
    """``(raw, stream, size)``: the stored bytes, the content (gunzipped) and the stored size."""
    if source.member is None:
        raw = stack.enter_context(source.path.open("rb"))
        size = source.path.stat().st_size
    else:
        archive = stack.enter_context(zipfile.ZipFile(source.path))
        info = archive.getinfo(source.member)
        raw = stack.enter_context(archive.open(info))
        size = info.file_size
    gzipped = source.basename.lower().endswith(".gz") or raw.peek(2)[:2] == GZIP_MAGIC
    stream = stack.enter_context(gzip.GzipFile(fileobj=raw)) if gzipped else raw
    return raw, stream, size


def _read(name: str, stream, size: int) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{name}: not a readable gzip stream ({err})") from err


def _line_blocks(
    name: str, stream, block_bytes: int, position: Callable[[], int]
) -> Iterator[tuple[bytes, int]]:
    """``stream``'s bytes in blocks ending after a ``\\n`` (but the last), at least one block.

    Each with ``position()`` (where the stored bytes are read to) once it is read.
    """
    carry, blocks = b"", 0
    while True:
        # A block is at most `block_bytes`, unless one line is longer.
        data = _read(
            name, stream, block_bytes - len(carry) if len(carry) < block_bytes else block_bytes
        )
        if not data:
            break
        data = carry + data if carry else data
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # no line break yet: read on
            carry = data
            continue
        carry = data[cut:]
        blocks += 1
        yield (data[:cut] if carry else data), position()
    if carry or not blocks:
        yield carry, position()


def gunzip(name: str, data: bytes) -> bytes:
    """Decompress ``data`` if it is gzip (by ``name``'s suffix or magic bytes)."""
    if not (name.lower().endswith(".gz") or data[:2] == GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{name}: not a readable gzip stream ({err})") from err


def check_member_name(archive: str, member: str) -> None:
    """Refuse a zip member whose name could escape an extraction folder."""
    parts = re.split(r"[/\\]", member)
    if member.startswith(("/", "\\")) or _DRIVE.match(member) or ".." in parts:
        raise ValueError(
            f"{archive}: refusing zip archive with unsafe member name {member!r} "
            "(absolute path or '..' component)"
        )


def zip_members(path: Path, name: str) -> list[str]:
    """Names of the regular-file members of the zip at ``path``, all checked safe."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile as err:
        raise ValueError(f"{name}: not a readable zip archive ({err})") from err
    for info in infos:
        check_member_name(name, info.filename)
    return [info.filename for info in infos if not info.is_dir()]


def resolve(
    inputs: str | Path | Sequence[str | Path],
    *,
    accept: Accept,
    expected: str,
) -> list[Source]:
    """Expand inputs into an ordered list of sources.

    Args:
        inputs: files, directories (their files, not recursively, sorted by
            name), glob patterns (matches sorted) and zip archives (their
            members at any depth, in archive order).
        accept: which base names to keep from directories, globs and archives.
            Files named explicitly are always kept.
        expected: what the reader looks for, for error messages
            (``"clicks_hour_*.csv files"``).

    Raises:
        ValueError: no inputs, an unsafe or unreadable zip archive.
        FileNotFoundError: a path that does not exist, or a directory, glob or
            archive holding nothing that ``accept`` keeps.
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise ValueError(f"No input given: expected {expected}. Received: inputs={inputs!r}")
    sources: list[Source] = []
    for given in inputs:
        sources.extend(_resolve_one(str(given), accept=accept, expected=expected))
    return sources


def _resolve_one(given: str, *, accept: Accept, expected: str) -> list[Source]:
    path = Path(given)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        found = [
            source
            for file in files
            for source in _file_sources(file, str(file), accept=accept, explicit=False)
        ]
        if not found:
            raise FileNotFoundError(f"{given}: directory holds no {expected}")
        return found
    if path.is_file():
        return _file_sources(path, given, accept=accept, explicit=True, expected=expected)
    if _GLOB_CHARS.search(given):
        matches = sorted(glob.glob(given))
        found = [
            source
            for match in matches
            if Path(match).is_file()
            for source in _file_sources(Path(match), match, accept=accept, explicit=False)
        ]
        if not found:
            raise FileNotFoundError(f"{given}: glob matches no {expected}")
        return found
    raise FileNotFoundError(f"{given}: no such file or directory (expected {expected})")


def _file_sources(
    path: Path, name: str, *, accept: Accept, explicit: bool, expected: str = ""
) -> list[Source]:
    if not is_zip(path):
        return [Source(name, path)] if explicit or accept(_strip_gz(path.name)) else []
    members = [
        member
        for member in zip_members(path, name)
        if accept(_strip_gz(PurePosixPath(member).name))
        and not PurePosixPath(member).name.startswith(".")
        and not member.startswith("__MACOSX/")
    ]
    if explicit and not members:
        raise FileNotFoundError(f"{name}: zip archive holds no {expected}")
    return [Source(f"{name}:{member}", path, member) for member in members]


def _strip_gz(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


def is_zip(path: Path) -> bool:
    """True for a zip archive, by suffix or by its magic bytes."""
    if path.suffix.lower() == ".zip":
        return True
    with path.open("rb") as file:
        return file.read(4) == b"PK\x03\x04"


def fingerprint(sources: Iterable[Source]) -> list[dict]:
    """``{"path", "bytes", "sha256"}`` for each distinct physical file, in order."""
    records: dict[Path, dict] = {}
    for source in sources:
        if source.path in records:
            continue
        digest = hashlib.sha256()
        size = 0
        with source.path.open("rb") as file:
            for block in iter(lambda f=file: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        path = source.name.rsplit(":", 1)[0] if source.member else source.name
        records[source.path] = {"path": path, "bytes": size, "sha256": digest.hexdigest()}
    return list(records.values())


def strip_bom(data: bytes) -> bytes:
    """Drop a leading UTF-8 byte-order mark."""
    return data[len(UTF8_BOM) :] if data.startswith(UTF8_BOM) else data


def split_lines(data: bytes) -> list[bytes]:
    """Split on ``\\n`` (a trailing ``\\r`` is dropped); no final empty line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def count_lines(data: bytes) -> int | None:
    """Number of ``\n``-terminated lines in ``data`` (a last unterminated one counts).

    The fast paths use it to prove that row ``i`` of a parsed table is line
    ``i + 1`` of the file (``i + 2`` below a header): a parser that returns as
    many rows as there are lines skipped no blank line and merged no lines.
    Returns ``None`` when a lone ``\r`` (which parsers take as a line break)
    makes the count ambiguous.
    """
    if not data:
        return 0
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def utf8_ok(data: bytes) -> bool:
    """Whether ``data`` decodes as UTF-8 (ASCII is checked first, it is faster)."""
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
