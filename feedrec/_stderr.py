"""Filter TensorFlow's native start-up noise out of the process's stderr.

TensorFlow 2.21 prints lines such as the oneDNN notice, "Could not find cuda
drivers" and abseil's "All log messages before absl::InitializeLog()" from
C++ before its logging is initialised, where ``TF_CPP_MIN_LOG_LEVEL`` does not
reach them (tensorflow/tensorflow#100442). The CLI routes file descriptor 2
through a pipe and drops exactly those lines; everything else, partial lines
(progress bars) included, is forwarded at once. Used only by the CLI: the
library never touches the process's file descriptors.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_platform|cpu_feature_guard|cuda_executor"
    rb"|cuda_dnn|cuda_blas|cuda_fft|gpu_device)\.cc:\d+\]"
    rb"|To enable the following instructions: .* rebuild TensorFlow)"
)
_PREFIXES = (b"WARNING: All log", b"I0000", b"W0000", b"E0000", b"To enable the following")

_installed = False


def filter_tensorflow_noise() -> None:
    """Install the filter on fd 2 (once per process); restored at exit."""
    global _installed
    if _installed or os.name != "posix":
        return
    _installed = True
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_pump, args=(read_end, real), daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except ValueError:
            pass
        os.dup2(real, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=2)

    atexit.register(restore)


def _pump(read_end: int, real: int) -> None:
    pending = b""
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
        # forward a partial line now unless it may be the start of a noise line
        if pending and not any(pending.startswith(p[: len(pending)]) for p in _PREFIXES):
            out += pending
            pending = b""
        if out:
            os.write(real, out)
    if pending and not NOISE.match(pending):
        os.write(real, pending)
    os.close(read_end)
