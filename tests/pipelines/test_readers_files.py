"""File discovery, zip safety, gzip, fingerprints and line helpers of the readers."""

from __future__ import annotations

import gzip
import hashlib
import zipfile

import pytest

from pipelines.readers import _files


def _accept_csv(name: str) -> bool:
    return name.endswith(".csv")


def _names(sources) -> list[str]:
    return [source.name for source in sources]


def test_resolve_file_directory_glob_and_zip_in_order(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    for name in ("b.csv", "a.csv", "notes.txt", ".hidden.csv"):
        (folder / name).write_text("x\n")
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("clicks/z.csv", "x\n")
        bundle.writestr("clicks/readme.md", "x\n")
        bundle.writestr("clicks/y.csv.gz", gzip.compress(b"x\n"))
    single = tmp_path / "single.dat"
    single.write_text("x\n")

    sources = _files.resolve(
        [str(folder), str(tmp_path / "logs" / "*.csv"), archive, single],
        accept=_accept_csv,
        expected="csv files",
    )

    assert _names(sources) == [
        f"{folder}/a.csv",
        f"{folder}/b.csv",
        f"{folder}/a.csv",
        f"{folder}/b.csv",
        f"{archive}:clicks/z.csv",
        f"{archive}:clicks/y.csv.gz",
        str(single),  # named explicitly, so kept whatever its suffix
    ]
    assert sources[5].read_bytes() == b"x\n"  # gunzipped by suffix
    assert sources[5].stem == "y.csv"


def test_resolve_accepts_a_single_path(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("x\n")
    assert _names(_files.resolve(path, accept=_accept_csv, expected="csv")) == [str(path)]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda tmp: tmp / "missing.csv", "missing.csv: no such file or directory"),
        (lambda tmp: tmp, "directory holds no csv files"),
        (lambda tmp: str(tmp / "*.csv"), r"\*\.csv: glob matches no csv files"),
    ],
    ids=["missing-file", "empty-directory", "empty-glob"],
)
def test_resolve_missing_inputs_raise_file_not_found(tmp_path, make, match):
    with pytest.raises(FileNotFoundError, match=match):
        _files.resolve([make(tmp_path)], accept=_accept_csv, expected="csv files")


def test_resolve_no_inputs_is_a_value_error():
    with pytest.raises(ValueError, match=r"No input given.*Received: inputs=\[\]"):
        _files.resolve([], accept=_accept_csv, expected="csv files")


def test_zip_without_wanted_members_is_file_not_found(tmp_path):
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("readme.md", "x")
    with pytest.raises(FileNotFoundError, match="empty.zip: zip archive holds no csv files"):
        _files.resolve([archive], accept=_accept_csv, expected="csv files")


@pytest.mark.parametrize(
    "member",
    ["../evil.csv", "clicks/../../evil.csv", "/etc/evil.csv", "..\\evil.csv", "C:\\evil.csv"],
    ids=["dotdot", "nested-dotdot", "absolute", "backslash-dotdot", "drive"],
)
def test_zip_slip_members_refuse_the_whole_archive(tmp_path, member):
    archive = tmp_path / "slip.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("good.csv", "x\n")
        bundle.writestr(zipfile.ZipInfo(member), "pwned\n")
    with pytest.raises(ValueError, match="refusing zip archive with unsafe member name"):
        _files.resolve([archive], accept=_accept_csv, expected="csv files")
    assert not (tmp_path.parent / "evil.csv").exists()


def test_not_a_zip_is_a_value_error(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="fake.zip: not a readable zip archive"):
        _files.resolve([fake], accept=_accept_csv, expected="csv files")


def test_gunzip_by_magic_bytes_and_by_suffix():
    packed = gzip.compress(b"a,b\n1,2\n")
    assert _files.gunzip("log.csv", packed) == b"a,b\n1,2\n"  # magic bytes, no suffix
    assert _files.gunzip("log.csv", b"a,b\n") == b"a,b\n"  # plain text untouched
    with pytest.raises(ValueError, match="log.csv.gz: not a readable gzip stream"):
        _files.gunzip("log.csv.gz", b"a,b\n")


def test_fingerprint_counts_an_archive_once(tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("a.csv", "1\n")
        bundle.writestr("b.csv", "2\n")
    plain = tmp_path / "c.csv"
    plain.write_bytes(b"3\n")
    sources = _files.resolve([archive, plain], accept=_accept_csv, expected="csv")

    records = _files.fingerprint(sources)

    raw = archive.read_bytes()
    assert records == [
        {"path": str(archive), "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()},
        {"path": str(plain), "bytes": 2, "sha256": hashlib.sha256(b"3\n").hexdigest()},
    ]


def test_read_all_yields_every_source_in_order(tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for index in range(12):
            bundle.writestr(f"f{index:02d}.csv", f"{index}\n")
    sources = _files.resolve([archive], accept=_accept_csv, expected="csv")
    read = [(source.name, data) for source, data in _files.read_all(sources, ahead=3)]
    assert read == [(f"{archive}:f{index:02d}.csv", f"{index}\n".encode()) for index in range(12)]
    stopped = _files.read_all(sources, ahead=3)
    assert next(stopped)[1] == b"0\n"
    stopped.close()  # a reader stopping at a bad row: read-ahead is cancelled, no error


@pytest.mark.parametrize(
    "data, lines",
    [
        (b"", 0),
        (b"a", 1),
        (b"a\n", 1),
        (b"a\nb", 2),
        (b"a\r\nb\r\n", 2),
        (b"a\n\nb\n", 3),  # blank lines count: parsers skip them, so the counts disagree
        (b"a\rb\n", None),  # a lone CR is a line break to some parsers
    ],
)
def test_count_lines(data, lines):
    assert _files.count_lines(data) == lines


def test_split_lines_drops_carriage_returns_and_the_final_empty_line():
    assert _files.split_lines(b"a\r\nb\n\nc\n") == [b"a", b"b", b"", b"c"]
    assert _files.strip_bom(b"\xef\xbb\xbfuser") == b"user"
    assert _files.utf8_ok("é".encode()) and not _files.utf8_ok(b"\xff")


def _content(tmp_path):
    """A text of lines of growing length (one longer than the blocks), as several sources."""
    text = b"".join(b"%d,%s\n" % (row, b"x" * (row % 13)) for row in range(300))
    text += b"y" * 500 + b"\nlast line without a break"
    (tmp_path / "a.csv").write_bytes(text)
    (tmp_path / "b.csv.gz").write_bytes(gzip.compress(text))
    (tmp_path / "empty.csv").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "c.zip", "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("m/c.csv", text)
        bundle.writestr("m/d.csv.gz", gzip.compress(text))
        bundle.writestr("m/small.csv", b"h\n1\n")
    inputs = [tmp_path / name for name in ("a.csv", "b.csv.gz", "c.zip", "empty.csv")]
    return text, _files.resolve(inputs, accept=_accept_csv, expected="csv")


@pytest.mark.parametrize("block_bytes", [1, 64, 4096, 1 << 20])
def test_read_blocks_cut_sources_after_line_breaks(tmp_path, block_bytes):
    text, sources = _content(tmp_path)

    blocks = list(_files.read_blocks(sources, block_bytes=block_bytes))

    by_source = {}
    for block in blocks:
        by_source.setdefault(block.source.name, []).append(block)
    assert list(by_source) == _names(sources)  # in order, each source once
    for source in sources:
        parts = by_source[source.name]
        assert b"".join(part.data for part in parts) == source.read_bytes()
        assert [part.index for part in parts] == list(range(len(parts)))
        assert [part.last for part in parts] == [False] * (len(parts) - 1) + [True]
        assert all(part.data.endswith(b"\n") for part in parts[:-1])
        # A block is at most block_bytes, unless it is one line longer than that.
        assert all(len(p.data) <= block_bytes or p.data.count(b"\n") <= 1 for p in parts)
        done = [part.done for part in parts]
        assert done == sorted(done) and done[-1] == 1.0 and max(done[:-1] or [0]) < 1.0


def test_read_blocks_reads_small_or_chosen_sources_whole(tmp_path):
    text, sources = _content(tmp_path)
    whole = {str(tmp_path / "c.zip") + ":m/c.csv"}

    blocks = list(
        _files.read_blocks(sources, block_bytes=100, whole=lambda source: source.name in whole)
    )

    counts = {}
    for block in blocks:
        counts[block.source.name] = counts.get(block.source.name, 0) + 1
    assert counts[str(tmp_path / "c.zip") + ":m/c.csv"] == 1  # chosen
    assert counts[str(tmp_path / "c.zip") + ":m/small.csv"] == 1  # 4 bytes <= 100
    assert counts[str(tmp_path / "a.csv")] > 10


def test_sizes_give_stored_and_content_bytes(tmp_path):
    text, sources = _content(tmp_path)
    sizes = dict(zip(_names(sources), _files.sizes(sources), strict=True))
    with zipfile.ZipFile(tmp_path / "c.zip") as bundle:
        member = bundle.getinfo("m/c.csv")
    assert sizes[str(tmp_path / "a.csv")] == _files.Size(len(text), len(text))
    assert sizes[str(tmp_path / "b.csv.gz")].content is None  # gzip hides it
    assert sizes[str(tmp_path / "c.zip") + ":m/c.csv"] == _files.Size(
        member.compress_size, len(text)
    )
    assert sizes[str(tmp_path / "c.zip") + ":m/d.csv.gz"].content is None
    assert _files.head(sources[1], 5) == text[:5]


def test_read_blocks_reports_a_broken_gzip_stream(tmp_path):
    (tmp_path / "bad.csv.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    sources = _files.resolve([tmp_path / "bad.csv.gz"], accept=_accept_csv, expected="csv")
    with pytest.raises(ValueError, match="not a readable gzip stream"):
        list(_files.read_blocks(sources, block_bytes=8))
    with pytest.raises(ValueError, match="block_bytes=0"):
        list(_files.read_blocks(sources, block_bytes=0))
