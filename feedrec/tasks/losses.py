"""Loss lookup by the name used in ``ModelConfig.loss``."""

from __future__ import annotations

import keras

from feedrec.tasks.binary_loss import BinaryCandidateLoss
from feedrec.tasks.softmax_loss import SoftmaxCandidateLoss

#: Loss name (``ModelConfig.loss``) -> loss class.
LOSSES = {"softmax": SoftmaxCandidateLoss, "binary": BinaryCandidateLoss}


def build_loss(name: str, **kwargs) -> keras.losses.Loss:
    """The candidate loss called ``name``.

    Args:
        name: str. ``"softmax"`` (:class:`SoftmaxCandidateLoss`) or
            ``"binary"`` (:class:`BinaryCandidateLoss`).
        **kwargs: passed to the loss's constructor (``reduction``, ...).

    Returns:
        A ``keras.losses.Loss``.

    Example:

    >>> type(build_loss("binary")).__name__
    'BinaryCandidateLoss'
    """
    if name not in LOSSES:
        raise ValueError(f"`name` should be one of {tuple(LOSSES)}. Received: name={name!r}")
    return LOSSES[name](**kwargs)
