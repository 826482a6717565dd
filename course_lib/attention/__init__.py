"""The attention family, one module per mechanism, all importable from here (DESIGN.md §4).

* ``sdpa`` — softmax, attention weights and scaled dot-product attention (lesson 05);
* ``mha`` — multi-head attention, its head split and merge, a causal self-attention layer (lesson 06);
* ``sliding_window`` — banded O(L·w) attention, its mask, Mistral's rolling-buffer KV cache (lesson 07);
* ``flash`` — FlashAttention in PyTorch tiles, with a recomputing backward (lesson 08); its Triton
  kernel (``flash_triton``, optional: Triton is the ``[triton]`` extra) serves capable GPUs.
"""

from course_lib.attention.flash import flash_attention, online_softmax_stats
from course_lib.attention.mha import CausalSelfAttention, MultiHeadAttention, merge_heads, split_heads
from course_lib.attention.sdpa import attention_weights, scaled_dot_product_attention, softmax
from course_lib.attention.sliding_window import (
    RollingKVCache,
    decode_step,
    dense_window_mask,
    rolling_buffer_update,
    sliding_window_attention,
    sliding_window_mask,
)

__all__ = [
    "softmax",
    "attention_weights",
    "scaled_dot_product_attention",
    "MultiHeadAttention",
    "CausalSelfAttention",
    "split_heads",
    "merge_heads",
    "sliding_window_attention",
    "sliding_window_mask",
    "dense_window_mask",
    "rolling_buffer_update",
    "RollingKVCache",
    "decode_step",
    "flash_attention",
    "online_softmax_stats",
]
