"""Constructor argument checks whose messages quote the received value."""

from __future__ import annotations


def check_positive_int(name: str, value, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive int (or None if allowed)."""
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        qualifier = " or None" if allow_none else ""
        raise ValueError(
            f"`{name}` should be a positive integer{qualifier}. Received: {name}={value!r}"
        )


def check_bool(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is a bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` should be a bool. Received: {name}={value!r}")


def check_rate(name: str, value) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1`` (a dropout rate)."""
    if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` should be in [0, 1). Received: {name}={value!r}")


def check_activation(name: str, value, extra: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` unless ``value`` names a Keras activation or one of ``extra``.

    Only names are accepted: a layer's config must serialise them.
    """
    import keras

    if isinstance(value, str) and value in extra:
        return
    known = isinstance(value, str)
    if known:
        try:
            keras.activations.get(value)
        except ValueError:
            known = False
    if not known:
        names = f" or one of {extra}" if extra else ""
        raise ValueError(
            f"`{name}` should be the name of a Keras activation{names}. Received: {name}={value!r}"
        )
