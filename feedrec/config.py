"""Configuration: frozen dataclasses at the edges, loaded from TOML/JSON/YAML.

Only ``feedrec.models.recommender.build_model`` and the training/CLI code read
these objects; layers take explicit keyword arguments.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

POOLING_MODES = ("attention", "mean", "last", "query")
LOSSES = ("softmax", "binary")
FEATURE_COMBINERS = ("sum", "concat")
FEED_FORWARD_ACTIVATIONS = ("gelu", "relu", "swiglu")
MIXED_PRECISION = ("auto", "off", "bfloat16")
DISTRIBUTE = ("none", "mirrored", "multi-worker")


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}` should be a positive integer. Received: {name}={value!r}")


def _check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"`{name}` should be one of {choices}. Received: {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the recommender.

    Attributes:
        history_length: L, the number of most recent clicks the model sees.
        embedding_dim: width of item vectors and of the Transformer.
        num_heads: attention heads per block; must divide ``embedding_dim``.
        num_layers: stacked Transformer blocks.
        feed_forward_dim: hidden width of each block's feed-forward network.
        dropout: dropout rate inside the blocks, on the history's item +
            position vectors (once) and on candidate item vectors.
        pooling: how the sequence becomes one user vector, one of
            ``attention`` (additive attention), ``mean``, ``last``, ``query``
            (a learned query token attending over the clicks).
        item_features: categorical item features to embed (columns of
            ``items.parquet``), e.g. ``("category", "subcategory")``.
        feature_combiner: ``sum`` or ``concat`` (concat is projected back to
            ``embedding_dim``).
        loss: ``softmax`` (clicked item against its negatives) or ``binary``.
        norm_first: pre-norm Transformer blocks plus a final LayerNorm
            (SASRec's layout) instead of post-norm blocks.
        relative_position_bias: a learned attention bias per head for how
            many clicks apart two clicks are (recency relative to each query
            click), on top of the absolute position embeddings.
        gated_residual: sigmoid gates, computed from the residual stream, on
            each block's attention and feed-forward branches (the LiGR layer
            of eSASRec).
        feed_forward_activation: the blocks' feed-forward activation, one of
            ``gelu``, ``relu``, ``swiglu`` (a gated linear unit: two hidden
            projections of ``feed_forward_dim``, ``silu(x W) * (x V)``).
    """

    history_length: int = 50
    embedding_dim: int = 64
    num_heads: int = 2
    num_layers: int = 1
    feed_forward_dim: int = 128
    dropout: float = 0.1
    pooling: str = "attention"
    item_features: tuple[str, ...] = ("category", "subcategory")
    feature_combiner: str = "sum"
    loss: str = "softmax"
    norm_first: bool = False
    relative_position_bias: bool = False
    gated_residual: bool = False
    feed_forward_activation: str = "gelu"

    def __post_init__(self) -> None:
        _check_positive(self, "history_length", "embedding_dim", "num_heads", "feed_forward_dim")
        if self.num_layers < 0:
            raise ValueError(
                f"`num_layers` should be non-negative. Received: num_layers={self.num_layers}"
            )
        if self.embedding_dim % self.num_heads:
            raise ValueError(
                "`embedding_dim` should be divisible by `num_heads`. Received: "
                f"embedding_dim={self.embedding_dim}, num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` should be in [0, 1). Received: dropout={self.dropout}")
        _check_choice(self, "pooling", POOLING_MODES)
        _check_choice(self, "loss", LOSSES)
        _check_choice(self, "feature_combiner", FEATURE_COMBINERS)
        _check_choice(self, "feed_forward_activation", FEED_FORWARD_ACTIVATIONS)
        for name in ("norm_first", "relative_position_bias", "gated_residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"`{name}` should be a bool. Received: {name}={getattr(self, name)!r}"
                )
        object.__setattr__(self, "item_features", tuple(self.item_features))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training split.
        batch_size: examples per step.
        learning_rate: Adam learning rate.
        seed: seeds weight initialisation, shuffling and dropout.
        shuffle_buffer: examples held by the streaming shuffle buffer (bounds
            the input pipeline's memory; see ``feedrec.data.train_batches``).
        jit_compile: compile the train step with XLA: ``True``, ``False`` or
            ``"auto"`` (the default: on with a GPU, off on CPU). On CPU (TF
            2.21, 2 cores) XLA made a step slower: its lowering of dropout's
            random numbers runs single-threaded (see README "Training at
            scale").
        mixed_precision: ``"auto"`` (the default: ``"bfloat16"`` with a GPU,
            ``"off"`` on CPU), ``"bfloat16"`` (bfloat16 compute, float32
            weights; the saved model is float32) or ``"off"``.
        sparse_updates: Adam updates only the rows of the item embedding a
            batch touches ("lazy" Adam: untouched rows keep their moments)
            instead of the whole table every step. Defaults to True.
        steps_per_execution: train steps run per call into the compiled
            function, an integer or ``"auto"`` (the default: 1 on CPU, 32 with
            a GPU, where a step is short enough for Python to matter).
        distribute: ``"none"`` (the default: one device), ``"mirrored"``
            (``tf.distribute.MirroredStrategy`` over all local GPUs) or
            ``"multi-worker"`` (``MultiWorkerMirroredStrategy``, cluster from
            the ``TF_CONFIG`` environment variable). ``batch_size`` is global.
        checkpoint_seconds: seconds between crash-safe checkpoints during an
            epoch (one is also written at every epoch end); 0 writes one after
            every execution. Defaults to 300.
        parallel_reads: readers of ``train.parquet`` working in parallel, each
            on a share of the row groups (``feedrec.data.make_train_dataset``).
            The epoch order depends on it. Defaults to 1; raise it on GPU hosts
            where one reader cannot keep up.
    """

    epochs: int = 3
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 42
    shuffle_buffer: int = 100_000
    jit_compile: bool | str = "auto"
    mixed_precision: str = "auto"
    sparse_updates: bool = True
    steps_per_execution: int | str = "auto"
    distribute: str = "none"
    checkpoint_seconds: float = 300.0
    parallel_reads: int = 1

    def __post_init__(self) -> None:
        _check_positive(self, "epochs", "batch_size", "shuffle_buffer", "parallel_reads")
        if self.learning_rate <= 0:
            raise ValueError(
                f"`learning_rate` should be positive. Received: learning_rate={self.learning_rate}"
            )
        if self.jit_compile not in (True, False, "auto"):
            raise ValueError(
                "`jit_compile` should be true, false or 'auto'. "
                f"Received: jit_compile={self.jit_compile!r}"
            )
        _check_choice(self, "mixed_precision", MIXED_PRECISION)
        _check_choice(self, "distribute", DISTRIBUTE)
        if not isinstance(self.sparse_updates, bool):
            raise ValueError(
                "`sparse_updates` should be true or false. "
                f"Received: sparse_updates={self.sparse_updates!r}"
            )
        if self.steps_per_execution != "auto":
            _check_positive(self, "steps_per_execution")
        seconds = self.checkpoint_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(
                "`checkpoint_seconds` should be a non-negative number. "
                f"Received: checkpoint_seconds={seconds!r}"
            )


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything ``feedrec train`` needs besides the data."""

    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Config:
        unknown = set(data) - {"model", "train"}
        if unknown:
            raise ValueError(
                f"{source}: unknown section(s) {sorted(unknown)}; expected `model` and/or `train`"
            )
        return cls(
            model=_section(ModelConfig, data.get("model", {}), f"{source}: [model]"),
            train=_section(TrainConfig, data.get("train", {}), f"{source}: [train]"),
        )

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


#: Tables of a config file that belong to other commands (``prepare``, the
#: benchmarks); ``feedrec train`` ignores them, so one file can serve all.
OTHER_SECTIONS = ("prepare", "benchmark", "evaluation", "incremental")
#: Every table a config file may have (``sequential``: ``feedrec.sequential``).
SECTIONS = ("model", "train", "sequential", *OTHER_SECTIONS)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The tables of a ``.toml``, ``.json`` or ``.yaml``/``.yml`` config file.

    The one parser of config files: ``feedrec train``, ``feedrec prepare`` and
    the benchmarks all read through it. Tables outside ``SECTIONS`` (a typo such
    as ``[modle]``) and tables that are not tables of settings are refused.
    Raises ``FileNotFoundError`` or a ``ValueError`` naming the file and what is
    wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as err:  # pragma: no cover - depends on environment
                raise ValueError(
                    f"{path}: reading YAML needs PyYAML (`pip install pyyaml`); "
                    "or use a .toml or .json config"
                ) from err
            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as err:
                raise ValueError(f"{path}: not valid YAML: {err}") from err
        else:
            raise ValueError(
                f"{path}: unsupported config format {suffix!r}; expected .toml, .json or .yaml"
            )
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid {suffix[1:].upper()}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected tables of settings at the top level, received {data!r}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: [{name}] should be a table of settings, received {table!r}")
    return data


def config_from_tables(
    data: dict[str, Any],
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    source: str = "config",
) -> Config:
    """A :class:`Config` from a config file's tables (``read_config_file``).

    The tables of other commands (``OTHER_SECTIONS``) are ignored; ``overrides``
    update the sections, None values ignored (CLI flags left unset keep the
    file's value).
    """
    data = {k: v for k, v in data.items() if k not in OTHER_SECTIONS}
    for section, values in (overrides or {}).items():
        data[section] = {
            **data.get(section, {}),
            **{k: v for k, v in values.items() if v is not None},
        }
    return Config.from_dict(data, source=source)


def load_config(
    path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None
) -> Config:
    """Read a config file (``.toml``, ``.json``, ``.yaml``/``.yml``) and apply overrides.

    ``overrides`` maps a section to field values, e.g. ``{"train": {"epochs": 2}}``;
    ``None`` values are ignored so CLI flags left unset keep the file's value. The
    tables of other commands (``OTHER_SECTIONS``) are ignored.
    """
    data = read_config_file(path) if path is not None else {}
    if "sequential" in data:
        raise ValueError(
            f"{path}: has a [sequential] table (the next-item objective); read it with "
            "feedrec.sequential.load_sequential_config, as `feedrec train` does"
        )
    source = str(path) if path is not None else "defaults"
    return config_from_tables(data, overrides, source=source)


def _section(cls, values: dict[str, Any], source: str):
    if not isinstance(values, dict):
        raise ValueError(f"{source}: expected a table of settings, received {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**values)
