"""The attention family, one module per mechanism, all importable from here (DESIGN.md §4).

* ``sdpa`` — softmax, attention weights and scaled dot-product attention (lesson 05);
  the mechanisms to come (multi-head, sliding window, flash) build on it.
"""

from course_lib.attention.sdpa import attention_weights, scaled_dot_product_attention, softmax

__all__ = ["softmax", "attention_weights", "scaled_dot_product_attention"]
