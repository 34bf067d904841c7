"""Independent initial values for the sublayers of one layer."""

from __future__ import annotations

import keras


def derived_initializer(initializer, index: int):
    """A copy of ``initializer`` that draws its own values.

    A Keras 3 initializer instance draws the same values at every call of the
    same shape: an unseeded one fixes a seed when it is created. So sublayers
    that share one instance start equal -- the query, key and value
    projections of an attention layer would start identical, and a SwiGLU's
    two hidden projections too. Each sublayer takes its own copy instead. An
    unseeded copy gets a fresh seed from Python's ``random`` (which
    ``keras.utils.set_random_seed`` seeds, so runs stay reproducible); a copy
    of a seeded one gets ``seed + index``, so a seeded layer is reproducible
    and its sublayers still differ when each has its own ``index``.

    Args:
        initializer: a Keras initializer (anything else, e.g. a plain
            function, is returned as it is).
        index: the sublayer's number within its layer.

    Example:

    >>> base = keras.initializers.GlorotUniform(seed=7)
    >>> query, key = derived_initializer(base, 0), derived_initializer(base, 1)
    >>> bool((query((2, 2)) == key((2, 2))).numpy().all())
    False
    """
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    config = initializer.get_config()
    seed = config.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        config["seed"] = seed + index
    return initializer.__class__.from_config(config)
