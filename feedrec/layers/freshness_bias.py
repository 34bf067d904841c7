"""A learned score offset per item from how much and how recently it was clicked."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from feedrec.layers.arguments import check_bool, check_positive_int


def log2_buckets(values, num_buckets: int) -> np.ndarray:
    """Bucket ``0`` for values below 1, then ``1 + floor(log2(value))``, capped.

    ``0 -> 0``, ``1 -> 1``, ``2..3 -> 2``, ``4..7 -> 3``, ...; values beyond the
    last bucket fall into it. NaN counts as 0.
    """
    values = np.asarray(values, dtype=np.float64)
    # value = m * 2**e with 0.5 <= m < 1: e = 1 + floor(log2(value)) exactly for value >= 1,
    # e <= 0 below 1 and 0 for 0 and NaN; capped first so that inf lands in the last bucket
    _, exponents = np.frexp(np.minimum(values, 2.0**num_buckets))
    return np.clip(exponents, 0, num_buckets - 1).astype(np.int32)


@keras.saving.register_keras_serializable(package="feedrec")
class FreshnessBias(keras.layers.Layer):
    """A learned logit offset per item from its recent clicks and its age.

    News goes stale within hours, and an item's ID embedding cannot say how
    fresh it is *now*. This layer adds to an item's score a learned scalar for
    its recent-click count plus one for its age, both bucketised on a log2
    scale (:func:`log2_buckets`): ``bias(i) = w_clicks[b(clicks_i)] +
    w_age[a(age_i)]``, where age bucket 0 is "never clicked" and an age in
    periods since the item's first click (from 0) falls in ``b(age + 1)``.
    With ``log_clicks=True`` a learned slope on ``log(1 + clicks_i)`` is added:
    the buckets step at powers of two (16-31 clicks share one), the slope keeps
    ordering items within a bucket, which is where the most clicked items sit.
    All weights start at zero, so a fresh layer changes no score.

    The counts and ages are *state*, not inputs: the caller sets them with
    :meth:`update` as time moves (e.g. before training on, and before scoring,
    each hour of a log), and they are saved with the layer. Training sees the
    same state as scoring for the same period, so the layer learns how much
    freshness is worth against the user-item match.

    Args:
        num_items: int. Size of the item vocabulary (padding and OOV included).
        num_buckets: int. Buckets per feature (default 16: counts and ages up
            to 2^14 share the last bucket).
        log_clicks: bool. Add ``w * log(1 + clicks_i)`` with a learned ``w``
            (default False).
        **kwargs: base layer arguments (``name``, ``dtype``, ...).

    Call arguments:
        items: int tensor of item indices, any shape.

    Returns:
        Float tensor of the same shape: each item's offset.

    Example:

    >>> layer = FreshnessBias(num_items=5)
    >>> layer.update(recent_clicks=[0, 0, 3, 0, 40], age=[None, None, 0, None, 7])
    >>> keras.ops.convert_to_numpy(layer(np.array([2, 4]))).tolist()
    [0.0, 0.0]
    """

    def __init__(
        self, num_items: int, num_buckets: int = 16, log_clicks: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_items", num_items)
        check_positive_int("num_buckets", num_buckets)
        check_bool("log_clicks", log_clicks)
        if num_buckets < 2:
            raise ValueError(f"`num_buckets` should be at least 2. Received: {num_buckets}")
        self.num_items = num_items
        self.num_buckets = num_buckets
        self.log_clicks = log_clicks

    def build(self, items_shape=None) -> None:
        buckets = (self.num_buckets,)
        self.click_weights = self.add_weight(buckets, initializer="zeros", name="click_weights")
        self.age_weights = self.add_weight(buckets, initializer="zeros", name="age_weights")
        self.click_buckets = self.add_weight(
            (self.num_items,),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name="click_buckets",
        )
        self.age_buckets = self.add_weight(
            (self.num_items,),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name="age_buckets",
        )
        if self.log_clicks:
            self.log_click_weight = self.add_weight(
                (), initializer="zeros", name="log_click_weight"
            )
            self.log_click_values = self.add_weight(
                (self.num_items,),
                initializer="zeros",
                trainable=False,
                name="log_click_values",
            )
        super().build(items_shape)

    def update(self, recent_clicks, age) -> None:
        """Set each item's state.

        Args:
            recent_clicks: ``(num_items,)`` clicks in the recent period
                (e.g. the last hour).
            age: ``(num_items,)`` periods since the item's first click
                (0 = first clicked in the latest period), None or NaN for an
                item never clicked.
        """
        if not self.built:
            self.build()
        click_buckets, age_buckets, log_clicks = self._features(recent_clicks, age, batched=False)
        self.click_buckets.assign(click_buckets)
        self.age_buckets.assign(age_buckets)
        if self.log_clicks:
            self.log_click_values.assign(log_clicks)

    def offsets(self, recent_clicks, age) -> np.ndarray:
        """The offsets that a state would give, without setting it (numpy).

        For states that differ per example, e.g. the clicks in the hour before
        each example's own time rather than before a shared slot start.

        Args:
            recent_clicks: ``(..., num_items)`` clicks in the recent period.
            age: ``(..., num_items)`` periods since each item's first click,
                NaN for an item never clicked.

        Returns:
            float32 ``(..., num_items)``: each item's offset under that state,
            what :meth:`update` then a call on every item would give.
        """
        if not self.built:
            self.build()
        click_weights = keras.ops.convert_to_numpy(self.click_weights).astype(np.float32)
        age_weights = keras.ops.convert_to_numpy(self.age_weights).astype(np.float32)
        slope = np.float32(0)
        if self.log_clicks:
            slope = np.float32(keras.ops.convert_to_numpy(self.log_click_weight))
        clicks = np.asarray(recent_clicks)
        if np.issubdtype(clicks.dtype, np.integer):
            # integer counts: one table of offsets per count present, then one gather
            clicks, ages = self._checked(clicks, age, batched=True)
            counts = np.arange(int(clicks.max(initial=0)) + 1)
            table = click_weights[log2_buckets(counts, self.num_buckets)]
            if self.log_clicks:
                table = table + np.log1p(counts).astype(np.float32) * slope
            out = age_weights[self._age_buckets(ages)]
            out += table[clicks]
            return out
        click_buckets, age_buckets, log_clicks = self._features(recent_clicks, age, batched=True)
        out = click_weights[click_buckets] + age_weights[age_buckets]
        if self.log_clicks:
            out += log_clicks * slope
        return out

    def _checked(self, recent_clicks, age, batched: bool) -> tuple[np.ndarray, np.ndarray]:
        """``recent_clicks`` (its dtype kept where it is numeric) and ``age`` (float64), with
        their shapes and signs checked.

        ``batched``: the arrays may have leading dimensions before ``num_items``.
        """
        clicks = np.asarray(recent_clicks)
        if not np.issubdtype(clicks.dtype, np.number):
            clicks = clicks.astype(np.float64)
        ages = np.asarray(age, dtype=np.float64)  # None -> NaN
        for name, values in (("recent_clicks", clicks), ("age", ages)):
            shape = values.shape[-1:] if batched else values.shape
            if shape != (self.num_items,):
                expected = f"(..., {self.num_items})" if batched else f"({self.num_items},)"
                raise ValueError(f"`{name}` should have shape {expected}. Received: {values.shape}")
            if (values < 0).any():
                raise ValueError(
                    f"`{name}` should be non-negative. Received: min={np.nanmin(values)}"
                )
        return clicks, ages

    def _features(self, recent_clicks, age, batched: bool):
        """Click buckets, age buckets (int32) and ``log1p(clicks)`` (float32), checked.

        ``batched``: the arrays may have leading dimensions before ``num_items``.
        """
        clicks, ages = self._checked(recent_clicks, age, batched)
        clicks = clicks.astype(np.float64, copy=False)
        log_clicks = np.log1p(np.nan_to_num(clicks)).astype(np.float32) if self.log_clicks else None
        return log2_buckets(clicks, self.num_buckets), self._age_buckets(ages), log_clicks

    def _age_buckets(self, ages: np.ndarray) -> np.ndarray:
        """An item clicked has age + 1 >= 1, so bucket >= 1; NaN (never clicked) -> 0."""
        return log2_buckets(ages + 1, self.num_buckets)

    def call(self, items):
        items = ops.cast(items, "int32")
        clicks = ops.take(self.click_weights, ops.take(self.click_buckets, items))
        ages = ops.take(self.age_weights, ops.take(self.age_buckets, items))
        if not self.log_clicks:
            return clicks + ages
        slope = ops.take(self.log_click_values, items) * self.log_click_weight
        return clicks + ages + slope

    def compute_output_shape(self, items_shape):
        return tuple(items_shape)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_items": self.num_items,
            "num_buckets": self.num_buckets,
            "log_clicks": self.log_clicks,
        }
