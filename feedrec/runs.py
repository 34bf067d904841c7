"""The run directory written by ``feedrec train`` and read by evaluate/export.

Layout::

    RUN_DIR/
      config.json      the Config used (model + train sections)
      model.keras      the trained model (Keras 3 format, best epoch)
      data.json        where the data came from + its vocabulary sizes
      items.parquet    copy of the item vocabulary (raw id <-> index, features)
      history.json     per-epoch training loss and validation metrics
      logs/            TensorBoard event files (train/, validation/)
      checkpoints/     the last training checkpoint (model + optimizer state)

A run directory appears complete or not at all: it is written under a
temporary name beside ``RUN_DIR`` and renamed into place at the end.

While training runs, its crash-safe state lives beside it in
``RUN_DIR.partial/`` (:func:`partial_dir`): ``state.json`` (what is being
trained), ``checkpoints/`` (written atomically every few minutes and at
every epoch end), the best epoch's weights and ``logs/``. It lacks
``model.keras``, so it never passes for a run. Re-running the same
``feedrec train`` command resumes from it; it is removed once ``RUN_DIR``
is complete. Workers other than the chief of a multi-worker cluster keep
theirs in ``RUN_DIR.worker-<index>.partial/``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

RUN_FILES = ("config.json", "model.keras", "data.json", "items.parquet")
CHECKPOINTS = "checkpoints"
LOGS = "logs"


def partial_dir(run_dir: str | Path, worker: int = 0, is_chief: bool = True) -> Path:
    """Where an unfinished training into ``run_dir`` keeps its state.

    ``RUN_DIR.partial`` for the chief (or a single process), and
    ``RUN_DIR.worker-<worker>.partial`` for the other workers of a cluster.
    """
    run_dir = Path(run_dir)
    suffix = ".partial" if is_chief else f".worker-{worker}.partial"
    return run_dir.with_name(run_dir.name + suffix)


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False):
    """Yield a temporary directory that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{path} already exists and is not empty; pass --overwrite to replace it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def null_if_not_finite(data: Any) -> Any:
    """``data`` with every NaN or infinite float (nested in dicts and lists) as None.

    JSON has no NaN: ``json.dumps`` writes a bare ``NaN`` that strict parsers
    (JavaScript's ``JSON.parse``, ``jq``) refuse; None is written ``null``.
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: null_if_not_finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [null_if_not_finite(value) for value in data]
    return data


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    missing = [name for name in RUN_FILES if not (run_dir / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir} is not a feedrec run directory (missing {', '.join(missing)}); "
            "create one with `feedrec train DATA_DIR --out RUN_DIR`"
        )
    return run_dir


def load_run(run_dir: str | Path):
    """Load ``(model, config, data_info)`` from a run directory."""
    import keras

    import feedrec.models  # noqa: F401  registers the serializable classes
    import feedrec.tasks  # noqa: F401
    from feedrec.config import Config

    run_dir = check_run_dir(run_dir)
    config = Config.from_dict(
        read_json(run_dir / "config.json"), source=str(run_dir / "config.json")
    )
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    return model, config, read_json(run_dir / "data.json")
