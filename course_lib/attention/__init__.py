"""The attention family, one module per mechanism, all importable from here (DESIGN.md §4).

* ``sdpa`` — softmax, attention weights and scaled dot-product attention (lesson 05);
* ``flash`` — FlashAttention in PyTorch tiles, with a recomputing backward (lesson 08); its Triton
  kernel (``flash_triton``, optional: Triton is the ``[triton]`` extra) serves capable GPUs.
"""

from course_lib.attention.flash import flash_attention, online_softmax_stats
from course_lib.attention.sdpa import attention_weights, scaled_dot_product_attention, softmax

__all__ = ["softmax", "attention_weights", "scaled_dot_product_attention", "flash_attention", "online_softmax_stats"]
