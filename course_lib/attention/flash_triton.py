"""The FlashAttention-2 forward and backward as Triton kernels, with an optional sliding window.

One program computes one block of BLOCK_M queries of one (batch, head): it loads its queries once,
walks the key/value blocks that its queries may see — causal blocks above the diagonal and blocks
outside the window are never loaded — and keeps the running max ``m_i``, the running sum ``l_i`` and
the unnormalised output ``acc`` in registers (FlashAttention-2, Algorithm 1). The exponentials are
taken in base 2 (``exp2``, with log2(e) folded into the scale), which GPUs compute natively. Only
the blocks that straddle the causal diagonal or a window's edge, or the ragged end, are masked.

The backward (``flash_backward``; FlashAttention-2, Algorithm 2) recomputes each tile's probabilities
from the forward's log-sum-exp: one program per key block gathers dK and dV over the query blocks that
see it, and one per query block gathers dQ, so no program adds into another's rows (no atomics).

``window=(left, right)``: query i attends key j iff ``i - left <= j <= i + right`` — FlashAttention's
``window_size``; Mistral's causal window of W keys is ``(W - 1, 0)``.

Triton is optional (``pip install .[triton]``; no macOS wheels): ``available()`` says whether it is
installed. Triton is imported and the kernels decorated on first use, not when this module is
imported: ``TRITON_INTERPRET=1`` (which runs the kernels on the CPU, in NumPy) must be set before
Triton is imported — its reductions (``tl.max``, ``tl.sum``) are decorated at Triton's own import.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys

import torch

__all__ = ["available", "supports", "flash_forward", "flash_backward", "skeleton_forward", "skeleton_attention", "interpreted",
           "load_triton"]

triton = None  # the modules, once load_triton() has imported them
_key_range = _visible = _load_rows = _dot = _probabilities = None  # the kernels' helpers, once decorated
tl = None
_IMPORTED_INTERPRETED: bool | None = None  # TRITON_INTERPRET when Triton was imported

LOG2_E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def available() -> bool:
    """Whether Triton is installed (without importing it)."""
    if triton is not None or "triton" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def load_triton():  # noqa: ANN201
    """Import Triton (once) and return ``(triton, triton.language)``; RuntimeError in words where
    it is missing, or where TRITON_INTERPRET=1 was set only after Triton had been imported."""
    global triton, tl, _IMPORTED_INTERPRETED
    if triton is None:
        if not available():
            raise RuntimeError("Triton is not installed: pip install 'course_lib[triton]' "
                               "(Linux and Windows through WSL; Triton has no macOS wheels)")
        first = "triton" not in sys.modules
        try:
            import triton as triton_module
            import triton.language as language
        except ImportError as error:
            raise RuntimeError(f"Triton is installed but cannot be imported: {error}") from error

        triton, tl = triton_module, language
        _IMPORTED_INTERPRETED = interpreted() if first else None
    if interpreted() and _IMPORTED_INTERPRETED is False:
        raise RuntimeError("TRITON_INTERPRET=1 was set after Triton was imported: set it before anything "
                           "imports triton (restart the kernel and run the set-up cell first)")
    return triton, tl


def interpreted() -> bool:
    """Whether kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def supports(q: torch.Tensor) -> bool:
    """The dtypes and head sizes the kernel takes (it pads the head size to a power of 2)."""
    return q.dtype in _DTYPES and q.shape[-1] <= 256


def _key_range_source(first_query, last_query, S, window_left, window_right,  # noqa: ANN001, ANN201, N803
                      IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keys [lo, hi) that some query of [first_query, last_query] may see; lo a multiple of BLOCK_N."""
    lo = 0
    hi = S
    if IS_CAUSAL:
        hi = tl.minimum(hi, last_query + 1)
    if HAS_WINDOW:
        lo = tl.maximum(0, first_query - window_left)
        lo = lo - lo % BLOCK_N
        hi = tl.minimum(hi, last_query + window_right + 1)
    return lo, hi


def _visible_source(rows, cols, S, window_left, window_right,  # noqa: ANN001, ANN201, N803
                    IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """(rows, cols): True where query ``row`` may attend key ``col`` (a key below S, not in the future
    when causal, inside the window)."""
    allowed = (cols[None, :] < S) & (rows[:, None] >= 0)
    if IS_CAUSAL:
        allowed = allowed & (cols[None, :] <= rows[:, None])
    if HAS_WINDOW:
        allowed = allowed & (cols[None, :] >= rows[:, None] - window_left)
        allowed = allowed & (cols[None, :] <= rows[:, None] + window_right)
    return allowed


def _load_rows_source(start, rows, n_rows, width, stride, BLOCK: tl.constexpr):  # noqa: ANN001, ANN201, N803
    """The (rows, BLOCK) tile of a row-major matrix at ``start``: zeros past row n_rows and column width."""
    offs = tl.arange(0, BLOCK)
    return tl.load(start + rows[:, None] * stride + offs[None, :],
                   mask=(rows[:, None] < n_rows) & (offs[None, :] < width), other=0.0)


def _dot_source(a, b, IEEE: tl.constexpr):  # noqa: ANN001, ANN201, N803
    """a @ b, accumulated in float32; IEEE: float32 products as they are (a GPU's default is TF32)."""
    if IEEE:
        product = tl.dot(a, b, input_precision="ieee")
    else:
        product = tl.dot(a.to(b.dtype), b)
    return product


def _fast_kernel_source(Q, K, V, O, LSE,  # noqa: ANN001, N803 - Triton kernels take pointers
                        stride_qb, stride_qm, stride_kb, stride_kn, stride_vb, stride_vn, stride_ob, stride_om,
                        L, S, E, EV, qk_scale, window_left, window_right,
                        IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, IEEE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + bh * stride_qb, offs_m, L, E, stride_qm, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    first_query = start_m * BLOCK_M
    last_query = tl.minimum(first_query + BLOCK_M, L) - 1
    lo, hi = _key_range(first_query, last_query, S, window_left, window_right, IS_CAUSAL, HAS_WINDOW, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(K + bh * stride_kb + cols[None, :] * stride_kn + offs_d[:, None],
                    mask=(cols[None, :] < S) & (offs_d[:, None] < E), other=0.0)  # (BLOCK_D, BLOCK_N)
        v = _load_rows(V + bh * stride_vb, cols, S, EV, stride_vn, BLOCK_DV)  # (BLOCK_N, BLOCK_DV)
        s = _dot(q, k, IEEE) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        # Masks only where a block reaches past S, the diagonal or a window's edge.
        needs_mask = start_n + BLOCK_N > S
        if IS_CAUSAL:
            needs_mask = needs_mask | (start_n + BLOCK_N - 1 > first_query)
        if HAS_WINDOW:
            needs_mask = needs_mask | (start_n < last_query - window_left) | (start_n + BLOCK_N - 1 > first_query + window_right)
        if needs_mask:
            s = tl.where(_visible(offs_m, cols, S, window_left, window_right, IS_CAUSAL, HAS_WINDOW), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p, v, IEEE)
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    offs_dv = tl.arange(0, BLOCK_DV)
    tl.store(O + bh * stride_ob + offs_m[:, None] * stride_om + offs_dv[None, :], out.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < L) & (offs_dv[None, :] < EV))
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
    tl.store(LSE + bh * L + offs_m, lse, mask=offs_m < L)


def _probabilities_source(q, k, lse, rows, cols, S, qk_scale, window_left, window_right,  # noqa: ANN001, ANN201, N803
                          IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, IEEE: tl.constexpr):
    """The forward's weights of a tile, recomputed: exp2(q kᵀ · qk_scale - lse) where the query may see
    the key and has seen some key (``lse`` in log2 units, -inf for a row that saw none), else 0."""
    s = _dot(q, tl.trans(k), IEEE) * qk_scale  # (BLOCK_M, BLOCK_N)
    allowed = _visible(rows, cols, S, window_left, window_right, IS_CAUSAL, HAS_WINDOW) & (lse[:, None] > float("-inf"))
    return tl.where(allowed, tl.math.exp2(s - tl.where(allowed, lse[:, None], 0.0)), 0.0)


def _backward_kv_kernel_source(Q, K, V, DO, LSE, DELTA, DK, DV,  # noqa: ANN001, N803
                               stride_qb, stride_qm, stride_kb, stride_kn, stride_vb, stride_vn,
                               stride_ob, stride_om, L, S, E, EV, qk_scale, window_left, window_right,
                               IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, IEEE: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                               BLOCK_DV: tl.constexpr):
    """dK and dV of one key block (FlashAttention-2, Algorithm 2): walk the query blocks that may see
    it, recompute P = exp(S - lse) from the forward's log-sum-exp, and gather P^T dO and dS^T Q."""
    start_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    cols = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_rows(K + bh * stride_kb, cols, S, E, stride_kn, BLOCK_D)  # (BLOCK_N, BLOCK_D)
    v = _load_rows(V + bh * stride_vb, cols, S, EV, stride_vn, BLOCK_DV)  # (BLOCK_N, BLOCK_DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    # The queries that may see some key of this block: [lo, hi).
    first_key = start_n * BLOCK_N
    last_key = tl.minimum(first_key + BLOCK_N, S) - 1
    lo = 0
    hi = L
    if IS_CAUSAL:
        lo = first_key
    if HAS_WINDOW:
        lo = tl.maximum(lo, first_key - window_right)
        hi = tl.minimum(hi, last_key + window_left + 1)
    lo = lo - lo % BLOCK_M
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(Q + bh * stride_qb, rows, L, E, stride_qm, BLOCK_D)  # (BLOCK_M, BLOCK_D)
        do = _load_rows(DO + bh * stride_ob, rows, L, EV, stride_om, BLOCK_DV)  # (BLOCK_M, BLOCK_DV)
        lse = tl.load(LSE + bh * L + rows, mask=rows < L, other=float("-inf")) * 1.4426950408889634  # log2 units
        delta = tl.load(DELTA + bh * L + rows, mask=rows < L, other=0.0)  # (BLOCK_M,)
        p = _probabilities(q, k, lse, rows, cols, S, qk_scale, window_left, window_right, IS_CAUSAL, HAS_WINDOW, IEEE)
        dv += _dot(tl.trans(p), do, IEEE)
        ds = p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])  # softmax's backward: P ∘ (dP - D)
        dk += _dot(tl.trans(ds), q, IEEE)
    dk = dk * (qk_scale / 1.4426950408889634)  # the scale, back from log2 units
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    tl.store(DK + bh * stride_kb + cols[:, None] * stride_kn + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=(cols[:, None] < S) & (offs_d[None, :] < E))
    tl.store(DV + bh * stride_vb + cols[:, None] * stride_vn + offs_dv[None, :], dv.to(DV.dtype.element_ty),
             mask=(cols[:, None] < S) & (offs_dv[None, :] < EV))


def _backward_q_kernel_source(Q, K, V, DO, LSE, DELTA, DQ,  # noqa: ANN001, N803
                              stride_qb, stride_qm, stride_kb, stride_kn, stride_vb, stride_vn,
                              stride_ob, stride_om, L, S, E, EV, qk_scale, window_left, window_right,
                              IS_CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, IEEE: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_DV: tl.constexpr):
    """dQ of one query block: the key blocks it sees, as in the forward, gathering dS K (no atomics:
    one program owns each row of dQ)."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(Q + bh * stride_qb, rows, L, E, stride_qm, BLOCK_D)  # (BLOCK_M, BLOCK_D)
    do = _load_rows(DO + bh * stride_ob, rows, L, EV, stride_om, BLOCK_DV)  # (BLOCK_M, BLOCK_DV)
    lse = tl.load(LSE + bh * L + rows, mask=rows < L, other=float("-inf")) * 1.4426950408889634
    delta = tl.load(DELTA + bh * L + rows, mask=rows < L, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    first_query = start_m * BLOCK_M
    last_query = tl.minimum(first_query + BLOCK_M, L) - 1
    lo, hi = _key_range(first_query, last_query, S, window_left, window_right, IS_CAUSAL, HAS_WINDOW, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K + bh * stride_kb, cols, S, E, stride_kn, BLOCK_D)  # (BLOCK_N, BLOCK_D)
        v = _load_rows(V + bh * stride_vb, cols, S, EV, stride_vn, BLOCK_DV)  # (BLOCK_N, BLOCK_DV)
        p = _probabilities(q, k, lse, rows, cols, S, qk_scale, window_left, window_right, IS_CAUSAL, HAS_WINDOW, IEEE)
        ds = p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])
        dq += _dot(ds, k, IEEE)
    dq = dq * (qk_scale / 1.4426950408889634)
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(DQ + bh * stride_qb + rows[:, None] * stride_qm + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=(rows[:, None] < L) & (offs_d[None, :] < E))


def _skeleton_kernel_source(Q, K, V, O, L, S, E, qk_scale,  # noqa: ANN001, N803
                            IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_D: tl.constexpr, STEP: tl.constexpr):
    """The lesson's readable kernel: everything but the inner step, which ``STEP`` computes.

    q (L, E), k (S, E), v (S, E) of one head, contiguous. STEP(q, k, v, m_i, l_i, acc, allowed,
    qk_scale) -> (m_i, l_i, acc), with k already transposed to (BLOCK_D, BLOCK_N).
    """
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + bh * L * E + rows[:, None] * E + offs_d[None, :],
                mask=(rows[:, None] < L) & (offs_d[None, :] < E), other=0.0)  # (BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, S, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(K + bh * S * E + cols[None, :] * E + offs_d[:, None],
                    mask=(cols[None, :] < S) & (offs_d[:, None] < E), other=0.0)  # (BLOCK_D, BLOCK_N)
        v = tl.load(V + bh * S * E + cols[:, None] * E + offs_d[None, :],
                    mask=(cols[:, None] < S) & (offs_d[None, :] < E), other=0.0)  # (BLOCK_N, BLOCK_D)
        allowed = (cols[None, :] < S) & (rows[:, None] >= 0)  # (BLOCK_M, BLOCK_N)
        if IS_CAUSAL:
            allowed = allowed & (cols[None, :] <= rows[:, None])
        m_i, l_i, acc = STEP(q, k, v, m_i, l_i, acc, allowed, qk_scale)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(O + bh * L * E + rows[:, None] * E + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=(rows[:, None] < L) & (offs_d[None, :] < E))


def _reference_step_source(q, k, v, m_i, l_i, acc, allowed, qk_scale):  # noqa: ANN001, ANN201
    s = tl.dot(q, k) * qk_scale  # (BLOCK_M, BLOCK_N)
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@functools.cache
def _kernels(interpret: bool) -> dict:
    """Decorate the kernels now (TRITON_INTERPRET is read at decoration); one set per mode."""
    load_triton()
    # The kernels' helpers, called by name from inside them: Triton finds them among this module's globals.
    global _key_range, _visible, _load_rows, _dot, _probabilities
    _key_range, _visible, _load_rows, _dot, _probabilities = (
        triton.jit(f) for f in (_key_range_source, _visible_source, _load_rows_source, _dot_source,
                                _probabilities_source))
    return {
        "fast": triton.jit(_fast_kernel_source),
        "backward_kv": triton.jit(_backward_kv_kernel_source),
        "backward_q": triton.jit(_backward_q_kernel_source),
        "skeleton": triton.jit(_skeleton_kernel_source),
        "reference_step": triton.jit(_reference_step_source),
    }


def _kernel(name: str):  # noqa: ANN202
    return _kernels(interpreted())[name]


def _power_of_two(n: int, at_least: int = 16) -> int:
    return max(at_least, 1 << max(0, (n - 1).bit_length()))


def flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False,
                  scale: float | None = None, window: tuple[int, int] | None = None,
                  block_m: int | None = None, block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` for q (..., L, E), k (..., S, E), v (..., S, Ev) with equal batch shapes.

    On the GPU: BLOCK_M 128, BLOCK_N 64, 8 warps, 3 stages. In the interpreter: small blocks.
    float32 inputs are multiplied in IEEE float32 (no TF32), so results match the PyTorch path.
    """
    load_triton()
    batch, L, S, E, Ev = q.shape[:-2], q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    qf, kf, vf = (x.reshape(-1, *x.shape[-2:]).contiguous() for x in (q, k, v))  # (BH, L|S, E|Ev)
    bh = qf.shape[0]
    out = torch.empty(bh, L, Ev, dtype=q.dtype, device=q.device)
    lse = torch.empty(bh, L, dtype=torch.float32, device=q.device)
    if interpreted():
        block_m, block_n, options = block_m or 32, block_n or 32, {}
    else:
        block_m, block_n = block_m or 128, block_n or 64
        options = {"num_warps": 8 if E > 64 or block_m >= 128 else 4, "num_stages": 3}
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    left, right = window if window is not None else (0, 0)
    if bh and L:
        grid = (triton.cdiv(L, block_m), bh)
        _kernel("fast")[grid](
            qf, kf, vf, out, lse,
            qf.stride(0), qf.stride(1), kf.stride(0), kf.stride(1), vf.stride(0), vf.stride(1),
            out.stride(0), out.stride(1),
            L, S, E, Ev, scale * LOG2_E, left, right,
            IS_CAUSAL=is_causal, HAS_WINDOW=window is not None, IEEE=q.dtype == torch.float32,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_power_of_two(E), BLOCK_DV=_power_of_two(Ev),
            **options,
        )
    return out.reshape(*batch, L, Ev), lse.reshape(*batch, L)


def flash_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                   grad_out: torch.Tensor, is_causal: bool = False, scale: float | None = None,
                   window: tuple[int, int] | None = None,
                   block_m: int | None = None, block_n: int | None = None) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv)`` from what the forward saved: q (..., L, E), k (..., S, E), v (..., S, Ev), its
    output and its ``lse`` (..., L), and the output's gradient. Two kernels, no atomics: one program per
    key block gathers dK and dV over the query blocks that see it; one per query block gathers dQ.
    ``delta = rowsum(dO ∘ O)`` (FlashAttention-2's D_i) is computed first, in PyTorch: (..., L)."""
    load_triton()
    batch, L, S, E, Ev = q.shape[:-2], q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    qf, kf, vf, gf = (x.reshape(-1, *x.shape[-2:]).contiguous() for x in (q, k, v, grad_out))  # (BH, L|S, E|Ev)
    lse_f = lse.reshape(-1, L).contiguous().float()  # (BH, L)
    delta = (grad_out.float() * out.float()).sum(dim=-1).reshape(-1, L).contiguous()  # (BH, L)
    bh = qf.shape[0]
    dq, dk, dv = torch.empty_like(qf), torch.empty_like(kf), torch.empty_like(vf)
    if interpreted():
        block_m, block_n, options = block_m or 32, block_n or 32, {}
    else:
        block_m, block_n = block_m or 64, block_n or 64
        options = {"num_warps": 8 if E > 64 else 4, "num_stages": 2}
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    left, right = window if window is not None else (0, 0)
    common = dict(IS_CAUSAL=is_causal, HAS_WINDOW=window is not None, IEEE=q.dtype == torch.float32,
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=_power_of_two(E), BLOCK_DV=_power_of_two(Ev), **options)
    strides = (qf.stride(0), qf.stride(1), kf.stride(0), kf.stride(1), vf.stride(0), vf.stride(1),
               gf.stride(0), gf.stride(1), L, S, E, Ev, scale * LOG2_E, left, right)
    if bh and S:
        _kernel("backward_kv")[(triton.cdiv(S, block_n), bh)](qf, kf, vf, gf, lse_f, delta, dk, dv, *strides, **common)
    if bh and L:
        _kernel("backward_q")[(triton.cdiv(L, block_m), bh)](qf, kf, vf, gf, lse_f, delta, dq, *strides, **common)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


def skeleton_forward(step, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # noqa: ANN001
                     is_causal: bool = False, scale: float | None = None, block: int = 16) -> torch.Tensor:
    """Run the lesson's skeleton kernel with ``step`` (a ``@triton.jit`` function; None: the
    course's own) as its inner loop. q, k, v: (..., L, E), (..., S, E), (..., S, E), same batch."""
    load_triton()
    step = _kernel("reference_step") if step is None else step
    name = getattr(getattr(step, "fn", step), "__name__", "step")
    if not hasattr(step, "fn"):  # a JITFunction, or an InterpretedFunction, keeps the Python function
        raise TypeError(f"`{name}` is a plain Python function: decorate it with @triton.jit, so that it runs "
                        "inside the kernel")
    batch, L, S, E = q.shape[:-2], q.shape[-2], k.shape[-2], q.shape[-1]
    qf, kf, vf = (x.reshape(-1, *x.shape[-2:]).contiguous() for x in (q, k, v))
    out = torch.empty_like(qf)
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    if qf.shape[0] and L:
        grid = (triton.cdiv(L, block), qf.shape[0])
        try:
            _kernel("skeleton")[grid](qf, kf, vf, out, L, S, E, scale * LOG2_E, IS_CAUSAL=is_causal,
                                      BLOCK_M=block, BLOCK_N=block, BLOCK_D=_power_of_two(E), STEP=step)
        except Exception as error:  # noqa: BLE001 - said in words, without Triton's traceback
            raise _in_words(error, step, name) from None
    return out.reshape(*batch, L, E)


def skeleton_attention(step, block: int = 16):  # noqa: ANN001, ANN201
    """``attention(q, k, v, is_causal=False, scale=None)`` that runs the skeleton kernel with ``step``
    as its inner loop, in blocks of ``block``. A ``step`` that is not a ``@triton.jit`` function (a plain
    Python step, or a whole attention function passed in its place) gives a function that refuses in
    words when called, so that only a kernel step earns the exercise's points.

    Lesson 08's check adapts the student's step with it in the notebook's kernel, and the grader's
    replay worker (which loads this file from beside it, without course_lib) does the same outside it.
    """
    if hasattr(step, "fn"):  # a JITFunction, or Triton's InterpretedFunction, keeps the Python function

        def skeleton_with_your_step(q, k, v, is_causal=False, scale=None):  # noqa: ANN001, ANN202
            return skeleton_forward(step, q, k, v, is_causal=is_causal, scale=scale, block=block)

        return skeleton_with_your_step
    name = getattr(step, "__name__", "your step")

    def not_a_kernel_function(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise TypeError(f"`{name}` is not a Triton kernel function: write the step as `def flash_block_step(...)` "
                        "decorated with @triton.jit (the line above `def`), so that it runs inside the kernel")

    return not_a_kernel_function


class KernelStepError(RuntimeError):
    """A student's step that Triton cannot compile, or that fails inside the kernel."""


def _in_words(error: Exception, step, name: str) -> Exception:  # noqa: ANN001
    """The error of a step, as a sentence (NotImplementedError stays one, for the checks)."""
    causes, cause = [], error
    while cause is not None and len(causes) < 8:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(c) for c in causes)
    unfinished = any(isinstance(c, NotImplementedError) for c in causes) or "NotImplementedError" in text
    if unfinished:
        return NotImplementedError(f"your `{name}` still raises NotImplementedError")
    detail = next((line.strip() for c in causes for line in str(c).splitlines()
                   if line.strip() and not line.startswith(("  File", "Traceback"))), type(error).__name__)
    compile_error = next((c for c in causes if type(c).__name__ == "CompilationError"), None)
    if compile_error is not None:  # "at LINE:COL:", the source, a caret, then the message last
        lines = [line for line in str(compile_error).strip().splitlines() if line.strip()]
        where = f" ({lines[0].rstrip(':')} of the kernel or your step)" if lines and lines[0].startswith("at ") else ""
        return KernelStepError(f"Triton could not compile your `{name}`: {lines[-1].strip()[:300] if lines else detail}"
                               f"{where}")
    return KernelStepError(f"your `{name}` failed inside the kernel: {detail[:300]}")
