"""FlashAttention (course_lib.attention.flash and its Triton kernel), held against the course's SDPA
and PyTorch's: outputs and gradients, ragged blocks, causal, broadcast batches, bad input, and peak
live memory (tracked storages) linear in the sequence length. The Triton kernel runs in Triton's CPU
interpreter here (small sizes) and natively on a CUDA GPU (tests marked `gpu`, `make test-gpu`)."""

import itertools
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from course_lib import runtime
from course_lib.attention import flash_attention, online_softmax_stats, scaled_dot_product_attention
from course_lib.attention import flash, flash_triton
from course_lib.memory import track_live_memory

CUDA = torch.cuda.is_available()
TRITON_GPU = CUDA and flash_triton.available() and torch.cuda.get_device_capability() >= (8, 0)
needs_triton = pytest.mark.skipif(not flash_triton.available(), reason="needs Triton (pip install .[triton])")
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]

SHAPES = [  # (batch dims, L, S, E, Ev)
    ((), 1, 1, 1, 1),
    ((), 5, 5, 8, 8),
    ((), 3, 70, 4, 6),
    ((2,), 33, 17, 16, 5),
    ((2, 3), 40, 40, 8, 4),
    ((2, 1, 3), 9, 23, 2, 3),
]


def _qkv(batch, L, S, E, Ev, dtype=torch.float64, seed=0, device="cpu", v_batch=None):
    gen = runtime.generator(seed)
    return (
        runtime.randn(*batch, L, E, gen=gen, dtype=dtype, device=device),
        runtime.randn(*batch, S, E, gen=gen, dtype=dtype, device=device),
        runtime.randn(*(batch if v_batch is None else v_batch), S, Ev, gen=gen, dtype=dtype, device=device),
    )


@pytest.mark.parametrize("shape,is_causal,block_size", list(itertools.product(SHAPES, [False, True], [None, 1, 4, 16])))
def test_outputs_match_sdpa_for_any_lengths_and_blocks(shape, is_causal, block_size):
    q, k, v = _qkv(*shape)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    actual = flash_attention(q, k, v, is_causal=is_causal, block_size=block_size)
    assert actual.shape == expected.shape and actual.dtype == q.dtype
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(actual, scaled_dot_product_attention(q, k, v, is_causal=is_causal),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_and_scale(dtype):
    q, k, v = _qkv((2, 2), 37, 45, 16, 8, dtype=dtype)
    for options in ({"scale": 0.3}, {"is_causal": True, "scale": 0.0}):
        expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), **options).to(dtype)
        tol = runtime.tolerance(dtype)
        torch.testing.assert_close(flash_attention(q, k, v, block_size=16, **options), expected,
                                   rtol=tol.rtol, atol=tol.atol)


def test_batch_dimensions_broadcast_and_their_gradients_sum():
    q, k, v = _qkv((2, 3), 7, 9, 4, 5, v_batch=(1, 3))
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(flash_attention(q, k, v, block_size=4), expected)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    flash_attention(*leaves, block_size=4).sum().backward()
    assert leaves[2].grad.shape == v.shape


@pytest.mark.parametrize("shape,is_causal,block_size", [
    (((), 9, 11, 3, 4), False, 4), (((), 9, 11, 3, 4), True, 4), (((2,), 6, 6, 2, 2), True, 1),
    (((1, 2), 5, 13, 4, 3), False, 16), (((), 13, 5, 3, 2), True, 4),
])
def test_float64_gradcheck(shape, is_causal, block_size):
    leaves = tuple(x.requires_grad_() for x in _qkv(*shape, seed=3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attention(q, k, v, is_causal=is_causal, block_size=block_size), leaves)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradients_match_pytorch_at_realistic_sizes(is_causal):
    q, k, v = _qkv((2, 2), 200, 150, 32, 16, dtype=torch.float32, seed=4)
    grad_out = runtime.randn(2, 2, 200, 16, gen=runtime.generator(5))
    grads = []
    for attend in (F.scaled_dot_product_attention, flash_attention):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        attend(*leaves, is_causal=is_causal).backward(grad_out)
        grads.append([x.grad for x in leaves])
    for expected, actual in zip(*grads):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_the_backward_saves_only_q_k_v_the_output_and_the_lse():
    q, k, v = (x.requires_grad_() for x in _qkv((2,), 64, 48, 8, 4, dtype=torch.float32))
    out = flash_attention(q, k, v, block_size=16)
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(2, 64, 8), (2, 48, 8), (2, 48, 4), (2, 64, 4), (2, 64)]


def test_the_private_forward_returns_the_log_sum_exp():
    q, k, v = _qkv((3,), 20, 30, 8, 8)
    out, lse = flash._forward(q, k, v, is_causal=True, block_size=8)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    scores = scores.masked_fill(~torch.ones(20, 30, dtype=torch.bool).tril(), -math.inf)
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("bad,error,words", [
    (lambda q, k, v: flash_attention(q[0, 0, 0], k, v), ValueError, "(..., L, E)"),
    (lambda q, k, v: flash_attention(q, k[..., :3], v), ValueError, "share E"),
    (lambda q, k, v: flash_attention(q, k, v[..., :2, :]), ValueError, "same S"),
    (lambda q, k, v: flash_attention(q, k.float(), v), TypeError, "same dtype"),
    (lambda q, k, v: flash_attention(q, k, v, is_causal=1), TypeError, "is_causal"),
    (lambda q, k, v: flash_attention(q, k, v, scale="0.5"), TypeError, "scale"),
    (lambda q, k, v: flash_attention(q, k, v, block_size=0), ValueError, "block_size"),
    (lambda q, k, v: flash_attention(q, k, v, block_size=True), ValueError, "block_size"),
    (lambda q, k, v: flash_attention(q.long(), k, v), TypeError, "floating"),
    (lambda q, k, v: flash.windowed_flash_attention(q, k, v, (-1, 0)), ValueError, "window"),
    (lambda q, k, v: online_softmax_stats(q, block_size=-2), ValueError, "block_size"),
])
def test_bad_input_is_refused_in_words_before_any_work(bad, error, words):
    q, k, v = _qkv((2, 2), 6, 7, 4, 5)
    with track_live_memory() as memory, pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")
                                                      .replace(".", r"\.")):
        bad(q, k, v)
    assert memory.peak_bytes < 1024  # refused before any tile was computed


def test_online_softmax_stats_on_huge_and_masked_rows():
    x = torch.tensor([[1000.0, 999.0, -1000.0, 998.1, 1001.0],
                      [-math.inf, -math.inf, -math.inf, 3.0, 2.0],
                      [-math.inf] * 5], dtype=torch.float64)
    m, l = online_softmax_stats(x, block_size=2)
    torch.testing.assert_close(m, torch.tensor([1001.0, 3.0, -math.inf], dtype=torch.float64))
    expected_l = torch.exp(x[:2] - m[:2, None]).sum(-1)
    torch.testing.assert_close(l, torch.cat([expected_l, torch.zeros(1, dtype=torch.float64)]))
    assert torch.isfinite(l).all()


# --- memory ------------------------------------------------------------------------------------------

L_MEMORY, E_MEMORY, BLOCK_MEMORY = 2048, 64, 64
LINEAR_BOUND = 2 * (2 * L_MEMORY) * (2 * E_MEMORY + BLOCK_MEMORY) * 4  # bytes: a small multiple, float32


def _memory_inputs(requires_grad=False):
    q, k, v = (x.requires_grad_(requires_grad) for x in _qkv((1,), L_MEMORY, L_MEMORY, E_MEMORY, E_MEMORY,
                                                              dtype=torch.float32, seed=7))
    return q, k, v


def test_forward_peak_memory_is_linear_in_the_length():
    """L = S = 2048, block 64: the naive (L, S) scores alone are 16 MiB; flash stays within the bound."""
    q, k, v = _memory_inputs()
    with torch.no_grad(), track_live_memory() as memory:
        out = flash_attention(q, k, v, block_size=BLOCK_MEMORY)
        del out
    scores_bytes = L_MEMORY * L_MEMORY * 4
    assert memory.peak_bytes <= LINEAR_BOUND < scores_bytes / 2, (memory.peak_bytes, LINEAR_BOUND)
    with torch.no_grad(), track_live_memory() as naive:
        dense = scaled_dot_product_attention(q, k, v)
        del dense
    assert naive.peak_bytes >= scores_bytes  # the dense reference holds the (L, S) weights


def test_forward_and_backward_peak_memory_is_linear_in_the_length():
    q, k, v = _memory_inputs(requires_grad=True)
    with track_live_memory() as memory:
        out = flash_attention(q, k, v, is_causal=True, block_size=BLOCK_MEMORY)
        out.sum().backward()
        del out
    # the gradients themselves (3 × L·E) stay alive: they are part of the bound
    assert memory.peak_bytes <= LINEAR_BOUND, (memory.peak_bytes, LINEAR_BOUND)


# --- the Triton kernel ----------------------------------------------------------------------------------

INTERPRETER_CASES = [  # (batch, L, S, E, Ev, is_causal, window)
    ((2,), 37, 53, 16, 8, False, None),
    ((1, 2), 64, 64, 32, 32, True, None),
    ((2,), 50, 30, 8, 8, True, None),
    ((1,), 70, 70, 16, 16, False, (9, 3)),
    ((1,), 70, 70, 16, 16, False, (31, 0)),
]


@needs_triton
@pytest.mark.parametrize("case", INTERPRETER_CASES)
def test_triton_kernel_in_the_interpreter(case, monkeypatch):
    if CUDA:
        pytest.skip("the interpreter tests run where there is no GPU; the GPU tests run the kernel natively")
    assert flash_triton.interpreted()  # tests/conftest.py sets it before Triton is imported
    batch, L, S, E, Ev, is_causal, window = case
    q, k, v = _qkv(batch, L, S, E, Ev, dtype=torch.float32, seed=11)
    start = time.perf_counter()
    out, lse = flash_triton.flash_forward(q, k, v, is_causal=is_causal, window=window)
    assert time.perf_counter() - start < 30
    expected, expected_lse = flash._forward_torch(q, k, v, is_causal, 1 / math.sqrt(E), 16, window)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-4, atol=1e-5)
    if window is not None:
        rows, cols = torch.arange(L)[:, None], torch.arange(S)[None, :]
        allowed = (cols >= rows - window[0]) & (cols <= rows + window[1])
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed),
                                   rtol=1e-4, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # the interpreter computes bfloat16 wrongly
@pytest.mark.parametrize("case", INTERPRETER_CASES + [((1,), 50, 30, 16, 16, False, (2, 0))],  # rows that see no key
                         ids=lambda c: f"{c}")
def test_triton_backward_in_the_interpreter(case, dtype):
    if CUDA:
        pytest.skip("the interpreter tests run where there is no GPU; the GPU tests run the kernel natively")
    batch, L, S, E, Ev, is_causal, window = case
    q, k, v = _qkv(batch, L, S, E, Ev, dtype=dtype, seed=13)
    grad_out = torch.randn(*batch, L, Ev, generator=torch.Generator().manual_seed(14)).to(dtype)
    out, lse = flash_triton.flash_forward(q, k, v, is_causal=is_causal, window=window)
    start = time.perf_counter()
    actual = flash_triton.flash_backward(q, k, v, out, lse, grad_out, is_causal=is_causal, window=window)
    assert time.perf_counter() - start < 30
    wide = [x.double() for x in (q, k, v, out, lse, grad_out)]
    expected = flash._backward_torch(*wide, is_causal, 1 / math.sqrt(E), 16, window)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 5e-3}
    for name, a, e in zip(("dq", "dk", "dv"), actual, expected):
        assert a.dtype == dtype and a.shape == e.shape, name
        torch.testing.assert_close(a.double(), e, **tol, msg=lambda m, name=name: f"{name}: {m}")
    if window is None and dtype == torch.float32:  # and against PyTorch's own autograd
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        F.scaled_dot_product_attention(*leaves, is_causal=is_causal).backward(grad_out)
        for a, leaf in zip(actual, leaves):
            torch.testing.assert_close(a, leaf.grad, rtol=1e-4, atol=1e-5)


@needs_triton
def test_the_lessons_skeleton_kernel_in_the_interpreter(monkeypatch):
    if CUDA:
        pytest.skip("runs natively in the GPU tests")
    assert flash_triton.interpreted()  # tests/conftest.py sets it before Triton is imported
    q, k, v = _qkv((2,), 37, 45, 16, 16, dtype=torch.float32, seed=12)
    for is_causal in (False, True):
        out = flash_triton.skeleton_forward(None, q, k, v, is_causal=is_causal)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=is_causal),
                                   rtol=1e-4, atol=1e-5)


def test_without_triton_or_a_capable_gpu_the_pytorch_path_runs(monkeypatch):
    monkeypatch.setattr(flash_triton, "triton", None)
    monkeypatch.setattr(flash_triton, "available", lambda: False)
    q, k, v = _qkv((), 10, 10, 4, 4)
    assert not flash.triton_usable(q)
    torch.testing.assert_close(flash_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    with pytest.raises(RuntimeError, match="not installed"):
        flash_triton.flash_forward(q, k, v)


# --- on a CUDA GPU (make test-gpu) ---------------------------------------------------------------

GPU_DTYPES = [torch.float16] + ([torch.bfloat16] if CUDA and torch.cuda.is_bf16_supported() else [])


def _sdpa_pinned(q, k, v, backend=SDPBackend.FLASH_ATTENTION, **options):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, **options)


@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [((2, 4), 1000, 1000, 64, 64), ((1, 3), 257, 1111, 128, 128), ((2,), 77, 45, 32, 32)])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_forward_matches_sdpa(dtype, is_causal, shape):
    q, k, v = _qkv(*shape, dtype=dtype, seed=21, device="cuda")
    expected = _sdpa_pinned(q, k, v, SDPBackend.MATH, is_causal=is_causal)
    actual = flash_attention(q, k, v, is_causal=is_causal)
    tol = runtime.tolerance(dtype, "cuda")
    torch.testing.assert_close(actual, expected, rtol=tol.rtol, atol=tol.atol)
    if shape[3] == 64 and shape[1] == shape[2]:
        torch.testing.assert_close(actual, _sdpa_pinned(q, k, v, is_causal=is_causal), rtol=tol.rtol, atol=tol.atol)


@pytest.mark.gpu
@pytest.mark.skipif(not TRITON_GPU, reason="needs Triton and a CUDA GPU of compute capability 8.0 or more")
def test_gpu_uses_the_triton_kernel_and_its_window():
    q, k, v = _qkv((2, 4), 1500, 1500, 64, 64, dtype=torch.float16, seed=22, device="cuda")
    assert flash.triton_usable(q)
    for window in ((255, 0), (100, 100), (0, 0)):
        rows, cols = torch.arange(1500, device="cuda")[:, None], torch.arange(1500, device="cuda")[None, :]
        allowed = (cols >= rows - window[0]) & (cols <= rows + window[1])
        expected = _sdpa_pinned(q, k, v, SDPBackend.MATH, attn_mask=allowed)
        actual = flash.windowed_flash_attention(q, k, v, window)
        torch.testing.assert_close(actual, expected, rtol=5e-3, atol=5e-3)
    out, lse = flash_triton.flash_forward(q.float(), k.float(), v.float(), is_causal=True)
    expected, expected_lse = flash._forward_torch(q.float(), k.float(), v.float(), True, 1 / 8, 128)
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-4, atol=1e-4)
    assert flash.TRITON_FAILURES == []  # the kernel ran, not the tiles it falls back to


@pytest.mark.gpu
@pytest.mark.skipif(not TRITON_GPU, reason="needs Triton and a CUDA GPU of compute capability 8.0 or more")
def test_gpu_skeleton_kernel_and_gradients():
    q, k, v = _qkv((2,), 300, 200, 64, 64, dtype=torch.float16, seed=23, device="cuda")
    for is_causal in (False, True):
        out = flash_triton.skeleton_forward(None, q, k, v, is_causal=is_causal, block=32)
        torch.testing.assert_close(out, _sdpa_pinned(q, k, v, SDPBackend.MATH, is_causal=is_causal),
                                   rtol=5e-3, atol=5e-3)
    q, k, v = _qkv((2, 2), 300, 200, 64, 32, dtype=torch.float32, seed=24, device="cuda")
    grads = []
    for attend in (lambda *a: _sdpa_pinned(*a, SDPBackend.MATH, is_causal=True),
                   lambda *a: flash_attention(*a, is_causal=True)):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        attend(*leaves).sum().backward()
        grads.append([x.grad for x in leaves])
    for expected, actual in zip(*grads):
        torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not TRITON_GPU, reason="needs Triton and a CUDA GPU of compute capability 8.0 or more")
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("options", [{"is_causal": False}, {"is_causal": True}, {"window": (255, 0)}, {"window": (64, 64)}],
                         ids=str)
def test_gpu_triton_backward_matches_pytorch(dtype, options):
    q, k, v = _qkv((2, 4), 1000, 1000, 64, 64, dtype=dtype, seed=26, device="cuda")
    grad_out = torch.randn_like(q)
    window = options.get("window")
    rows, cols = torch.arange(1000, device="cuda")[:, None], torch.arange(1000, device="cuda")[None, :]
    mask = None if window is None else (cols >= rows - window[0]) & (cols <= rows + window[1])
    grads = []
    for attend in (lambda *a: _sdpa_pinned(*[x.float() for x in a], SDPBackend.MATH, attn_mask=mask,
                                           is_causal=options.get("is_causal", False)),
                   lambda *a: flash._flash(*a, options.get("is_causal", False), None, None, window)):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        result = attend(*leaves)
        result.backward(grad_out.to(result.dtype))
        grads.append([x.grad for x in leaves])
    for expected, actual in zip(*grads):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual.float(), expected.float(), rtol=2e-2, atol=2e-2)
    assert flash.TRITON_FAILURES == []  # the kernels ran, not the tiles they fall back to


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_memory_is_linear():
    q, k, v = _qkv((1, 4), 8192, 8192, 64, 64, dtype=torch.float16, seed=25, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.no_grad():
        out = flash_attention(q, k, v, is_causal=True)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 16 * out.numel() * out.element_size(), extra  # the scores alone would be 512 MiB


def test_a_triton_kernel_that_fails_here_falls_back_to_the_tiles_once_with_a_warning(monkeypatch):
    q, k, v = _qkv((2,), 20, 30, 8, 8)
    monkeypatch.setattr(flash, "TRITON_FAILURES", [])
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("PTX .version 8.7 does not support .target sm_120")

    with pytest.warns(RuntimeWarning, match="failed on this machine .RuntimeError: PTX .version 8.7"):
        out = flash._by_triton(broken, lambda: flash._forward_torch(q, k, v, False, 8 ** -0.5, 16)[0])
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert calls == [1] and flash.TRITON_FAILURES and not flash.triton_usable(q)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # running out of memory is not the kernel's fault
        flash._by_triton(lambda: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("out of memory")), lambda: None)
