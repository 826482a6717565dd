"""Lesson 07's references held against torch.nn.functional.scaled_dot_product_attention with the
equivalent dense boolean mask, on the CPU and, where there is one, on a CUDA GPU (SDPA pinned to its
math backend there): the banded attention, its memory, the mask, and the rolling-buffer cache."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from course_lib import runtime
from course_lib.attention import (
    RollingKVCache,
    decode_step,
    dense_window_mask,
    rolling_buffer_update,
    sliding_window_attention,
    sliding_window_mask,
)
from course_lib.memory import track_live_memory

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

WINDOWS = [  # (L, window): causal, symmetric, asymmetric, wider than L, one key, L not a multiple of anything
    (37, (4, 0)),   # Mistral's causal window of W = 5 keys
    (37, (3, 3)),   # Longformer's window of w = 6 tokens, w // 2 on each side
    (37, (2, 5)),   # asymmetric
    (37, (0, 6)),   # looking only ahead
    (9, (20, 50)),  # wider than L on both sides: plain attention
    (9, (8, 0)),    # exactly L keys back: plain causal attention
    (23, (0, 0)),   # a window of one key: the output is v
    (1, (0, 0)),
    (300, (63, 0)),  # several blocks, L not a multiple of the window
    (1000, (100, 37)),
]


def _qkv(batch, L, E, Ev, dtype, seed=0, device="cpu"):
    gen = runtime.generator(seed)
    return tuple(runtime.randn(*batch, L, n, gen=gen, dtype=dtype, device=device) for n in (E, E, Ev))


def dense(q, k, v, window, scale=None):
    """PyTorch's SDPA with the dense (L, L) window mask; on CUDA its math backend."""
    pinned = sdpa_kernel(SDPBackend.MATH) if q.device.type == "cuda" else contextlib.nullcontext()
    with pinned:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_window_mask(q.shape[-2], window, q.device),
                                              scale=scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L,window", WINDOWS, ids=[f"L{L}-{w[0]}-{w[1]}" for L, w in WINDOWS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_dense_masked_sdpa(L, window, dtype, device):
    q, k, v = _qkv((2, 3), L, 8, 5, dtype, device=device)
    expected = dense(q, k, v, window)
    tol = runtime.tolerance(dtype, device)
    torch.testing.assert_close(sliding_window_attention(q, k, v, window), expected, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_dims_of_any_rank_broadcast_and_scale_is_used(device):
    gen = runtime.generator(1)
    q = runtime.randn(2, 1, 3, 11, 4, gen=gen, dtype=torch.float64, device=device)
    k = runtime.randn(1, 4, 1, 11, 4, gen=gen, dtype=torch.float64, device=device)
    v = runtime.randn(4, 3, 11, 6, gen=gen, dtype=torch.float64, device=device)
    out = sliding_window_attention(q, k, v, (2, 1), scale=0.7)
    assert out.shape == (2, 4, 3, 11, 6)
    torch.testing.assert_close(out, dense(q, k, v, (2, 1), scale=0.7))
    for batch in [(), (5,)]:
        q, k, v = _qkv(batch, 13, 4, 4, torch.float64, device=device)
        torch.testing.assert_close(sliding_window_attention(q, k, v, [3, 0]), dense(q, k, v, (3, 0)))


def test_a_window_of_one_key_returns_v_and_a_wide_window_is_plain_attention():
    q, k, v = _qkv((2,), 17, 8, 3, torch.float64)
    torch.testing.assert_close(sliding_window_attention(q, k, v, (0, 0)), v)
    torch.testing.assert_close(sliding_window_attention(q, k, v, (16, 0)), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    torch.testing.assert_close(sliding_window_attention(q, k, v, (100, 100)), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_computed_in_float32_and_cast_back(dtype):
    q, k, v = _qkv((2,), 70, 16, 16, torch.float32)
    out = sliding_window_attention(q.to(dtype), k.to(dtype), v.to(dtype), (9, 2))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), dense(q, k, v, (9, 2)), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L,window", [(37, (4, 0)), (37, (2, 5)), (300, (63, 0))])
def test_gradients_match_dense(L, window, device):
    q, k, v = _qkv((2,), L, 8, 5, torch.float64, seed=3, device=device)
    grads = []
    for attention in (sliding_window_attention, dense):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        weights = torch.linspace(-1, 1, 2 * L * 5, dtype=torch.float64, device=device).reshape(2, L, 5)
        (attention(*leaves, window) * weights).sum().backward()
        grads.append([t.grad for t in leaves])
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs)


def test_gradcheck_float64():
    q, k, v = (t.requires_grad_(True) for t in _qkv((2,), 9, 3, 2, torch.float64, seed=4))
    assert torch.autograd.gradcheck(lambda q, k, v: sliding_window_attention(q, k, v, (2, 1)), (q, k, v))


def test_peak_live_memory_is_linear_in_L_times_the_window():
    """L = 2048, a causal window of 64 keys: no L×L tensor, and no tiles adding up to one."""
    L, E, Ev, window = 2048, 64, 64, (63, 0)
    q, k, v = _qkv((), L, E, Ev, torch.float32, seed=5)
    with torch.no_grad(), track_live_memory() as memory:
        out = sliding_window_attention(q, k, v, window)
    bound = 4 * L * (window[0] + window[1] + 1 + E + Ev) * 4  # a small multiple of L·(left+right+1+E+Ev)·itemsize
    assert memory.peak_bytes <= bound, (memory.peak_bytes, bound)
    assert memory.peak_bytes < L * L * 4 / 8  # far below one dense float32 score matrix
    torch.testing.assert_close(out, dense(q, k, v, window))


def test_memory_grows_linearly_with_L():
    peaks = []
    for L in (1024, 4096):
        q, k, v = _qkv((), L, 16, 16, torch.float32, seed=6)
        with torch.no_grad(), track_live_memory() as memory:
            sliding_window_attention(q, k, v, (31, 0))
        peaks.append(memory.peak_bytes)
    assert peaks[1] <= 4.5 * peaks[0], peaks  # 4× the length: about 4× the memory, not 16×


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda q: sliding_window_attention(q, q, q, 3), TypeError, "(left, right)"),
        (lambda q: sliding_window_attention(q, q, q, (3,)), TypeError, "(left, right)"),
        (lambda q: sliding_window_attention(q, q, q, (3.0, 0)), TypeError, "non-negative ints"),
        (lambda q: sliding_window_attention(q, q, q, (True, 0)), TypeError, "non-negative ints"),
        (lambda q: sliding_window_attention(q, q, q, (-1, 0)), ValueError, "non-negative"),
        (lambda q: sliding_window_attention(q, q[..., :5, :], q[..., :5, :], (1, 0)), ValueError, "(..., L, E)"),
        (lambda q: sliding_window_attention(q, q[..., :3], q, (1, 0)), ValueError, "(..., S, E)"),
        (lambda q: sliding_window_attention(q, q, q[..., :5, :], (1, 0)), ValueError, "(..., S, Ev)"),
        (lambda q: sliding_window_attention(q, q, q, (1, 0), scale="big"), TypeError, "scale"),
        (lambda q: sliding_window_attention(q, q.double(), q, (1, 0)), TypeError, "dtype"),
    ],
)
def test_bad_input_gets_a_clear_error_before_any_work(call, error, words):
    q = torch.randn(2, 7, 4)
    with track_live_memory() as memory, pytest.raises(error) as info:
        call(q)
    assert words in str(info.value)
    assert memory.peak_bytes <= 2 * 7 * 4 * 8  # at most a few small tensors while checking


# --- the mask ------------------------------------------------------------------------------------


def test_window_mask_follows_the_convention():
    mask = dense_window_mask(6, (2, 1))
    for i in range(6):
        for j in range(6):
            assert bool(mask[i, j]) == (i - 2 <= j <= i + 1)
    # positions, not indices: one query at position 10 against keys stored in rolling-buffer order
    keys = torch.tensor([8, 9, 10, 7])
    assert sliding_window_mask(torch.tensor([10]), keys, (2, 0)).tolist() == [[True, True, True, False]]


# --- the rolling buffer ---------------------------------------------------------------------------


def test_rolling_buffer_update_writes_slot_position_mod_w_and_leaves_the_input():
    cache = torch.zeros(2, 4, 3)
    new = torch.ones(2, 3)
    updated = rolling_buffer_update(cache, new, 9)
    assert cache.abs().sum() == 0
    assert updated[:, 1].eq(1).all() and updated[:, [0, 2, 3]].eq(0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("W", [1, 4, 7])
def test_cached_decoding_equals_recomputing_from_scratch_past_the_wrap_around(W, device):
    L, E, Ev = 3 * W + 5, 8, 6
    q, k, v = _qkv((2, 3), L, E, Ev, torch.float64, seed=7, device=device)
    cache = RollingKVCache.empty(W, (2, 3), E, Ev, dtype=torch.float64, device=device)
    for t in range(L):
        step = decode_step(cache, q[..., t, :], k[..., t, :], v[..., t, :])
        from_scratch = sliding_window_attention(q[..., : t + 1, :], k[..., : t + 1, :], v[..., : t + 1, :], (W - 1, 0))
        torch.testing.assert_close(step, from_scratch[..., t, :])
    assert cache.length == L and cache.keys.shape[-2] == W  # never grew
    assert cache.nbytes() == 2 * 3 * W * (E + Ev) * 8


def test_the_cache_is_checked():
    with pytest.raises(ValueError, match="W = 4"):
        RollingKVCache(4, torch.zeros(3, 8), torch.zeros(4, 8))
    with pytest.raises(ValueError, match="positive"):
        RollingKVCache.empty(0, (), 2, 2)


# --- the benchmark and its shipped results ---------------------------------------------------------


def test_the_benchmark_runs_small_and_saves_results_and_a_figure(tmp_path, monkeypatch):
    import json

    from course_lib import bench
    from course_lib.bench import sliding_window as window_bench

    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    results = window_bench.run(torch.device("cpu"), lengths=(1024, 2048), repeats=1, with_flex=False)
    json.dumps(results)  # plain data
    assert [row["L"] for row in results["rows"]] == [1024, 2048]
    assert all(row["max_abs_difference"]["sliding_window"] < 1e-5 for row in results["rows"])
    assert (tmp_path / "sliding_window.png").exists()
    assert results["goals"]["sliding_over_dense_memory"] < 0.25  # at L = 2048, four windows long


def test_the_shipped_results_name_their_device_and_reach_16k():
    from course_lib.bench import sliding_window as window_bench

    shipped = window_bench.shipped("cpu")
    assert shipped["device"].startswith("CPU") and shipped["rows"][-1]["L"] == 16384
    assert set(shipped["rows"][-1]["median_s"]) == {"dense", "sliding_window", "flex"}
