"""Raw click logs -> canonical events -> fixed-length click-sequence examples.

Nothing in this package imports TensorFlow: ``feedrec prepare`` stays light.
"""
