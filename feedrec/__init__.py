"""feedrec: a masked self-attention recommender for click-sequence feeds.

Importing ``feedrec`` does no work and does not import TensorFlow; the model
code lives in ``feedrec.models`` / ``feedrec.layers`` and is imported on use.
"""

__version__ = "0.1.0"

# Item index conventions shared by the pipeline and the model (see README,
# "One padding convention").
PADDING_INDEX = 0
OOV_INDEX = 1
