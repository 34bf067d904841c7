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
        dropout: dropout rate inside the blocks and on embeddings.
        pooling: how the sequence becomes one user vector, one of
            ``attention`` (additive attention), ``mean``, ``last``, ``query``
            (a learned query token attending over the clicks).
        item_features: categorical item features to embed (columns of
            ``items.parquet``), e.g. ``("category", "subcategory")``.
        feature_combiner: ``sum`` or ``concat`` (concat is projected back to
            ``embedding_dim``).
        loss: ``softmax`` (clicked item against its negatives) or ``binary``.
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
        object.__setattr__(self, "item_features", tuple(self.item_features))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training split.
        batch_size: examples per step.
        learning_rate: Adam learning rate.
        seed: seeds weight initialisation, shuffling and dropout.
        shuffle_buffer: examples held by the shuffle buffer.
        jit_compile: compile the train step with XLA. Off by default: on CPU,
            XLA's embedding-gradient scatter made a step 5-8x slower
            (measured with TF 2.21 on 2 cores); turn it on for GPUs.
    """

    epochs: int = 3
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 42
    shuffle_buffer: int = 100_000
    jit_compile: bool = False

    def __post_init__(self) -> None:
        _check_positive(self, "epochs", "batch_size", "shuffle_buffer")
        if self.learning_rate <= 0:
            raise ValueError(
                f"`learning_rate` should be positive. Received: learning_rate={self.learning_rate}"
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


def load_config(
    path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None
) -> Config:
    """Read a config file (``.toml``, ``.json``, ``.yaml``/``.yml``) and apply overrides.

    ``overrides`` maps a section to field values, e.g. ``{"train": {"epochs": 2}}``;
    ``None`` values are ignored so CLI flags left unset keep the file's value.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
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
                data = yaml.safe_load(text) or {}
            else:
                raise ValueError(
                    f"{path}: unsupported config format {suffix!r}; expected .toml, .json or .yaml"
                )
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not valid {suffix[1:].upper()}: {err}") from err
    for section, values in (overrides or {}).items():
        merged = dict(data.get(section, {}))
        merged.update({k: v for k, v in values.items() if v is not None})
        data[section] = merged
    return Config.from_dict(data, source=source)


def _section(cls, values: dict[str, Any], source: str):
    if not isinstance(values, dict):
        raise ValueError(f"{source}: expected a table of settings, received {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**values)
