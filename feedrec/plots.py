"""Matplotlib figures of the exploration notebooks: thin wrappers, one figure kind each.

Every function draws data computed elsewhere (``pipelines.stats``,
``feedrec.explore``, a run's ``history.json``, ``feedrec.evaluation``) with
labelled axes and a title, and returns what it drew on: the ``Axes`` when it
takes an ``ax`` (a new figure when ``ax`` is None), the ``Figure`` when it
draws several panels. matplotlib is imported inside the functions, so
importing this module costs nothing and ``feedrec`` does not depend on it
(``pip install feedrec[notebooks]`` brings it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

METRICS = ("auc", "mrr", "ndcg@5", "ndcg@10")
SCORERS = ("model", "popularity", "random")
#: Histories up to this length get item names as tick labels in attention maps.
MAX_NAMED_POSITIONS = 20


def _axes(ax, figsize=(6.4, 4.0)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def plot_history_lengths(lengths, history_length: int, ax=None, bins: int = 50):
    """Histogram of history lengths (before truncation) with ``L`` marked.

    Args:
        lengths: the ``history_length`` column of ``pipelines.stats.history_lengths``
            (or the whole frame).
        history_length: int. ``L``, drawn as a vertical line.
    """
    if isinstance(lengths, pd.DataFrame):
        lengths = lengths["history_length"]
    values = np.asarray(lengths)
    ax = _axes(ax)
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(history_length, color="tab:red", linestyle="--", label=f"L = {history_length}")
    ax.set_yscale("log")
    ax.set_xlabel("clicks in the history (before truncation)")
    ax.set_ylabel("examples (log scale)")
    ax.set_title("History length per example")
    ax.legend()
    return ax


def plot_truncation_curve(curve: pd.DataFrame, history_length: int | None = None, ax=None):
    """Shares of examples padded / truncated and of clicks dropped, as functions of ``L``."""
    ax = _axes(ax)
    x = curve["history_length"]
    ax.plot(x, curve["padded"], marker="o", label="padded (fewer than L clicks)")
    ax.plot(x, curve["truncated"], marker="o", label="truncated (more than L clicks)")
    ax.plot(x, curve["clicks_dropped"], marker="o", linestyle=":", label="history clicks dropped")
    if history_length is not None:
        ax.axvline(
            history_length, color="gray", linestyle="--", label=f"chosen L = {history_length}"
        )
    ax.set_ylim(0, 1)
    ax.set_xlabel("L, clicks kept per history")
    ax.set_ylabel("share")
    ax.set_title("Padding and truncation at L")
    ax.legend()
    return ax


def plot_popularity(popularity: pd.DataFrame, ax=None):
    """Clicks per item against popularity rank, log-log (items with at least one click)."""
    ax = _axes(ax)
    clicked = popularity[popularity["clicks"] > 0]
    ax.loglog(clicked["rank"], clicked["clicks"], marker=".", linestyle="none", markersize=3)
    ax.set_xlabel("item rank (1 = most clicked)")
    ax.set_ylabel("clicks")
    ax.set_title("Item popularity: the long tail")
    return ax


def plot_click_concentration(popularity: pd.DataFrame, ax=None):
    """Cumulative share of clicks against the share of items, most clicked first."""
    ax = _axes(ax)
    ax.plot(popularity["item_fraction"], popularity["cumulative_share"], label="this log")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="every item equally clicked")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("share of items (most clicked first)")
    ax.set_ylabel("share of all clicks")
    ax.set_title("Click concentration")
    ax.legend()
    return ax


def plot_clicks_over_time(counts: pd.DataFrame, ax=None, column: str = "clicks"):
    """A column of ``pipelines.stats.clicks_over_time`` (clicks by default) per period."""
    ax = _axes(ax, figsize=(8.0, 3.5))
    ax.plot(counts["time"], counts[column])
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(f"{column} per period")
    ax.set_title(f"{column.capitalize()} over time")
    ax.figure.autofmt_xdate()
    return ax


def plot_item_age(ages: pd.DataFrame, ax=None, bins: int = 48, max_hours: float | None = None):
    """Histogram of the item age at click time (``pipelines.stats.item_age_at_click``)."""
    ax = _axes(ax)
    hours = ages["age_hours"].dropna().to_numpy()
    if max_hours is not None:
        hours = hours[hours <= max_hours]
    ax.hist(hours, bins=bins, color="tab:green", alpha=0.8)
    if len(hours):
        median = float(np.median(hours))
        ax.axvline(median, color="black", linestyle="--", label=f"median {median:.1f} h")
        ax.legend()
    ax.set_xlabel("item age at click (hours since first appearance)")
    ax.set_ylabel("clicks")
    ax.set_title("How fresh clicked items are")
    return ax


def plot_learning_curves(history: Mapping[str, Sequence[float]], metrics: Sequence[str] = METRICS):
    """Training loss and validation metrics per epoch (a run's ``history.json``)."""
    import matplotlib.pyplot as plt

    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    loss = list(history["loss"])
    epochs = np.arange(1, len(loss) + 1)
    loss_ax.plot(epochs, loss, marker="o", label="training loss")
    if "val_loss" in history:
        loss_ax.plot(epochs, history["val_loss"], marker="o", label="validation loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Training loss")
    loss_ax.legend()
    for name in metrics:
        if f"val_{name}" in history:
            metric_ax.plot(epochs, history[f"val_{name}"], marker="o", label=name)
    if history.get("best_epoch"):
        metric_ax.axvline(history["best_epoch"], color="gray", linestyle="--", label="best epoch")
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel("validation metric")
    metric_ax.set_title("Validation metrics")
    metric_ax.legend()
    for ax in (loss_ax, metric_ax):
        ax.set_xticks(epochs)
    return fig


def plot_metrics(results: Mapping[str, Mapping[str, float]], ax=None, metrics=METRICS):
    """Grouped bars: each metric for the model and the baselines (``evaluate_run``'s result)."""
    ax = _axes(ax)
    scorers = [name for name in SCORERS if name in results] + [
        name for name in results if name not in SCORERS and isinstance(results[name], Mapping)
    ]
    width = 0.8 / max(len(scorers), 1)
    x = np.arange(len(metrics))
    for i, name in enumerate(scorers):
        values = [results[name][metric] for metric in metrics]
        bars = ax.bar(x + (i - (len(scorers) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1)
    ax.set_xlabel("metric (per impression, averaged)")
    ax.set_ylabel("value")
    ax.set_title("Model against popularity and random")
    ax.legend()
    return ax


def plot_setting_comparison(
    table: pd.DataFrame,
    setting: str,
    metric: str = "val_auc",
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    ax=None,
):
    """The metric of each value of ``setting`` (from ``feedrec.explore.compare_settings``).

    Points joined by a line, each labelled with its value; ``baselines``
    (``feedrec.explore.baseline_metrics``) are horizontal lines. The y axis
    is zoomed on the values drawn, since settings often differ by little.
    """
    ax = _axes(ax)
    labels = [str(value) for value in table[setting]]
    values = table[metric].to_numpy(dtype=float)
    ax.plot(labels, values, marker="o", color="tab:blue", label="model")
    for label, value in zip(labels, values, strict=True):
        ax.annotate(
            f"{value:.3f}", (label, value), textcoords="offset points", xytext=(0, 6), ha="center"
        )
    plain = metric.removeprefix("val_")
    styles = {"popularity": "--", "random": ":"}
    drawn = list(values)
    for name, scores in (baselines or {}).items():
        ax.axhline(scores[plain], color="gray", linestyle=styles.get(name, "-."), label=name)
        drawn.append(scores[plain])
    finite = [v for v in drawn if np.isfinite(v)]
    if finite:
        low, high = min(finite), max(finite)
        margin = max(0.1 * (high - low), 0.01)
        ax.set_ylim(low - margin, high + 2 * margin)
    ax.set_xlabel(setting)
    ax.set_ylabel(metric)
    ax.set_title(f"Effect of {setting} on {metric}")
    ax.legend()
    return ax


def _position_labels(user_attention, item_names) -> list[str]:
    history = np.asarray(user_attention.history)
    length = len(history)
    names_ok = item_names is not None and length <= MAX_NAMED_POSITIONS
    labels = []
    for position, item in enumerate(history):
        if position >= user_attention.history_length:
            labels.append("pad")
        elif names_ok:
            labels.append(str(item_names[int(item)]))
        else:
            labels.append(str(position))
    return labels


def plot_attention(user_attention, item_names=None, layer: int = 0, title: str | None = None):
    """Heat maps of one user's self-attention (one per head) and pooling weights.

    Zero is white, so padded positions (zero weight by construction) show as
    blank rows and columns beyond the dashed line at ``history_length``.

    Args:
        user_attention: a :class:`feedrec.explore.UserAttention`.
        item_names: optional mapping or sequence, item index -> name, used as
            tick labels when ``L <= MAX_NAMED_POSITIONS``.
        layer: int. The Transformer block to show. Defaults to 0.
        title: str. Figure title; defaults to the user and history length.
    """
    import matplotlib.pyplot as plt

    attention = np.asarray(user_attention.attention)
    heads = attention.shape[1] if attention.shape[0] else 0
    length = len(user_attention.pooling)
    real = user_attention.history_length
    labels = _position_labels(user_attention, item_names)
    positions = np.arange(length)
    ticks = positions if length <= MAX_NAMED_POSITIONS else positions[::5]
    tick_labels = [labels[t] for t in ticks]
    named = any(label not in ("pad", str(t)) for t, label in zip(ticks, tick_labels, strict=True))
    columns = max(heads, 1)
    side = 5.5 if named else 4.5
    fig, axes = plt.subplot_mosaic(
        [[f"head{h}" for h in range(columns)], ["pooling"] * columns],
        figsize=(side * columns + 1.0, side + (3.0 if named else 1.8)),
        height_ratios=[side, 1.2],
        layout="constrained",
    )
    image = None
    for head in range(heads):
        ax = axes[f"head{head}"]
        weights = attention[layer, head]
        image = ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=max(float(weights.max()), 1e-9))
        for line in (ax.axhline, ax.axvline):
            line(real - 0.5, color="tab:red", linestyle="--", linewidth=1)
        if real < length:
            middle = (real - 0.5 + length - 0.5) / 2
            ax.text(middle, middle, "padding:\nzero weight", ha="center", va="center", color="gray")
        ax.set_xticks(ticks, tick_labels, rotation=90, fontsize=7)
        ax.set_yticks(ticks, tick_labels, fontsize=7)
        ax.set_xlabel("key position (attended click)")
        ax.set_ylabel("query position (click)")
        ax.set_title(f"Self-attention, block {layer}, head {head}")
    if image is not None:
        fig.colorbar(
            image, ax=[axes[f"head{h}"] for h in range(heads)], shrink=0.7, label="attention weight"
        )
    else:
        axes["head0"].set_axis_off()
        axes["head0"].set_title("no self-attention blocks")
    pooling_ax = axes["pooling"]
    pooling_ax.bar(positions, user_attention.pooling, color="tab:orange")
    pooling_ax.axvline(
        real - 0.5, color="tab:red", linestyle="--", linewidth=1, label="end of real clicks"
    )
    pooling_ax.set_xlim(-0.5, length - 0.5)
    pooling_ax.set_ylim(0, max(float(np.max(user_attention.pooling, initial=0.0)) * 1.1, 1e-3))
    pooling_ax.set_xticks(ticks, tick_labels, rotation=90, fontsize=7)
    pooling_ax.set_xlabel("history position (oldest first)")
    pooling_ax.set_ylabel("pooling weight")
    pooling_ax.set_title("Pooling weights (one per position)")
    pooling_ax.legend(fontsize=7)
    user = user_attention.user_id if user_attention.user_id is not None else user_attention.row
    fig.suptitle(title or f"User {user}: {real} click(s) in a window of L = {length}")
    return fig


def plot_score_trajectory(
    scores: np.ndarray,
    candidate_names: Sequence[str],
    labels: Sequence[int] | None = None,
    ax=None,
):
    """Each candidate's score as clicks are added to the history.

    Args:
        scores: float ``(clicks + 1, candidates)`` from
            ``feedrec.explore.scores_as_history_grows``.
        candidate_names: one name per candidate (legend).
        labels: optional 1 (clicked: solid line) / 0 (shown: dashed) per candidate.
    """
    ax = _axes(ax, figsize=(8.0, 4.0))
    scores = np.asarray(scores)
    steps = np.arange(scores.shape[0])
    for column, name in enumerate(candidate_names):
        clicked = labels is not None and labels[column] == 1
        ax.plot(
            steps,
            scores[:, column],
            linestyle="-" if clicked else "--",
            linewidth=2 if clicked else 1,
            label=f"{name}{' (clicked)' if clicked else ''}",
        )
    ax.set_xlabel("clicks in the history (oldest first)")
    ax.set_ylabel("score (logit)")
    ax.set_title("Candidate scores as the history grows")
    ax.legend(fontsize=7, loc="best")
    return ax
