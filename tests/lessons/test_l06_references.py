"""course_lib's MultiHeadAttention held against PyTorch's nn.MultiheadAttention with copied weights
(from_torch): kdim/vdim, padding and causal masks (their polarity translated), cross-attention,
per-head weights, gradients; on a CUDA GPU in float16 and bfloat16 too. Also the head split and
merge, and the causal self-attention layer."""

import pytest
import torch
from torch import nn

from course_lib import runtime
from course_lib.attention import CausalSelfAttention, MultiHeadAttention, merge_heads, split_heads

CUDA = torch.cuda.is_available()


def _torch_mha(E, H, bias=True, kdim=None, vdim=None, dtype=torch.float64, device="cpu", seed=0):
    torch.manual_seed(seed)
    module = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    if bias:  # PyTorch initialises the biases to zero, which would hide a bias copied to the wrong place
        with torch.no_grad():
            module.in_proj_bias.normal_()
            module.out_proj.bias.normal_()
    return module.to(device=device, dtype=dtype).eval()


def _inputs(B, L, S, E, kdim, vdim, dtype=torch.float64, device="cpu", seed=1):
    gen = runtime.generator(seed)
    return tuple(runtime.randn(B, n, width, gen=gen, dtype=dtype).to(device)
                 for n, width in ((L, E), (S, kdim), (S, vdim)))


def _padding(B, S, device="cpu"):
    allowed = torch.ones(B, S, dtype=torch.bool, device=device)  # True = may attend (ours)
    allowed[0, S - 2:] = False
    allowed[-1, 1:3] = False
    return allowed


def _compare(ours, theirs, q, k, v, ours_kwargs, theirs_kwargs, tol):
    out, weights = ours(q, k, v, **ours_kwargs)
    expected, expected_weights = theirs(q, k, v, average_attn_weights=False, **theirs_kwargs)
    torch.testing.assert_close(out, expected, rtol=tol.rtol, atol=tol.atol)
    torch.testing.assert_close(weights, expected_weights, rtol=tol.rtol, atol=tol.atol)
    return out, weights


SETTINGS = [
    # (E, H, bias, kdim, vdim, L, S)
    (16, 4, True, None, None, 7, 7),  # self-attention shape, packed in_proj_weight
    (24, 3, True, 10, 6, 5, 9),  # cross-attention, kdim != vdim != E: separate projection weights
    (12, 2, False, None, None, 6, 4),  # no biases, L > S
    (8, 1, True, None, 5, 3, 3),  # one head
]


@pytest.mark.parametrize("E,H,bias,kdim,vdim,L,S", SETTINGS)
@pytest.mark.parametrize("masks", ["none", "padding", "causal", "padding and causal", "float attn_mask",
                                   "per-head boolean attn_mask"])
def test_matches_nn_multihead_attention(E, H, bias, kdim, vdim, L, S, masks):
    theirs = _torch_mha(E, H, bias, kdim, vdim)
    ours = MultiHeadAttention.from_torch(theirs)
    B = 3
    q, k, v = _inputs(B, L, S, E, kdim or E, vdim or E)
    causal_allowed = torch.ones(L, S, dtype=torch.bool).tril()  # top-left aligned, as is_causal here
    ours_kwargs, theirs_kwargs = {}, {}
    if "padding" in masks:
        ours_kwargs["key_padding_mask"] = _padding(B, S)
        theirs_kwargs["key_padding_mask"] = ~_padding(B, S)  # nn.MultiheadAttention: True = ignore
    if "causal" in masks:
        ours_kwargs["is_causal"] = True
        theirs_kwargs["attn_mask"] = ~causal_allowed  # its is_causal is only a hint beside attn_mask
    if masks == "float attn_mask":
        bias_scores = runtime.randn(L, S, gen=runtime.generator(5), dtype=torch.float64)
        ours_kwargs["attn_mask"] = theirs_kwargs["attn_mask"] = bias_scores
    if masks == "per-head boolean attn_mask":
        allowed = torch.rand(B, H, L, S, generator=runtime.generator(6)) > 0.5
        allowed[..., 0] = True  # every query keeps a key: nn.MultiheadAttention gives NaN otherwise
        ours_kwargs["attn_mask"] = allowed
        theirs_kwargs["attn_mask"] = ~allowed.reshape(B * H, L, S)  # its layout: (B·H, L, S)
    _compare(ours, theirs, q, k, v, ours_kwargs, theirs_kwargs, runtime.tolerance(torch.float64))


def test_our_masks_and_pytorchs_have_opposite_polarity():
    """Passing nn.MultiheadAttention's mask unchanged hides exactly the keys it should keep."""
    theirs = _torch_mha(8, 2)
    ours = MultiHeadAttention.from_torch(theirs)
    q, k, v = _inputs(2, 4, 5, 8, 8, 8)
    ignore = torch.zeros(2, 5, dtype=torch.bool)
    ignore[:, 3:] = True  # PyTorch's polarity: True = ignore keys 3 and 4
    _, weights = ours(q, k, v, key_padding_mask=ignore)
    assert (weights[..., 3:] > 0).all() and (weights[..., :3] == 0).all()
    _, weights = ours(q, k, v, key_padding_mask=~ignore)
    assert (weights[..., 3:] == 0).all()


def test_weights_are_per_head_and_pytorchs_average_is_their_mean():
    theirs = _torch_mha(16, 4)
    ours = MultiHeadAttention.from_torch(theirs)
    q, k, v = _inputs(2, 5, 6, 16, 16, 16)
    _, weights = ours(q, k, v)
    assert weights.shape == (2, 4, 5, 6)
    _, averaged = theirs(q, k, v)  # average_attn_weights=True by default
    torch.testing.assert_close(weights.mean(dim=1), averaged)


def test_a_query_with_every_key_masked_gives_zeros_where_pytorch_gives_nan():
    theirs = _torch_mha(8, 2)
    ours = MultiHeadAttention.from_torch(theirs)
    q, k, v = _inputs(1, 3, 3, 8, 8, 8)
    allowed = torch.ones(3, 3, dtype=torch.bool)
    allowed[1] = False  # query 1 may attend to nothing
    out, weights = ours(q, k, v, attn_mask=allowed)
    assert (weights[0, :, 1] == 0).all()
    bias = ours.out_proj.bias
    torch.testing.assert_close(out[0, 1], bias)  # zeros through W^O: only its bias is left
    expected, _ = theirs(q, k, v, attn_mask=~allowed)
    assert expected[0, 1].isnan().all()


@pytest.mark.parametrize("E,H,bias,kdim,vdim,L,S", SETTINGS[:2])
def test_gradients_match_nn_multihead_attention(E, H, bias, kdim, vdim, L, S):
    theirs = _torch_mha(E, H, bias, kdim, vdim)
    ours = MultiHeadAttention.from_torch(theirs)
    q, k, v = (x.requires_grad_() for x in _inputs(2, L, S, E, kdim or E, vdim or E))
    padding = _padding(2, S)
    grads = []
    for module, kwargs in ((ours, {"key_padding_mask": padding, "is_causal": True}),
                           (theirs, {"key_padding_mask": ~padding,
                                     "attn_mask": ~torch.ones(L, S, dtype=torch.bool).tril()})):
        out, _ = module(q, k, v, **kwargs)
        weighting = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        inputs = (q, k, v, *(p for p in module.parameters()))
        grads.append(torch.autograd.grad((out * weighting).sum(), inputs))
    ours_grads, theirs_grads = grads
    for a, b in zip(ours_grads[:3], theirs_grads[:3]):  # the inputs
        torch.testing.assert_close(a, b)
    ours_named = dict(zip([n for n, _ in ours.named_parameters()], ours_grads[3:]))
    theirs_named = dict(zip([n for n, _ in theirs.named_parameters()], theirs_grads[3:]))
    if kdim is None:
        packed = torch.cat([ours_named[f"{p}_proj.weight"] for p in "qkv"])  # (3E, E)
        torch.testing.assert_close(packed, theirs_named["in_proj_weight"])
    else:
        for p in "qkv":
            torch.testing.assert_close(ours_named[f"{p}_proj.weight"], theirs_named[f"{p}_proj_weight"])
    torch.testing.assert_close(ours_named["out_proj.weight"], theirs_named["out_proj.weight"])
    if bias:
        packed = torch.cat([ours_named[f"{p}_proj.bias"] for p in "qkv"])
        torch.testing.assert_close(packed, theirs_named["in_proj_bias"])


def test_gradcheck_float64():
    torch.manual_seed(3)
    ours = MultiHeadAttention(8, 2, kdim=6).double()
    q, k, v = (x.requires_grad_() for x in _inputs(1, 3, 4, 8, 6, 8))
    padding = _padding(1, 4)
    assert torch.autograd.gradcheck(lambda *x: ours(*x, key_padding_mask=padding)[0], (q, k, v))


def test_split_and_merge_are_inverse_and_keep_each_heads_slice():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)  # (B, L, E)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 2)
    torch.testing.assert_close(heads[1, 2, 0], x[1, 0, 4:6])  # head 2 of token 0: features 4 and 5
    torch.testing.assert_close(merge_heads(heads), x)


def test_each_head_attends_with_its_own_slice_scaled_by_the_head_width():
    """Head h of our module equals softmax(q_h k_hᵀ / √d) on the h-th slice of the projections."""
    torch.manual_seed(4)
    ours = MultiHeadAttention(12, 3).double()
    q, k, v = _inputs(1, 4, 5, 12, 12, 12)
    _, weights = ours(q, k, v)
    Q, K = ours.q_proj(q), ours.k_proj(k)
    for h in range(3):
        scores = Q[0, :, 4 * h:4 * h + 4] @ K[0, :, 4 * h:4 * h + 4].T / 2.0  # √d = √4
        torch.testing.assert_close(weights[0, h], torch.softmax(scores, dim=-1))


def test_causal_self_attention_equals_the_mha_with_its_fused_weights():
    torch.manual_seed(5)
    layer = CausalSelfAttention(16, 4).double()
    mha = MultiHeadAttention(16, 4).double()
    with torch.no_grad():
        for name, W, b in zip("qkv", layer.qkv.weight.chunk(3), layer.qkv.bias.chunk(3)):
            getattr(mha, f"{name}_proj").weight.copy_(W)
            getattr(mha, f"{name}_proj").bias.copy_(b)
        mha.out_proj.load_state_dict(layer.out_proj.state_dict())
    x = _inputs(2, 6, 6, 16, 16, 16)[0]
    torch.testing.assert_close(layer(x), mha(x, x, x, is_causal=True)[0])
    changed = x.clone()
    changed[:, 4:] = 5.0  # the future of position 3
    torch.testing.assert_close(layer(changed)[:, :4], layer(x)[:, :4])


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda m: m(torch.randn(2, 3, 9), torch.randn(2, 4, 8), torch.randn(2, 4, 8)), ValueError, "(B, L, E)"),
        (lambda m: m(torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)), ValueError, "batch first"),
        (lambda m: m(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 5, 8)), ValueError, "share"),
        (lambda m: m(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8),
                     key_padding_mask=torch.ones(2, 3, dtype=torch.bool)), ValueError, "(B, S)"),
        (lambda m: m(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8),
                     attn_mask=torch.ones(4, 3, dtype=torch.bool)), ValueError, "(L, S)"),
        (lambda m: m("x", torch.randn(2, 4, 8), torch.randn(2, 4, 8)), TypeError, "torch.Tensor"),
        (lambda m: MultiHeadAttention(10, 3), ValueError, "divisible"),
        (lambda m: MultiHeadAttention.from_torch(nn.MultiheadAttention(8, 2)), ValueError, "batch_first"),
        (lambda m: split_heads(torch.randn(2, 3, 8), 3), ValueError, "dividing"),
        (lambda m: merge_heads(torch.randn(2, 3, 8)), ValueError, "(B, H, L, d)"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        call(MultiHeadAttention(8, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("E,H,bias,kdim,vdim,L,S", SETTINGS[:2])
def test_gpu_low_precision_matches_nn_multihead_attention(dtype, E, H, bias, kdim, vdim, L, S):
    theirs = _torch_mha(E, H, bias, kdim, vdim, dtype=dtype, device="cuda")
    ours = MultiHeadAttention.from_torch(theirs)
    assert ours.out_proj.weight.dtype == dtype and ours.out_proj.weight.device.type == "cuda"
    q, k, v = _inputs(2, L, S, E, kdim or E, vdim or E, dtype=dtype, device="cuda")
    padding = _padding(2, S, device="cuda")
    causal = torch.ones(L, S, dtype=torch.bool, device="cuda").tril()
    out, weights = _compare(ours, theirs, q, k, v, {"key_padding_mask": padding, "is_causal": True},
                            {"key_padding_mask": ~padding, "attn_mask": ~causal}, runtime.tolerance(dtype, "cuda"))
    assert out.dtype == weights.dtype == dtype
