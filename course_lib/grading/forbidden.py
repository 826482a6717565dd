"""Sets of shortcuts that several lessons refuse, each a ``Forbidden`` that composes with ``|``.

A lesson's exercise lists the sets that would be its answer, e.g. ``SOFTMAX_ROUTES | PYTORCH_SDPA``
for a softmax (attention contains one), and adds its own course_lib references.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.ao.nn import quantizable

from course_lib.shortcuts import Forbidden

_SDPA = "it is PyTorch's scaled dot-product attention"

_MHA = "it is PyTorch's multi-head attention"

# PyTorch's multi-head attention: nn.MultiheadAttention's forward goes through
# F.multi_head_attention_forward (its eval-mode fast path through _native_multi_head_attention);
# the quantizable one computes its attention itself. With identity projections each is plain SDPA.
PYTORCH_MHA = Forbidden(
    functions={F.multi_head_attention_forward: _MHA, torch._native_multi_head_attention: _MHA,
               quantizable.MultiheadAttention.forward: _MHA, quantizable.MultiheadAttention._forward_impl: _MHA},
    operators={"_native_multi_head_attention": _MHA},
    native=("multi_head_attention", "multiheadattention"),
)

# PyTorch's SDPA, as a function and as every ATen operator that computes attention (called through
# torch.ops.aten, or on a path the function mode does not see): SDPA's own kernels, the fused kernels
# below them, the encoder-layer kernel, and multi-head attention (SDPA with identity projections).
# _safe_softmax is private to SDPA's math path: a student's own softmax never reaches it.
PYTORCH_SDPA = Forbidden(
    functions={F.scaled_dot_product_attention: _SDPA},
    operators={
        name: _SDPA
        for name in (
            "scaled_dot_product_attention",
            "_scaled_dot_product_attention_math",
            "_scaled_dot_product_attention_math_for_mps",
            "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_cudnn_attention",
            "_scaled_dot_product_fused_attention_overrideable",
            "_flash_attention_forward",
            "_flash_attention_forward_no_dropout_inplace",
            "_efficient_attention_forward",
            "_cudnn_attention_forward",
            "_triton_scaled_dot_attention",
            "_triton_multi_head_attention",
            "_native_multi_head_attention",
            "_transformer_encoder_layer_fwd",
            "_safe_softmax",
        )
    },
    # Every compiled function named so: SDPA's CPU kernels, the math path, the encoder layer, oneDNN's,
    # the pieces of its CPU kernel's online softmax (the exponentials' sum, the scores' maximum), and
    # oneDNN's graph SDPA kernels.
    native=("attention", "safe_softmax", "transformer_encoder", "reduce_sum_fusion", "reduce_max_fusion",
            "sdpa", "sdp_"),
) | PYTORCH_MHA

# Every route to a softmax that PyTorch offers: the functions, the methods, and their ATen operators
# (sparse, nested and masked tensors included).
SOFTMAX_ROUTES = Forbidden(
    functions={
        torch.softmax: "it is softmax",
        F.softmax: "it is softmax",
        torch.Tensor.softmax: "it is softmax",
        torch.special.softmax: "it is softmax",
        torch._softmax: "it is softmax",
        torch.log_softmax: "exp(log_softmax) is softmax",
        F.log_softmax: "exp(log_softmax) is softmax",
        torch.Tensor.log_softmax: "exp(log_softmax) is softmax",
        torch.special.log_softmax: "exp(log_softmax) is softmax",
        F.gumbel_softmax: "it is a softmax",
        F.softmin: "softmin(-x) is softmax",
    },
    operators={
        **dict.fromkeys(("softmax", "_softmax", "special_softmax", "_masked_softmax", "_sparse_softmax",
                         "_nested_tensor_softmax_with_shape"), "it is softmax"),
        **dict.fromkeys(("log_softmax", "_log_softmax", "special_log_softmax", "_sparse_log_softmax"),
                        "exp(log_softmax) is softmax"),
    },
    # The vectorised kernels, their log and masked forms, oneDNN's primitive, QNNPACK's (named softargmax);
    # the pieces of SDPA's online softmax (the exponentials' sum, the scores' maximum).
    native=("softmax", "softargmax", "reduce_sum_fusion", "reduce_max_fusion"),
)

# PyTorch's FlexAttention: a block mask of a sliding window makes it the whole answer of lesson 07.
PYTORCH_FLEX_ATTENTION = Forbidden(
    operators={"flex_attention": "it is PyTorch's FlexAttention, which computes masked attention for you"},
)

# PyTorch's recurrent cells and layers: the module forwards call these functions (`torch._VF.gru_cell` is
# `torch.gru_cell`), and `torch.ops.aten.*` called directly reaches the function mode as the operator
# itself; the fused kernels behind `nn.LSTM`/`nn.GRU` are caught one level down.
_GRU = "it is PyTorch's GRU"
_LSTM = "it is PyTorch's LSTM"
_RNN_FUNCTIONS = {
    torch.gru_cell: _GRU,
    torch.gru: _GRU,
    torch.lstm_cell: _LSTM,
    torch.lstm: _LSTM,
    torch.rnn_tanh_cell: "it is PyTorch's RNN cell",
    torch.rnn_relu_cell: "it is PyTorch's RNN cell",
}


def _with_aten_operators(functions: dict) -> dict:
    """``functions`` plus their ``torch.ops.aten`` operator packets and every overload of each."""
    found = dict(functions)
    for function, why in functions.items():
        packet = getattr(torch.ops.aten, function.__name__)
        found[packet] = why
        found.update({getattr(packet, overload): why for overload in packet.overloads()})
    return found


PYTORCH_RNN = Forbidden(
    functions=_with_aten_operators(_RNN_FUNCTIONS),
    operators={
        "_thnn_fused_gru_cell": _GRU,
        "_thnn_fused_lstm_cell": _LSTM,
        "mkldnn_rnn_layer": "it is PyTorch's LSTM (oneDNN kernel)",
        "_cudnn_rnn": "it is PyTorch's recurrent layer (cuDNN kernel)",
        "miopen_rnn": "it is PyTorch's recurrent layer (MIOpen kernel)",
        "gru": _GRU,
        "lstm": _LSTM,
    },
    native=("lstm", "gru", "rnn"),  # ATen's cells and layers, the fused cells, oneDNN's RNN primitives
)
