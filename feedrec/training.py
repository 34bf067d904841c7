"""Batch training from a prepared data directory to a run directory."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from feedrec.config import Config
from feedrec.data import load_split, make_dataset, split_path
from feedrec.runs import atomic_directory, read_json, write_json

logger = logging.getLogger(__name__)


def feature_tables(data_dir: str | Path, names: tuple[str, ...]):
    """Item -> feature-index tables for ``names`` present in ``items.parquet``.

    Returns ``(tables, vocab_sizes)``; features the data does not have are skipped.
    """
    data_dir = Path(data_dir)
    items = pq.read_table(data_dir / "items.parquet")
    manifest = read_json(data_dir / "manifest.json")
    sizes = manifest.get("feature_vocab_sizes", {})
    tables, vocab_sizes = {}, {}
    for name in names:
        if name in items.column_names and sizes.get(name, 0) > 1:
            tables[name] = items.column(name).to_numpy().astype(np.int32)
            vocab_sizes[name] = int(sizes[name])
        else:
            logger.info("item feature %r not in %s; skipped", name, data_dir)
    return tables, vocab_sizes


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: Config | None = None,
    *,
    overwrite: bool = False,
    verbose: int | None = None,
) -> dict:
    """Train a recommender on ``DATA_DIR/train.parquet`` and write ``RUN_DIR``.

    Validation (impression AUC etc. on ``valid.parquet``, when present and not
    empty) runs after every epoch; the weights of the best epoch by validation
    AUC are kept.

    Returns:
        The training history: per-epoch loss and validation metrics.
    """
    import keras

    from feedrec.models.recommender import build_model
    from feedrec.tasks import build_loss

    config = config or Config()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{manifest_path} not found: DATA_DIR must be written by `feedrec prepare`"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists and is not empty; pass --overwrite")
    manifest = read_json(manifest_path)
    model_config, train_config = config.model, config.train

    train_batch = load_split(data_dir, "train", model_config.history_length)
    if len(train_batch) == 0:
        raise ValueError(f"{split_path(data_dir, 'train')} has no examples to train on")
    valid_batch = None
    if (data_dir / "valid.parquet").exists():
        valid_batch = load_split(data_dir, "valid", model_config.history_length)
        valid_batch = valid_batch if len(valid_batch) else None
    logger.info(
        "training on %d examples (%d candidates each), validating on %d",
        len(train_batch),
        train_batch.candidates.shape[1],
        len(valid_batch or []),
    )

    keras.utils.set_random_seed(train_config.seed)
    tables, vocab_sizes = feature_tables(data_dir, model_config.item_features)
    model = build_model(
        model_config,
        int(manifest["num_items"]),
        tables,
        vocab_sizes,
        num_id_items=manifest.get("num_id_items"),  # absent: every item has an ID row
    )
    model.compile(
        optimizer=keras.optimizers.Adam(train_config.learning_rate),
        loss=build_loss(model_config.loss),
        jit_compile=train_config.jit_compile,
    )
    dataset = make_dataset(
        train_batch, train_config.batch_size, shuffle=True, seed=train_config.seed
    )

    callbacks = []
    if valid_batch is not None:
        callbacks.append(ValidationCallback(valid_batch))
    if verbose is None:  # a live progress bar on a terminal, one line per epoch otherwise
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()
    fit = model.fit(
        dataset, epochs=train_config.epochs, callbacks=callbacks, verbose=verbose, shuffle=False
    )
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    history["train_seconds"] = time.perf_counter() - started
    if callbacks:
        history["best_epoch"] = callbacks[0].best_epoch + 1

    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save(tmp / "model.keras")
        write_json(tmp / "config.json", config.to_dict())
        write_json(
            tmp / "data.json",
            {
                "data_dir": str(data_dir.resolve()),
                "num_items": int(manifest["num_items"]),
                "feature_vocab_sizes": vocab_sizes,
                "format": manifest.get("format"),
                "train_examples": len(train_batch),
            },
        )
        (tmp / "items.parquet").write_bytes((data_dir / "items.parquet").read_bytes())
        write_json(tmp / "history.json", history)
    logger.info("wrote run directory %s", out_dir)
    return history


def ValidationCallback(valid_batch):  # noqa: N802 - factory that returns a keras Callback
    """A callback computing impression metrics on ``valid_batch`` after each epoch.

    Adds ``val_auc``, ``val_mrr``, ``val_ndcg@5``, ``val_ndcg@10`` to the logs and
    restores the weights of the best epoch (by ``val_auc``) when training ends.
    """
    import keras

    from feedrec.evaluation import predict_scores
    from feedrec.metrics import impression_metrics

    class _Validation(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best_auc, self.best_epoch, self.best_weights = -np.inf, -1, None

        def on_epoch_end(self, epoch, logs=None):
            metrics = impression_metrics(
                predict_scores(self.model, valid_batch), valid_batch.labels.astype(np.int64)
            )
            for name in ("auc", "mrr", "ndcg@5", "ndcg@10"):
                if logs is not None:
                    logs[f"val_{name}"] = metrics[name]
            if metrics["auc"] > self.best_auc:
                self.best_auc, self.best_epoch = metrics["auc"], epoch
                self.best_weights = self.model.get_weights()

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return _Validation()
