"""Lesson 08 — FlashAttention: ``online_softmax_stats``, ``flash_attention`` (the tiled forward in
PyTorch) and ``flash_block_step`` (the inner step of the lesson's Triton kernel: a ``@triton.jit``
function, checked by running the provided skeleton kernel with it — in Triton's CPU interpreter
without a GPU, compiled on one).

The known mistakes are the reference computations with one knob turned (``online_variant``,
``flash_variant``): forgetting to rescale by exp(m_old - m_new), not updating l, dividing by l per
block, a causal mask off by one, a ragged last block dropped. The tiled forward is also held to a
peak-memory bound linear in L (tracked storages: a list of tiles counts as much as one tensor).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from course_lib import attention, runtime
from course_lib.attention import flash_triton
from course_lib.grading import compare
from course_lib.grading.forbidden import PYTORCH_SDPA, SOFTMAX_ROUTES
from course_lib.grading.framework import Behaviour, Case, Exercise, Mistake, Requirement, variant
from course_lib.shortcuts import Forbidden

_REFERENCES = Forbidden(references=(
    attention.softmax, attention.attention_weights, attention.scaled_dot_product_attention,
    attention.flash_attention, attention.online_softmax_stats,
))
# logcumsumexp's last entry along a row is the row's logsumexp (a red team's way past the first list).
_LOGSUMEXP = Forbidden(functions={
    torch.logsumexp: "it computes m + log l in one call",
    torch.Tensor.logsumexp: "it computes m + log l in one call",
    torch.special.logsumexp: "it computes m + log l in one call",
    torch.logcumsumexp: "its last entry is m + log l, in one call",
    torch.Tensor.logcumsumexp: "its last entry is m + log l, in one call",
}, operators={
    "logsumexp": "it computes m + log l in one call",
    "logcumsumexp": "its last entry is m + log l, in one call",
    "_logcumsumexp": "its last entry is m + log l, in one call",
}, native=("logsumexp", "logcumsumexp"))


def _size(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=gen))


# --- the online softmax ---------------------------------------------------------------------------


def online_variant(
    x: torch.Tensor,
    block_size: int = 4,
    *,
    rescale: Literal["old_sum", "none", "inverted"] = "old_sum",  # what multiplies the sum so far
    maximum: Literal["running", "block"] = "running",  # m: over everything seen, or the last block only
    start: Literal["-inf", "zero"] = "-inf",  # m before the first block
    guard: Literal["yes", "no"] = "yes",  # a block that is all -inf (m still -inf): exp(-inf - -inf)
    shift: Literal["max", "none"] = "max",  # whether the exponentials subtract m
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, l)`` of the online softmax, with knobs; each knob's first value is the right one."""
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    m = torch.full(x.shape[:-1], -math.inf if start == "-inf" else 0.0, dtype=work, device=x.device)
    l = torch.zeros(x.shape[:-1], dtype=work, device=x.device)
    for j0 in range(0, x.shape[-1], block_size):
        block = x[..., j0:j0 + block_size].to(work)
        m_new = block.amax(dim=-1) if maximum == "block" else torch.maximum(m, block.amax(dim=-1))
        m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new)) if guard == "yes" else m_new
        if shift == "none":
            l = l + torch.exp(block).sum(dim=-1)
        else:
            factor = {"old_sum": torch.exp(m - m_safe), "none": torch.ones_like(m),
                      "inverted": torch.exp(m_safe - m)}[rescale]
            l = factor * l + torch.exp(block - m_safe[..., None]).sum(dim=-1)
        m = m_new
    return m.to(x.dtype), l.to(x.dtype)


ONLINE_MISTAKES = (
    Mistake(
        "a block whose entries are all -inf gives NaN (exp(-inf - (-inf)))",
        "while m is still -inf (every entry so far masked), x - m and m_old - m_new are -inf - (-inf) = NaN; "
        "subtract 0 instead where m_new is not finite: torch.where(torch.isfinite(m_new), m_new, 0)",
        variant(online_variant, guard="no"),
    ),
    Mistake(
        "the sum so far is not rescaled when the maximum grows",
        "l was gathered as Σ exp(x - m_old); once the maximum is m_new, multiply it by exp(m_old - m_new) "
        "before adding the new block: l = exp(m_old - m_new) * l + Σ exp(x_block - m_new)",
        variant(online_variant, rescale="none"),
    ),
    Mistake(
        "the sum so far is rescaled by exp(m_new - m_old), the wrong way round",
        "m_new >= m_old, so the old terms shrink: multiply l by exp(m_old - m_new), a number <= 1",
        variant(online_variant, rescale="inverted"),
    ),
    Mistake(
        "m is the last block's maximum, not the running maximum",
        "m_new = torch.maximum(m_old, block.amax(dim=-1)): the maximum of everything seen so far",
        variant(online_variant, maximum="block"),
    ),
    Mistake(
        "m starts at 0 instead of -inf",
        "a row whose entries are all negative has a maximum below 0; start from "
        "torch.full(..., float('-inf')) so that the first block sets m",
        variant(online_variant, start="zero"),
    ),
    Mistake(
        "the exponentials do not subtract the maximum, so they overflow",
        "in float32 exp(x) is inf above x = 88.7: sum exp(x_block - m_new), not exp(x_block)",
        variant(online_variant, shift="none"),
    ),
)


def _online_cases(gen: torch.Generator) -> list[Case]:
    def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return runtime.randn(*shape, gen=gen, dtype=dtype)

    rows, cols = _size(gen, 3, 5), _size(gen, 9, 15)
    rising = 1000.0 + 3.0 * torch.arange(cols, dtype=torch.float64) + rand(rows, cols, dtype=torch.float64)
    falling = -1000.0 - 3.0 * torch.arange(cols, dtype=torch.float64) + rand(rows, cols, dtype=torch.float64)
    offsets = 120.0 * torch.arange(rows, dtype=torch.float64).unsqueeze(-1)  # (rows, 1)
    masked = rand(rows, cols, dtype=torch.float64)
    masked[0, :5] = float("-inf")  # the first block, and then some, masked
    masked[1, ::2] = float("-inf")
    return [
        Case(f"one row of {cols}, blocks of 4 (the last one shorter)", (rand(cols),), {"block_size": 4}),
        Case("a batch of rows, blocks of 5", (rand(2, rows, cols),), {"block_size": 5}),
        Case("huge values, the maximum growing from block to block (about 1000)", (rising.float(),),
             {"block_size": 3}),
        Case("huge negative values (about -1000)", (falling.float(),), {"block_size": 4}),
        Case("rows at very different levels", ((offsets + rand(rows, cols, dtype=torch.float64)).float(),),
             {"block_size": 4}),
        Case("masked entries (-inf), a whole first block masked", (masked,), {"block_size": 4}),
        Case("block_size=1", (rand(rows, cols, dtype=torch.float64),), {"block_size": 1}),
        Case("one block larger than the row", (rand(rows, cols),), {"block_size": 64}),
    ]


ONLINE_SOFTMAX_STATS = Exercise(
    name="online_softmax_stats",
    reference=attention.online_softmax_stats,
    make_cases=_online_cases,
    mistakes=ONLINE_MISTAKES,
    forbidden=SOFTMAX_ROUTES | PYTORCH_SDPA | _LOGSUMEXP | _REFERENCES,
    output_names=("m", "l"),
)


# --- the tiled forward in PyTorch -----------------------------------------------------------------


def flash_variant(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_size: int | None = None,
    *,
    rescale_output: Literal["yes", "no"] = "yes",  # acc *= exp(m_old - m_new)
    rescale_sum: Literal["yes", "no", "never_updated"] = "yes",  # l = exp(m_old - m_new) * l + rowsum(P)
    normalise: Literal["end", "per_block"] = "end",  # divide by l once at the end, or at every block
    causal: Literal["top_left", "no_diagonal", "one_ahead", "ignore"] = "top_left",
    ragged: Literal["keep", "drop_queries", "drop_keys"] = "keep",  # a last block shorter than block_size
    scaling: Literal["given", "ignore_argument", "log2"] = "given",
    masked_padding: Literal["yes", "no"] = "yes",  # no: keys padded with zeros to a whole block count
) -> torch.Tensor:
    """The tiled forward with knobs (float64 inside); each knob's first value is the right one."""
    B = block_size or 16
    E, dtype = q.shape[-1], q.dtype
    if scale is None or scaling == "ignore_argument":
        scale = 1.0 / math.sqrt(E)
    if scaling == "log2":  # exp where the kernel meant exp2: scores in log2 units
        scale = scale / math.log(2.0)
    q, k, v = (x.double() for x in attention.flash._batched(q, k, v))
    L, S = q.shape[-2], k.shape[-2]
    if masked_padding == "no" and S % B:
        pad = B - S % B
        k = torch.cat([k, k.new_zeros(*k.shape[:-2], pad, E)], dim=-2)
        v = torch.cat([v, v.new_zeros(*v.shape[:-2], pad, v.shape[-1])], dim=-2)
        S += pad
        if causal == "top_left":
            causal = "ignore"
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64, device=q.device)
    query_end = L - L % B if ragged == "drop_queries" else L
    key_end = S - S % B if ragged == "drop_keys" and S > B else S
    for i0 in range(0, query_end, B):
        rows = torch.arange(i0, min(i0 + B, L), device=q.device)
        q_block = q[..., i0:i0 + B, :] * scale
        m = torch.full(q_block.shape[:-1], -math.inf, dtype=torch.float64, device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(*q_block.shape[:-1], v.shape[-1], dtype=torch.float64, device=q.device)
        for j0 in range(0, key_end, B):
            cols = torch.arange(j0, min(j0 + B, key_end), device=q.device)
            s = q_block @ k[..., cols, :].transpose(-2, -1)
            if is_causal and causal != "ignore":
                offset = {"top_left": 0, "no_diagonal": -1, "one_ahead": 1}[causal]
                s = s.masked_fill(cols[None, :] > rows[:, None] + offset, -math.inf)
            m_new = torch.maximum(m, s.amax(dim=-1))
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p = torch.exp(s - m_safe[..., None])
            alpha = torch.exp(m - m_safe)
            if rescale_sum == "yes":
                l = alpha * l + p.sum(dim=-1)
            elif rescale_sum == "no":
                l = l + p.sum(dim=-1)
            elif j0 == 0:
                l = p.sum(dim=-1)  # set once, from the first block, never updated
            contribution = p @ v[..., cols, :]
            if normalise == "per_block":
                contribution = contribution / torch.where(l > 0, l, torch.ones_like(l))[..., None]
            acc = (alpha[..., None] * acc if rescale_output == "yes" else acc) + contribution
            m = m_new
        if normalise == "end":
            acc = acc / torch.where(l > 0, l, torch.ones_like(l))[..., None]
        out[..., i0:i0 + B, :] = acc
    return out.to(dtype)


def _flash_mistake(**knobs: object):  # noqa: ANN202
    return variant(flash_variant, **knobs)


_RESCALE_OUTPUT_HINT = (
    "acc holds Σ exp(s - m_old) v; when the maximum grows to m_new, multiply acc by exp(m_old - m_new) "
    "(as you do l) before adding P @ V of the new block"
)
_RESCALE_SUM_HINT = "l = exp(m_old - m_new) * l + P.sum(dim=-1): the old sum was taken with the old maximum"
_NEVER_UPDATED_HINT = "every key block adds to l: l = exp(m_old - m_new) * l + P.sum(dim=-1), inside the loop"
_PER_BLOCK_HINT = ("keep acc unnormalised (Σ exp(s - m) v) through the whole loop and divide by l once, after "
                   "the last key block: earlier blocks were divided by a smaller l")
_RAGGED_QUERIES_HINT = ("range(0, L, block_size) and slices q[..., i:i + block_size] handle a shorter last block; "
                        "L // block_size blocks leave the last L % block_size queries out")
_RAGGED_KEYS_HINT = "loop over range(0, S, block_size): S // block_size blocks leave the last keys out"


def _flash_mistakes() -> tuple[Mistake, ...]:
    return (
        Mistake("wrong when L is not a multiple of the block size (the last, shorter query block is dropped)",
                _RAGGED_QUERIES_HINT, _flash_mistake(ragged="drop_queries")),
        Mistake("the last, shorter key block is dropped", _RAGGED_KEYS_HINT, _flash_mistake(ragged="drop_keys")),
        Mistake("the causal mask hides the diagonal (off by one)",
                "query i may attend keys 0..i inclusive: mask where key > query, not key >= query",
                _flash_mistake(causal="no_diagonal")),
        Mistake("the causal mask lets each query see one key ahead (off by one)",
                "query i may attend keys j <= i: mask where key > query, not key > query + 1",
                _flash_mistake(causal="one_ahead")),
        Mistake("`is_causal` is ignored",
                "with is_causal=True mask (fill -inf) where the key's position exceeds the query's, in each tile "
                "(the positions are i0 + row and j0 + column)",
                _flash_mistake(causal="ignore")),
        Mistake("the accumulated output is not rescaled by exp(m_old - m_new)", _RESCALE_OUTPUT_HINT,
                _flash_mistake(rescale_output="no")),
        Mistake("the running sum l is not rescaled by exp(m_old - m_new)", _RESCALE_SUM_HINT,
                _flash_mistake(rescale_sum="no")),
        Mistake("the running sum l is not updated after the first key block", _NEVER_UPDATED_HINT,
                _flash_mistake(rescale_sum="never_updated")),
        Mistake("divides by l at every block instead of once at the end", _PER_BLOCK_HINT,
                _flash_mistake(normalise="per_block")),
        Mistake("the `scale` argument is ignored", "use `scale` when it is given, and 1/sqrt(E) only when it is None",
                _flash_mistake(scaling="ignore_argument")),
    )


def _flash_cases(gen: torch.Generator) -> list[Case]:
    def qkv(batch: tuple[int, ...], L: int, S: int, E: int, Ev: int, dtype=torch.float32) -> tuple:
        return (runtime.randn(*batch, L, E, gen=gen, dtype=dtype), runtime.randn(*batch, S, E, gen=gen, dtype=dtype),
                runtime.randn(*batch, S, Ev, gen=gen, dtype=dtype))

    block = 4 * _size(gen, 2, 4)  # 8, 12 or 16
    L = block * _size(gen, 2, 3) + _size(gen, 1, block - 1)  # not a multiple of the block
    S = block * _size(gen, 2, 4) + _size(gen, 1, block - 1)
    E, Ev = 4 * _size(gen, 2, 4), _size(gen, 3, 8)
    whole = block * 3
    return [
        Case(f"L = S = {whole}, whole blocks of {block}", qkv((2,), whole, whole, E, Ev), {"block_size": block}),
        Case(f"L = {L}, S = {whole}: L not a multiple of the block ({block})", qkv((2,), L, whole, E, Ev),
             {"block_size": block}),
        Case(f"L = {whole}, S = {S}: S not a multiple of the block ({block})", qkv((2,), whole, S, E, Ev),
             {"block_size": block}),
        Case("batch and heads (2, 3), ragged blocks", qkv((2, 3), L, S, E, Ev), {"block_size": block}),
        Case("is_causal, L = S", qkv((2,), L, L, E, Ev), {"is_causal": True, "block_size": block}),
        Case("is_causal, L < S", qkv((2,), L, S + block, E, Ev), {"is_causal": True, "block_size": block}),
        Case("is_causal, L > S", qkv((2,), S + block, S, E, Ev), {"is_causal": True, "block_size": block}),
        Case("scale=0.3", qkv((2,), L, S, E, Ev), {"scale": 0.3, "block_size": block}),
        Case("one block larger than L and S", qkv((2,), 5, 7, E, Ev), {"block_size": 64}),
        Case("float64, large scores", tuple(8.0 * x for x in qkv((2,), L, S, E, Ev, torch.float64)),
             {"is_causal": True, "block_size": block}),
    ]


MEMORY_L, MEMORY_E, MEMORY_BLOCK = 2048, 16, 64
# The bound: this many times (L + S)·(E + Ev + block)·itemsize — 6 MiB, against 16 MiB for the scores —
# room for a strip of (L, block) scores in float64, or for copies of q, k and v.
MEMORY_FACTOR = 4


def _memory_is_linear(call, device: torch.device, gen: torch.Generator) -> str | None:
    """At L = S = 2048, E = Ev = 16, block 64, float32: the right answer, using memory within
    4·(L+S)·(E+Ev+block)·4."""
    q, k, v = (runtime.randn(1, MEMORY_L, MEMORY_E, gen=gen, device=device) for _ in range(3))
    out, used_bytes = call.measured(q, k, v, block_size=MEMORY_BLOCK)
    # The answer is checked at this size too: a function that computes something cheaper only here
    # (a compact, wrong result when L is large) would pass the bound without being a tiled forward.
    wrong = compare.compare_leaf(out, attention.scaled_dot_product_attention(q, k, v), device)
    if wrong is not None:
        return f"at L = S = {MEMORY_L}, E = Ev = {MEMORY_E}, block_size={MEMORY_BLOCK} (float32): {wrong.problem}"
    bound = MEMORY_FACTOR * 2 * MEMORY_L * (2 * MEMORY_E + MEMORY_BLOCK) * 4
    if used_bytes <= bound:
        return None
    mib = 1 << 20
    return (
        f"at L = S = {MEMORY_L}, E = Ev = {MEMORY_E}, block_size={MEMORY_BLOCK} (float32) your function used "
        f"{used_bytes / mib:.1f} MiB of memory; the (L, S) scores alone are "
        f"{MEMORY_L * MEMORY_L * 4 / mib:.0f} MiB, and a tiled forward needs at most {bound / mib:.1f} MiB "
        f"({MEMORY_FACTOR}·(L + S)·(E + Ev + block)·4 bytes). Keep one (block, block) tile at a time: no (L, S) "
        "tensor, and no list of tiles or per-block outputs kept to be combined later — write each query "
        "block's output into a tensor allocated once"
    )


FLASH_ATTENTION = Exercise(
    name="flash_attention",
    reference=attention.flash_attention,
    make_cases=_flash_cases,
    mistakes=_flash_mistakes(),
    forbidden=SOFTMAX_ROUTES | PYTORCH_SDPA | _LOGSUMEXP | _REFERENCES,
    behaviours=(Behaviour("peak memory linear in the sequence length", _memory_is_linear),),
    depends_on=(ONLINE_SOFTMAX_STATS,),
    timeout_s=60.0,
)


# --- the Triton kernel's inner step ---------------------------------------------------------------


TRITON = Requirement(
    "Triton",
    flash_triton.available,
    "install it with pip install 'course_lib[triton]' (Linux or WSL; Triton has no macOS wheels)",
)
SKELETON_BLOCK = 16


def _triton_mistake(**knobs: object):  # noqa: ANN202
    wrong = _flash_mistake(**knobs)

    def mistake(q, k, v, is_causal=False, scale=None):  # noqa: ANN001, ANN202
        return wrong(q, k, v, is_causal, scale, SKELETON_BLOCK)

    return mistake


TRITON_MISTAKES = (
    Mistake("`allowed` is not applied: padded keys past S and, with is_causal, future keys get weight",
            "s = tl.where(allowed, s, float('-inf')) before the maximum: the skeleton loads zeros past S and "
            "`allowed` is False there (and above the diagonal when causal)",
            _triton_mistake(masked_padding="no")),
    Mistake("the accumulated output is not rescaled by exp(m_old - m_new)", _RESCALE_OUTPUT_HINT.replace(
        "exp(", "exp2(").replace("multiply acc", "multiply acc (acc * alpha[:, None])"),
            _triton_mistake(rescale_output="no")),
    Mistake("the running sum l is not rescaled by exp(m_old - m_new)",
            "l_i = l_i * alpha + tl.sum(p, 1), with alpha = tl.math.exp2(m_i - m_new)",
            _triton_mistake(rescale_sum="no")),
    Mistake("tl.exp is used, but the skeleton's qk_scale is in log2 units (exp2)",
            "qk_scale already includes log2(e) = 1.4427, so exponentiate with tl.math.exp2, which GPUs compute "
            "natively: 2^(x·log2 e) = e^x",
            _triton_mistake(scaling="log2")),
)


def _triton_cases(gen: torch.Generator) -> list[Case]:
    def qkv(batch: tuple[int, ...], L: int, S: int, E: int) -> tuple:
        return tuple(runtime.randn(*batch, n, E, gen=gen) for n in (L, S, S))

    L, S = _size(gen, 17, 30), _size(gen, 33, 45)
    return [
        Case("L = S = 32 (whole blocks of 16)", qkv((2,), 32, 32, 16)),
        Case(f"L = {L}, S = {S} (ragged blocks)", qkv((2,), L, S, 16)),
        Case(f"is_causal, L = S = {S}", qkv((1,), S, S, 16), {"is_causal": True}),
        Case(f"is_causal, L = {L} < S = {S}", qkv((1,), L, S, 16), {"is_causal": True}),
        Case("scale=0.3, E = 8 (padded to 16 by the skeleton)", qkv((2,), L, S, 8), {"scale": 0.3}),
    ]


def _run_in_the_skeleton(step: Any) -> Any:
    """A ``@triton.jit`` step becomes attention(q, k, v, is_causal, scale) through the skeleton kernel
    (``flash_triton.skeleton_attention``, which the replay worker uses outside the kernel too). The
    exercise's own known mistakes (plain functions, by identity) are called as they are."""
    if any(step is mistake.function for mistake in TRITON_MISTAKES):
        return step
    return flash_triton.skeleton_attention(step, SKELETON_BLOCK)


FLASH_BLOCK_STEP = Exercise(
    name="flash_block_step",
    reference=attention.flash_attention,
    make_cases=_triton_cases,
    mistakes=TRITON_MISTAKES,
    forbidden=PYTORCH_SDPA | _REFERENCES,
    requires=(TRITON,),
    adapt=_run_in_the_skeleton,
    adapt_outside=("flash_triton", "skeleton_attention", {"block": SKELETON_BLOCK}),
    timeout_s=120.0,
    # A GPU's tl.dot multiplies float32 in TF32 (10-bit mantissas) by default: looser than float32
    # (every known mistake is off by far more).
    tolerances={torch.float32: runtime.Tolerance(rtol=2e-2, atol=1e-2)},
)

EXERCISES = (ONLINE_SOFTMAX_STATS, FLASH_ATTENTION, FLASH_BLOCK_STEP)
