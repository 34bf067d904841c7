"""feedrec models: item encoder, user encoder, the recommender."""

from feedrec.models.item_encoder import ItemEncoder
from feedrec.models.recommender import FeedRecModel, build_model
from feedrec.models.user_encoder import POOLING_LAYERS, UserEncoder

__all__ = ["POOLING_LAYERS", "FeedRecModel", "ItemEncoder", "UserEncoder", "build_model"]
