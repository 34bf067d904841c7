"""feedrec.allocator: glibc keeps large blocks in the heap once tuned, and users can opt out."""

import ctypes
import os
import platform
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedrec import allocator, cli
from pipelines.schema import EXAMPLES

GLIBC = platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL(None), "mallinfo2")
needs_glibc = pytest.mark.skipif(not GLIBC, reason="needs glibc >= 2.33 (mallopt, mallinfo2)")

# A fresh interpreter: tune or not, then (with "-generator") pull an element
# from a tf.data.Dataset.from_generator, or (with "-stream") from feedrec's
# streaming training input over the examples file argv[2]; then malloc 20 MiB
# and print how many new blocks glibc mapped for it (mallinfo2's hblks), and
# tune_malloc's answer.
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from feedrec.allocator import tune_malloc

    fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields.split()]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    tuned = tune_malloc() if sys.argv[1].startswith("tune") else None
    if sys.argv[1].endswith("-generator"):
        import tensorflow as tf

        one = tf.data.Dataset.from_generator(
            lambda: iter([1]), output_signature=tf.TensorSpec((), tf.int32)
        )
        assert [int(x) for x in one] == [1]
    if sys.argv[1].endswith("-stream"):
        from feedrec.data import make_train_dataset

        stream = make_train_dataset(
            sys.argv[2], history_length=4, num_candidates=2, batch_size=2
        )
        assert len(list(stream)) == 2
    before = libc.mallinfo2().hblks
    block = libc.malloc(20 << 20)
    mapped = libc.mallinfo2().hblks - before
    libc.free(block)
    print(tuned, mapped)
    """
)


def probe(mode: str, *args: str, **env) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if k not in allocator._USER_VARIABLES}
    environ.pop(allocator.OPT_OUT, None)
    environ.pop("GLIBC_TUNABLES", None)
    environ.pop("LD_PRELOAD", None)  # a preloaded allocator is not glibc's malloc
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode, *args],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    tuned, mapped = result.stdout.split()
    return tuned, int(mapped)


@needs_glibc
def test_tuned_malloc_serves_large_blocks_from_the_heap():
    assert probe("plain") == ("None", 1)  # glibc's default: a 20 MiB block is its own mapping
    assert probe("tune") == ("True", 0)


@needs_glibc
def test_the_streaming_input_keeps_the_settings(tmp_path):
    # TensorFlow resets the mmap threshold when a from_generator dataset pulls
    # its first element: a 20 MiB block is its own mapping again...
    pytest.importorskip("tensorflow")
    assert probe("tune-generator") == ("True", 1)
    # ...so feedrec's streaming input (a generator) sets them again
    path = tmp_path / "train.parquet"
    histories = [[2, 3], [4], [], [5, 6, 7]]
    table = pa.table(
        {
            "example_key": [f"k{i}" for i in range(4)],
            "user_id": ["u"] * 4,
            "time": list(range(4)),
            "impression_id": [None] * 4,
            "session_id": [None] * 4,
            "history": histories,
            "history_length": [len(h) for h in histories],
            "candidates": [[8, 9]] * 4,
            "labels": [[1, 0]] * 4,
        },
        schema=EXAMPLES,
    )
    pq.write_table(table, path)
    assert probe("tune-stream", str(path)) == ("True", 0)
    assert probe("plain-stream", str(path)) == ("None", 1)


def test_reapply_does_nothing_unless_tuned(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", pytest.fail)  # never reached
    assert allocator.reapply() is False


@needs_glibc
@pytest.mark.parametrize(
    "env",
    [
        {"FEEDREC_TUNE_MALLOC": "0"},
        {"MALLOC_TOP_PAD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
    ],
)
def test_the_users_settings_win(env):
    assert probe("tune", **env) == ("False", 1)


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({}, None),
        ({"FEEDREC_TUNE_MALLOC": "1"}, None),
        ({"FEEDREC_TUNE_MALLOC": "off"}, "FEEDREC_TUNE_MALLOC=off"),
        ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_ARENA_MAX is set"),
        ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX"}, None),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1"}, "GLIBC_TUNABLES sets glibc.malloc"),
        ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "LD_PRELOAD loads an allocator"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "LD_PRELOAD loads an allocator"),
        ({"LD_PRELOAD": "/usr/lib/libfaketime.so"}, None),
    ],
)
def test_user_choice(env, reason):
    assert allocator.user_choice(env) == reason


def test_not_glibc_changes_nothing(monkeypatch):
    monkeypatch.delenv(allocator.OPT_OUT, raising=False)
    monkeypatch.setattr(allocator, "user_choice", lambda environ=None: None)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.setattr(allocator.ctypes, "CDLL", pytest.fail)  # never reached
    assert allocator.tune_malloc() is False


@pytest.mark.parametrize(
    ("argv", "tuned"),
    [
        (["train", "{missing}", "--out", "{tmp}/run"], True),
        (["evaluate", "{missing}", "{missing}"], True),
        (["prepare", "--format", "events", "{missing}", "--out", "{tmp}/data"], False),
        (["export", "{missing}", "--out", "{tmp}/export"], False),
    ],
)
def test_cli_tunes_malloc_for_tensorflow_work_only(monkeypatch, tmp_path, argv, tuned):
    calls = []
    monkeypatch.setattr(allocator, "tune_malloc", lambda: calls.append(True) or True)
    missing = str(tmp_path / "missing")
    args = [a.format(missing=missing, tmp=tmp_path) for a in argv]
    assert cli.main(args) == 2  # the missing input is a user error, after the tuning
    assert calls == ([True] if tuned else [])
