"""glibc ``malloc`` settings for a process that runs TensorFlow on CPU.

TensorFlow's CPU kernels take their output buffers from the C library's
``malloc``. A training step allocates and frees the same large buffers every
step: the full-softmax logits of MovieLens-1M at batch 32 are 1,600 x 3,418
floats (22 MB), their gradient as many again. With glibc's defaults those
blocks are mapped with ``mmap`` and unmapped on ``free`` (or, once served from
a heap, given back when the heap's free top grows past the trim threshold), so
every step faults the same memory back in and the kernel zero-fills it: on the
2-core VM of the benchmarks, 40-60 ms of system time in a 130-150 ms step.

:func:`tune_malloc` keeps that memory in the process: blocks up to 32 MiB
(glibc's largest mmap threshold on 64-bit) come from the heap, and the heap
keeps 64 MiB of padding and trims only past 128 MiB free. Measured on that
VM (``benchmarks/train_throughput.py`` and the ML-1M config, README "Training
at scale"): system time 6-8 ms per step, the ML-1M step 1.35-1.5x faster,
``feedrec train`` on the demo's data 1.75-1.9x and the standard configuration
of ``benchmarks/train_throughput.py`` 1.15-1.25x, for 30-180 MB more peak RSS.

TensorFlow resets the mmap threshold itself, once per process, when a
``tf.data.Dataset.from_generator`` pulls its first element, which undid the
tuning for ``feedrec train`` on examples (its input streams through a
generator); the generator now sets them again (:func:`reapply`).

``feedrec train``, ``evaluate`` and ``demo`` call it before TensorFlow runs
(``prepare`` does not: its Arrow buffers come from Arrow's own allocator, and
its RSS is a benchmark target). A script or notebook calls it once at the
start. It changes nothing, and says so by returning False, where the C
library is not glibc, where the user chose allocator settings already
(``MALLOC_*_`` or ``GLIBC_TUNABLES=glibc.malloc...`` in the environment, an
allocator in ``LD_PRELOAD``), or with ``FEEDREC_TUNE_MALLOC=0``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

MIB = 1 << 20
# mallopt(3) parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
# What tune_malloc sets: (parameter, name, value)
SETTINGS = (
    (M_MMAP_THRESHOLD, "M_MMAP_THRESHOLD", 32 * MIB),
    (M_TOP_PAD, "M_TOP_PAD", 64 * MIB),
    (M_TRIM_THRESHOLD, "M_TRIM_THRESHOLD", 128 * MIB),
)
OPT_OUT = "FEEDREC_TUNE_MALLOC"
_applied = False  # whether tune_malloc set SETTINGS in this process (for reapply)
_USER_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_ARENA_MAX",
)


def user_choice(environ=None) -> str | None:
    """Why the allocator is the user's to set (a short reason), or None."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{OPT_OUT}={environ[OPT_OUT]}"
    for name in _USER_VARIABLES:
        if name in environ:
            return f"{name} is set"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    preload = environ.get("LD_PRELOAD", "")
    if "malloc" in preload:  # libtcmalloc, libjemalloc, libmimalloc, ...
        return "LD_PRELOAD loads an allocator"
    return None


def reapply() -> bool:
    """Set :data:`SETTINGS` again if :func:`tune_malloc` set them in this process.

    TensorFlow calls ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` itself, once per
    process, when a ``tf.data.Dataset.from_generator`` pulls its first element
    (against a memory growth of generator pipelines under Python 3.11; its log
    line names M_TRIM_THRESHOLD), which puts every block over 128 KiB back in
    its own mapping. A pipeline that feeds TensorFlow from a generator calls
    this from inside the generator, after that call:
    ``feedrec.data.make_train_dataset`` does, once per pass. Cheap, and a no-op
    (False) where the process was not tuned.
    """
    return _applied and _apply()


def _apply() -> bool:
    libc = ctypes.CDLL(None)
    for parameter, name, value in SETTINGS:
        if libc.mallopt(parameter, value) != 1:  # mallopt returns 1 on success
            logger.debug("mallopt(%s, %d) was refused", name, value)
            return False
    return True


def tune_malloc() -> bool:
    """Apply :data:`SETTINGS` with ``mallopt``; True if they were applied.

    Process-wide and not undone; call it once, before the work (it does not
    touch TensorFlow, so distribution strategies and thread settings can still
    be set after it). See the module's docstring for why and when it does
    nothing, and :func:`reapply` for pipelines fed from a Python generator.
    """
    reason = user_choice()
    if reason is None and platform.libc_ver()[0] != "glibc":
        reason = "the C library is not glibc"
    if reason is not None:
        logger.debug("malloc settings left as they are: %s", reason)
        return False
    global _applied
    if not _apply():
        return False
    _applied = True
    logger.debug("malloc settings: %s", ", ".join(f"{n}={v}" for _, n, v in SETTINGS))
    return True
