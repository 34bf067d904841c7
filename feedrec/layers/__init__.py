"""feedrec layers: masked attention, Transformer block, positions, pooling."""

from feedrec.layers.attention_pooling import AttentionPooling
from feedrec.layers.freshness_bias import FreshnessBias
from feedrec.layers.last_click_pooling import LastClickPooling
from feedrec.layers.masked_attention import MaskedMultiHeadAttention
from feedrec.layers.masked_pooling import MaskedPooling
from feedrec.layers.masking import causal_mask, large_negative, masked_softmax
from feedrec.layers.mean_pooling import MeanPooling
from feedrec.layers.position_embedding import PositionEmbedding
from feedrec.layers.query_pooling import QueryPooling
from feedrec.layers.transformer_block import TransformerBlock
from feedrec.layers.truncation import truncate_history

__all__ = [
    "AttentionPooling",
    "FreshnessBias",
    "LastClickPooling",
    "MaskedMultiHeadAttention",
    "MaskedPooling",
    "MeanPooling",
    "PositionEmbedding",
    "QueryPooling",
    "TransformerBlock",
    "causal_mask",
    "large_negative",
    "masked_softmax",
    "truncate_history",
]
