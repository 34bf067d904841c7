"""feedrec tasks: the losses of the click task."""

from feedrec.tasks.binary_loss import BinaryCandidateLoss
from feedrec.tasks.losses import LOSSES, build_loss
from feedrec.tasks.softmax_loss import SoftmaxCandidateLoss

__all__ = ["LOSSES", "BinaryCandidateLoss", "SoftmaxCandidateLoss", "build_loss"]
