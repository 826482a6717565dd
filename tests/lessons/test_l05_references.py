"""The references of course_lib.attention, held against torch.nn.functional.scaled_dot_product_attention,
on the CPU and, where there is one, on a CUDA GPU (where PyTorch's backend is pinned to its math
path: its default cuDNN backend does not give zeros for a fully masked row)."""

import contextlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from course_lib import runtime
from course_lib.attention import attention_weights, scaled_dot_product_attention, softmax

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

SHAPES = [  # (batch dims, L, S, E, Ev)
    ((), 1, 1, 1, 1),
    ((), 5, 5, 8, 8),
    ((), 3, 7, 4, 6),
    ((2,), 7, 3, 16, 5),
    ((2, 3), 6, 9, 8, 4),
    ((2, 1, 3), 4, 4, 2, 3),
]
DTYPES = [torch.float64, torch.float32, torch.bfloat16]


def _qkv(batch, L, S, E, Ev, dtype, seed=0, device="cpu"):
    gen = runtime.generator(seed)
    return (
        runtime.randn(*batch, L, E, gen=gen, dtype=dtype, device=device),
        runtime.randn(*batch, S, E, gen=gen, dtype=dtype, device=device),
        runtime.randn(*batch, S, Ev, gen=gen, dtype=dtype, device=device),
    )


def pytorch_sdpa(q, k, v, **options):
    """PyTorch's SDPA; on CUDA its math backend, which gives zeros for a fully masked row."""
    pinned = sdpa_kernel(SDPBackend.MATH) if q.device.type == "cuda" else contextlib.nullcontext()
    with pinned:
        return F.scaled_dot_product_attention(q, k, v, **options)


def _masks(batch, L, S, dtype, seed=0):
    gen = runtime.generator(seed + 100)
    allowed = torch.rand(*batch, L, S, generator=gen) > 0.3
    allowed[..., 0] = True
    with_empty_row = allowed.clone()
    with_empty_row[..., 0, :] = False  # a query that may attend to nothing
    additive = runtime.randn(L, S, gen=gen, dtype=dtype)  # broadcast over the batch
    additive_inf = torch.zeros(L, S, dtype=dtype).masked_fill(~allowed.reshape(-1, L, S)[0], float("-inf"))
    return {
        "none": None,
        "bool": allowed,
        "bool with an empty row": with_empty_row,
        "bool broadcast (1, S)": allowed.reshape(-1, L, S)[0, :1],
        "float": additive,
        "float with -inf": additive_inf,
    }


def _tol(dtype, device="cpu"):
    return runtime.tolerance(dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dtype", list(itertools.product(SHAPES, DTYPES)))
@pytest.mark.parametrize("mask_name", ["none", "bool", "bool with an empty row", "bool broadcast (1, S)", "float", "float with -inf"])
def test_sdpa_matches_torch_with_masks(shape, dtype, mask_name, device):
    batch, L, S, E, Ev = shape
    q, k, v = _qkv(batch, L, S, E, Ev, dtype, device=device)
    mask = _masks(batch, L, S, dtype)[mask_name]
    mask = mask.to(device) if mask is not None else None
    expected = pytorch_sdpa(q, k, v, attn_mask=mask)
    actual = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert actual.shape == expected.shape and actual.dtype == dtype
    tol = _tol(dtype, device)
    torch.testing.assert_close(actual, expected, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dtype", list(itertools.product(SHAPES, DTYPES)))
@pytest.mark.parametrize("scale", [None, 0.3, 2.0, 0.0, -0.5])
def test_sdpa_matches_torch_causal_and_scale(shape, dtype, scale, device):
    batch, L, S, E, Ev = shape
    q, k, v = _qkv(batch, L, S, E, Ev, dtype, seed=1, device=device)
    for is_causal in (False, True):
        expected = pytorch_sdpa(q, k, v, is_causal=is_causal, scale=scale)
        actual = scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
        tol = _tol(dtype, device)
        torch.testing.assert_close(actual, expected, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("device", DEVICES)
def test_float16_scores_beyond_65504_stay_finite_as_in_pytorch(device):
    """Does a raw q·k above float16's largest number (65504) break the reference where PyTorch is
    fine? q and k are scaled by √scale before the product, as PyTorch's math path does."""
    q = torch.full((1, 2, 64), 40.0, dtype=torch.float16, device=device)  # raw q·k = 102400
    k = torch.full((1, 3, 64), 40.0, dtype=torch.float16, device=device)
    v = runtime.randn(1, 3, 4, gen=runtime.generator(0), dtype=torch.float16, device=device)
    ours = scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, pytorch_sdpa(q, k, v), rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_float32_mask_is_accepted_with_other_dtypes_as_pytorch_does(dtype, device):
    q, k, v = _qkv((2,), 4, 5, 8, 3, dtype, device=device)
    bias = runtime.randn(4, 5, gen=runtime.generator(3), device=device)  # float32
    ours = scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert ours.dtype == dtype
    tol = _tol(dtype, device)
    torch.testing.assert_close(ours, pytorch_sdpa(q, k, v, attn_mask=bias), rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize(
    "q_batch,mask_shape",
    [((2,), (7, 1, 4, 5)), ((2,), (1, 1, 4, 5)), ((), (1, 4, 5)), ((2, 3), (1, 2, 1, 4, 5)), ((2, 3), (7, 1, 4, 5))],
)
def test_a_mask_that_adds_dimensions_is_rejected_as_pytorch_does(q_batch, mask_shape):
    q, k, v = _qkv(q_batch, 4, 5, 8, 3, torch.float32)
    mask = torch.ones(mask_shape, dtype=torch.bool)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with pytest.raises(ValueError, match="must broadcast to the scores' shape"):
        scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("mask_dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64])
def test_other_mask_dtypes_are_rejected_as_pytorch_does(mask_dtype):
    q, k, v = _qkv((2,), 4, 5, 8, 3, torch.float32)
    mask = torch.zeros(4, 5, dtype=mask_dtype)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with pytest.raises(TypeError, match="attn_mask must be boolean"):
        scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_causal_is_top_left_when_L_differs_from_S():
    q, k, v = _qkv((), 3, 6, 4, 4, torch.float64)
    weights = attention_weights(q, k, is_causal=True)
    assert torch.equal(weights > 0, torch.ones(3, 6, dtype=torch.bool).tril())


def test_weights_rows_sum_to_one_and_empty_rows_are_zero():
    q, k, _ = _qkv((2,), 4, 5, 8, 1, torch.float64)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2] = False
    weights = attention_weights(q, k, attn_mask=mask)
    sums = weights.sum(-1)
    assert torch.allclose(sums[:, [0, 1, 3]], torch.ones(2, 3, dtype=torch.float64))
    assert torch.equal(weights[:, 2], torch.zeros(2, 5, dtype=torch.float64))


def test_batch_dimensions_broadcast_like_torch():
    gen = runtime.generator(3)
    q = runtime.randn(3, 5, 8, gen=gen)
    k = runtime.randn(2, 1, 7, 8, gen=gen)
    v = runtime.randn(2, 1, 7, 4, gen=gen)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("dim", [-1, 0, 1, -2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_matches_torch(dim, dtype):
    x = runtime.randn(3, 4, 5, gen=runtime.generator(0), dtype=dtype) * 30
    tol = _tol(dtype)
    torch.testing.assert_close(softmax(x, dim=dim), torch.softmax(x, dim=dim), rtol=tol.rtol, atol=tol.atol)


def test_softmax_is_stable_and_handles_empty_rows():
    assert torch.allclose(softmax(torch.tensor([2.0, 1.0, 0.1])), torch.tensor([0.659001, 0.242433, 0.098566]), atol=1e-6)
    big = torch.tensor([[1000.0, 999.0], [-1000.0, -1001.0]])
    torch.testing.assert_close(softmax(big), torch.softmax(big, dim=-1))
    empty = torch.full((2, 3), float("-inf"))
    empty[0, 1] = 0.0
    out = softmax(empty)
    assert torch.equal(out, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))


def test_gradients_match_torch():
    q, k, v = _qkv((2,), 4, 6, 8, 3, torch.float64, seed=5)
    mask = _masks((2,), 4, 6, torch.float64)["bool"]
    for kwargs in ({}, {"attn_mask": mask}, {"is_causal": True}, {"scale": 0.5}):
        mine = [t.clone().requires_grad_() for t in (q, k, v)]
        theirs = [t.clone().requires_grad_() for t in (q, k, v)]
        scaled_dot_product_attention(*mine, **kwargs).pow(2).sum().backward()
        F.scaled_dot_product_attention(*theirs, **kwargs).pow(2).sum().backward()
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True}, {"scale": 0.7}, {"mask": True}])
def test_gradcheck_float64(kwargs):
    q, k, v = (t.requires_grad_() for t in _qkv((2,), 3, 4, 5, 2, torch.float64, seed=7))
    if kwargs.pop("mask", False):
        kwargs["attn_mask"] = torch.tensor([[True, False, True, True]] * 3)
    assert torch.autograd.gradcheck(lambda a, b, c: scaled_dot_product_attention(a, b, c, **kwargs), (q, k, v))
    x = runtime.randn(3, 4, gen=runtime.generator(1), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: softmax(t, dim=0), (x,))


def test_default_scale_is_one_over_sqrt_e():
    q, k, _ = _qkv((), 3, 3, 16, 1, torch.float64)
    torch.testing.assert_close(attention_weights(q, k), attention_weights(q, k, scale=1 / math.sqrt(16)))


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda q, k, v: scaled_dot_product_attention(q[0, 0], k, v), ValueError, "(..., L, E)"),
        (lambda q, k, v: scaled_dot_product_attention(q, k[..., :3], v), ValueError, "must share E"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v[:, :2]), ValueError, "(..., S, Ev)"),
        (lambda q, k, v: scaled_dot_product_attention(q.double(), k, v), TypeError, "same dtype"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v.double()), TypeError, "dtype"),
        (lambda q, k, v: scaled_dot_product_attention(q.long(), k, v), TypeError, "floating-point"),
        (lambda q, k, v: scaled_dot_product_attention(q.numpy(), k, v), TypeError, "torch.Tensor"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.bool)), ValueError, "broadcast to the scores' shape (..., L, S)"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 5, dtype=torch.int64)), TypeError, "boolean"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 5, dtype=torch.bool), is_causal=True), ValueError, "not both"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal="yes"), TypeError, "is_causal"),
        (lambda q, k, v: scaled_dot_product_attention(q, k, v, scale="big"), TypeError, "scale"),
        (lambda q, k, v: scaled_dot_product_attention(q.to("meta"), k, v), ValueError, "same device"),
        (lambda q, k, v: scaled_dot_product_attention(torch.cat([q, q[:1]]), k, v), ValueError, "broadcast"),
        (lambda q, k, v: softmax(q, dim=5), ValueError, "out of range"),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, words):
    q, k, v = _qkv((2,), 3, 5, 4, 6, torch.float32)
    with pytest.raises(error) as info:
        call(q, k, v)
    assert words in str(info.value)
