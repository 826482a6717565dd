"""Lesson 05 — scaled dot-product attention: ``softmax``, ``attention_weights``,
``scaled_dot_product_attention``.

Each known mistake is the reference computation with one knob turned the wrong way
(``softmax_variant``, ``weights_variant``; knobs are typed, and ``variant`` rejects a misspelt
one): one implementation, many mistakes, no copies. The order of a mistake list matters: the first
mistake whose output matches the student's names it, so a mistake that only differs on rare
inputs is listed before the broader ones.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from course_lib import attention, runtime
from course_lib.grading.forbidden import PYTORCH_SDPA, SOFTMAX_ROUTES
from course_lib.grading.framework import Behaviour, Case, Exercise, Mistake, variant
from course_lib.shortcuts import Forbidden

# --- softmax ------------------------------------------------------------------------------------


def softmax_variant(
    x: torch.Tensor,
    dim: int = -1,
    *,
    over: Literal["dim", "last", "first", "all"] = "dim",  # which axis is normalised (ignoring `dim`)
    shift: Literal["dim", "none", "all"] = "dim",  # which max is subtracted
    keepdim: Literal["both", "sum", "neither"] = "both",  # which reductions keep their dimension
    empty_rows: Literal["zero", "nan", "nan_to_num", "where_after"] = "zero",  # an all -inf row
) -> torch.Tensor:
    """Softmax with knobs. ``empty_rows``: "zero" guards the max and the sum (zeros, and zero
    gradients); "nan" gives 0/0; "nan_to_num" patches the NaN after the division and "where_after"
    picks zeros after dividing 0/0 — both right forwards, NaN backwards."""
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    axis = {"dim": dim, "last": -1, "first": 0, "all": dim}[over]
    dims = tuple(range(x.dim())) if over == "all" else (axis,)
    if shift == "dim":
        top = work.amax(dim=dims, keepdim=keepdim != "neither")  # without keepdim: broadcasts wrong
    elif shift == "all":
        top = work.amax().reshape([1] * x.dim())
    else:
        top = torch.zeros_like(work)
    if empty_rows == "zero" or empty_rows == "where_after":
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    exps = torch.exp(work - top)
    total = exps.sum(dim=dims, keepdim=keepdim == "both")  # without keepdim: broadcasts wrong
    if empty_rows == "zero":
        total = torch.where(total > 0, total, torch.ones_like(total))
    result = exps / total
    if empty_rows == "nan_to_num":
        result = result.nan_to_num(0.0)
    elif empty_rows == "where_after":
        result = torch.where(total > 0, result, torch.zeros_like(result))
    return result.to(x.dtype)


_NAN_GRADIENT_HINT = (
    "the forward pass is right, but the gradient of a fully masked row is NaN: 0/0 is computed and "
    "then hidden, and autograd still differentiates it (torch.where differentiates both branches; "
    "nan_to_num only hides the value). Never divide 0 by 0: guard the max and divide by "
    "torch.where(total > 0, total, torch.ones_like(total))"
)

SOFTMAX_MISTAKES = (
    Mistake(
        "a fully masked row (all -inf) gives NaN instead of zeros",
        "when every entry of a row is -inf, its max is -inf too, so x - max is -inf - (-inf) = NaN, "
        "and exp(NaN) is NaN; a query that may attend to nothing must give zeros, as PyTorch's SDPA "
        "does on the CPU — where the max is not finite subtract 0 instead, and where the sum is 0 "
        "divide by 1",
        variant(softmax_variant, empty_rows="nan"),
    ),
    *(
        Mistake("a fully masked row has NaN gradients (0/0 hidden after the division)", _NAN_GRADIENT_HINT,
                variant(softmax_variant, empty_rows=how))
        for how in ("nan_to_num", "where_after")
    ),
    *(
        Mistake(
            "reduced without keepdim=True, so the max or the sum broadcasts along the wrong axis",
            "x.amax(dim=dim) and x.sum(dim=dim) drop the dimension they reduce, and the result "
            "then lines up with the wrong axis of x; keep it with keepdim=True so each row is "
            "shifted by its own max and divided by its own sum",
            variant(softmax_variant, keepdim=keepdim, shift=shift),
        )
        for keepdim, shift in (("neither", "dim"), ("sum", "dim"), ("neither", "none"))
    ),
    Mistake(
        "the max is taken over the whole tensor, not along `dim`",
        "a row far below the overall maximum underflows to exp(...) = 0; subtract each row's own "
        "max: x.amax(dim=dim, keepdim=True)",
        variant(softmax_variant, shift="all"),
    ),
    Mistake(
        "normalised over the whole tensor, not along `dim` (the article's first softmax)",
        "np.sum(exp) without an axis adds up every entry; each row (each query) needs its own "
        "distribution: sum along `dim` only",
        variant(softmax_variant, over="all"),
    ),
    Mistake(
        "ignores `dim` and always normalises along the last axis",
        "use the `dim` argument in both the max and the sum",
        variant(softmax_variant, over="last"),
    ),
    Mistake(
        "ignores `dim` and always normalises along the first axis (dim=0 written in)",
        "use the `dim` argument in both the max and the sum instead of a fixed 0",
        variant(softmax_variant, over="first"),
    ),
    Mistake(
        "the max is taken over the whole tensor, not along `dim` (and an all -inf row gives NaN)",
        "a row far below the overall maximum underflows to exp(...) = 0 and gives 0/0; subtract "
        "each row's own max: x.amax(dim=dim, keepdim=True)",
        variant(softmax_variant, shift="all", empty_rows="nan"),
    ),
    Mistake(
        "no max subtraction, so exp overflows",
        "in float32 exp(x) is inf above x = 88.7, and inf/inf is NaN; subtract the max along `dim` "
        "first — it cancels in the ratio, so the result is mathematically the same",
        variant(softmax_variant, shift="none"),
    ),
)


def _softmax_cases(gen: torch.Generator) -> list[Case]:
    def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return runtime.randn(*shape, gen=gen, dtype=dtype)

    def size(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    n, rows, cols = size(4, 7), size(3, 5), size(6, 9)
    # Rows 120 apart: exp(-120) underflows float32 to 0, yet every value stays below 500, where
    # float32 still resolves 3e-5 (a correct softmax written another way keeps within tolerance).
    offsets = 120.0 * torch.arange(rows, dtype=torch.float64).unsqueeze(-1)  # (rows, 1)
    masked = rand(rows, cols, dtype=torch.float64)
    masked[0, : cols // 2] = float("-inf")
    masked[-1, :] = float("-inf")
    return [
        Case("the article's example", (torch.tensor([2.0, 1.0, 0.1], dtype=torch.float64),)),
        Case(f"square scores ({n}, {n})", (rand(n, n),)),
        Case("batch of scores, last axis", (rand(2, 3, rows, cols),)),
        Case("dim=0", (rand(cols, rows),), {"dim": 0}),
        Case("dim=1 of a 3-D tensor", (rand(2, cols, rows, dtype=torch.float64),), {"dim": 1}),
        Case("large scores (about 200)", (200.0 + 5.0 * rand(rows, cols),)),
        Case("rows at very different levels", ((offsets + rand(rows, cols, dtype=torch.float64)).float(),)),
        Case("masked entries and a fully masked row", (masked.float(),)),
        Case("bfloat16", (rand(rows, cols, dtype=torch.bfloat16),)),
        Case("float64, and its gradient", (rand(rows, cols, dtype=torch.float64),), check_gradients=True),
        Case("a fully masked row, and its gradient", (masked,), check_gradients=True),
    ]


_SDPA_REFERENCES = Forbidden(references=(attention.attention_weights, attention.scaled_dot_product_attention))

SOFTMAX = Exercise(
    name="softmax",
    reference=attention.softmax,
    make_cases=_softmax_cases,
    mistakes=SOFTMAX_MISTAKES,
    forbidden=SOFTMAX_ROUTES | PYTORCH_SDPA | Forbidden(references=(attention.softmax,)) | _SDPA_REFERENCES,
)


# --- attention weights --------------------------------------------------------------------------


def weights_variant(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    *,
    scaling: Literal["sqrt", "none", "linear", "ignore_argument", "divide_by_argument", "falsy"] = "sqrt",
    d_k: Literal["E", "L", "S", "first"] = "E",  # which size the default scale is taken from
    normalise: Literal["keys", "queries", "matrix"] = "keys",  # softmax along dim=-1, -2 or both
    scores: Literal["qk", "kq"] = "qk",  # Q Kᵀ or K Qᵀ
    bool_mask: Literal["allow", "block", "after_softmax", "ignore", "add"] = "allow",
    float_mask: Literal["add", "ignore", "multiply", "zero_is_blocked"] = "add",
    causal: Literal["top_left", "future", "no_diagonal", "bottom_right", "ignore", "add"] = "top_left",
    fill: float = float("-inf"),  # what masked scores become; a finite number is a mistake
    empty_rows: Literal["zero", "nan", "nan_to_num"] = "zero",
) -> torch.Tensor:
    """The attention weights with knobs; each knob's first value is the right one."""
    L, S = q.shape[-2], k.shape[-2]
    size = {"E": q.shape[-1], "L": L, "S": S, "first": q.shape[0]}[d_k]
    default = 1.0 / math.sqrt(size)
    if scaling == "falsy":  # `scale = scale or 1/sqrt(E)`: a scale of 0.0 becomes the default
        scale = scale or default
    elif scaling == "ignore_argument" or scale is None:
        scale = default
    if scaling == "none":
        scale = 1.0
    elif scaling == "linear":
        scale = 1.0 / size
    elif scaling == "divide_by_argument" and scale != default:
        scale = 1.0 / scale
    if scores == "kq":
        logits = torch.matmul(k, q.transpose(-2, -1)) * scale  # (..., S, L)
    else:
        logits = torch.matmul(q, k.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal and causal != "ignore":
        ones = torch.ones(L, S, dtype=torch.bool, device=q.device)
        attn_mask = {
            "top_left": ones.tril(),
            "future": ones.triu(),
            "no_diagonal": ones.tril(-1),
            "bottom_right": ones.tril(S - L),
            "add": ones.tril().to(q.dtype),  # (L, S) of 0/1, added below as a float mask
        }[causal]
    zero_after = None
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        if bool_mask == "after_softmax":
            zero_after = ~attn_mask
        elif bool_mask == "add":
            logits = logits + attn_mask.to(logits.dtype)
        elif bool_mask != "ignore":
            blocked = attn_mask if bool_mask == "block" else ~attn_mask
            logits = logits.masked_fill(blocked, fill)
    elif attn_mask is not None and float_mask == "add":
        logits = (logits + attn_mask).to(logits.dtype)
    elif attn_mask is not None and float_mask == "multiply":
        logits = (logits * attn_mask).to(logits.dtype)
    elif attn_mask is not None and float_mask == "zero_is_blocked":  # masked_fill(mask == 0, -inf)
        logits = logits.masked_fill(attn_mask == 0, fill)
    if normalise == "matrix":
        flat = softmax_variant(logits.flatten(-2), empty_rows=empty_rows)  # (..., L*S)
        weights = flat.reshape(logits.shape)  # (..., L, S)
    else:
        dim = -2 if normalise == "queries" else -1
        weights = softmax_variant(logits, dim=dim, empty_rows=empty_rows)
    if zero_after is not None:
        weights = weights.masked_fill(zero_after, 0.0)
    return weights


WEIGHT_MISTAKES = (
    Mistake(
        "the causal mask hides the diagonal (a token cannot see itself)",
        "query i may attend keys 0..i inclusive: torch.ones(L, S, dtype=torch.bool).tril()",
        variant(weights_variant, causal="no_diagonal"),
    ),
    Mistake(
        "the causal mask is aligned bottom-right",
        "PyTorch's is_causal is top-left aligned: query i sees keys j <= i, also when L != S — "
        "use tril() with no offset",
        variant(weights_variant, causal="bottom_right"),
    ),
    Mistake(
        "the causal mask leaks the future (query i sees keys j > i)",
        "keep the lower triangle, tril(), not the upper one, triu()",
        variant(weights_variant, causal="future"),
    ),
    Mistake(
        "a query whose keys are all masked gives NaN instead of zeros",
        "a row of scores that is all -inf must give weights of 0 (as PyTorch's SDPA does on the "
        "CPU); your softmax from exercise 1 does this once it passes check_softmax",
        variant(weights_variant, empty_rows="nan"),
    ),
    Mistake(
        "a query whose keys are all masked has NaN gradients",
        "the softmax you use gives NaN for an all -inf row and hides it afterwards (nan_to_num, or "
        "torch.softmax(...).nan_to_num()): the gradient is still NaN. Use your softmax from "
        "exercise 1 once it passes check_softmax",
        variant(weights_variant, empty_rows="nan_to_num"),
    ),
    Mistake(
        "masked scores are set to 0 instead of -inf",
        "a score of 0 still gets weight exp(0) after the softmax; a masked key must get none: fill "
        "with float('-inf'), so that exp(-inf) = 0",
        variant(weights_variant, fill=0.0),
    ),
    Mistake(
        "masked scores are set to a large negative number instead of -inf",
        "with -1e9 or finfo.min a query whose keys are all masked gets uniform weights 1/S "
        "instead of zeros; fill with float('-inf')",
        variant(weights_variant, fill=-1e9),
    ),
    Mistake(
        "`is_causal` is ignored",
        "with is_causal=True build torch.ones(L, S, dtype=torch.bool, device=q.device).tril() "
        "and use it as the mask (in scaled_dot_product_attention: pass is_causal on)",
        variant(weights_variant, causal="ignore"),
    ),
    Mistake(
        "the causal mask is added to the scores as 0/1 numbers",
        "a mask of ones and zeros added to the scores only shifts them by 1; use it as a boolean "
        "mask (masked_fill where it is False) or turn it into 0/-inf first",
        variant(weights_variant, causal="add"),
    ),
    Mistake(
        "the boolean attn_mask is ignored",
        "fill -inf where the mask is False (in scaled_dot_product_attention: pass attn_mask on)",
        variant(weights_variant, bool_mask="ignore"),
    ),
    Mistake(
        "the boolean attn_mask is added to the scores as 0/1 numbers",
        "a boolean mask says where attention is allowed: masked_fill the scores with -inf where "
        "it is False; only a float mask is added",
        variant(weights_variant, bool_mask="add"),
    ),
    Mistake(
        "the boolean mask is inverted (True treated as blocked)",
        "in PyTorch's SDPA convention True means 'may attend': fill -inf where the mask is False "
        "(scores.masked_fill(~attn_mask, float('-inf')))",
        variant(weights_variant, bool_mask="block"),
    ),
    Mistake(
        "the boolean mask is applied after the softmax (zeroed but not renormalised)",
        "set masked scores to -inf *before* the softmax, so the allowed weights still sum to 1",
        variant(weights_variant, bool_mask="after_softmax"),
    ),
    Mistake(
        "the float mask is treated as a boolean (masked_fill(attn_mask == 0, -inf))",
        "a float attn_mask is not 'allowed or not': it is *added* to the scores, where 0 keeps a "
        "score and -inf removes it; check attn_mask.dtype == torch.bool before using masked_fill",
        variant(weights_variant, float_mask="zero_is_blocked"),
    ),
    Mistake(
        "the float mask is ignored",
        "a floating-point attn_mask is added to the scores before the softmax",
        variant(weights_variant, float_mask="ignore"),
    ),
    Mistake(
        "the float mask is multiplied instead of added",
        "a floating-point attn_mask is *added* to the scores (0 keeps a score, -inf removes it)",
        variant(weights_variant, float_mask="multiply"),
    ),
    Mistake(
        "a `scale` of 0.0 is treated as not given (`scale or 1/sqrt(E)`)",
        "`or` replaces every false value, and 0.0 is false: test `if scale is None:` (PyTorch's "
        "scale=0.0 gives every key the same weight)",
        variant(weights_variant, scaling="falsy"),
    ),
    Mistake(
        "the `scale` argument is ignored",
        "use `scale` when it is given, and 1/sqrt(E) only when it is None",
        variant(weights_variant, scaling="ignore_argument"),
    ),
    Mistake(
        "divides by `scale` instead of multiplying by it",
        "PyTorch's `scale` is the factor the scores are multiplied by (its default is 1/sqrt(E))",
        variant(weights_variant, scaling="divide_by_argument"),
    ),
    Mistake(
        "missing scale (no division by sqrt(d_k))",
        "multiply the scores by scale = 1/sqrt(E), where E = q.shape[-1]",
        variant(weights_variant, scaling="none"),
    ),
    Mistake(
        "divided by d_k instead of sqrt(d_k)",
        "the default scale is 1/sqrt(E), not 1/E (Vaswani et al. 2017, Eq. 1)",
        variant(weights_variant, scaling="linear"),
    ),
    *(
        Mistake(
            "d_k is taken from the wrong dimension (it is q.shape[-1], the size of each query)",
            "q has shape (..., L, E): E = q.shape[-1] is d_k; q.shape[0] and q.shape[-2] count "
            "batch entries or queries, k.shape[-2] counts keys",
            variant(weights_variant, d_k=wrong),
        )
        for wrong in ("L", "S", "first")
    ),
    Mistake(
        "softmax over the query axis (dim=-2) instead of the key axis",
        "each query's weights over the keys must sum to 1: softmax along the last axis",
        variant(weights_variant, normalise="queries"),
    ),
    Mistake(
        "softmax over the whole matrix, not each row",
        "every query (row) needs its own distribution over the keys: normalise along dim=-1 only",
        variant(weights_variant, normalise="matrix"),
    ),
    Mistake(
        "the scores are transposed (K Qᵀ instead of Q Kᵀ)",
        "scores = q @ k.transpose(-2, -1): rows are queries (L), columns keys (S)",
        variant(weights_variant, scores="kq"),
    ),
)


def _attention_cases(gen: torch.Generator, with_values: bool) -> list[Case]:
    """Cases for attention_weights (q, k) and, ``with_values``, for SDPA (q, k, v)."""

    def size(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    def qkv(batch: tuple[int, ...], L: int, S: int, E: int, dtype=torch.float32) -> tuple:
        q = runtime.randn(*batch, L, E, gen=gen, dtype=dtype)
        k = runtime.randn(*batch, S, E, gen=gen, dtype=dtype)
        v = runtime.randn(*batch, S, size(3, 6), gen=gen, dtype=dtype)
        return (q, k, v) if with_values else (q, k)

    n, L, S, E = size(5, 7), size(3, 5), size(6, 9), 4 * size(3, 8)
    B, H = 2, size(2, 3)
    padding = torch.ones(B, 1, 1, S, dtype=torch.bool)  # (B, 1, 1, S): broadcast over heads, queries
    padding[1, ..., S - 2:] = False
    additive = torch.zeros(B, 1, L, S)
    additive[0, 0, :, 0] = float("-inf")
    additive[1] = runtime.randn(L, S, gen=gen)
    empty_row = torch.rand(L, S, generator=gen) > 0.4
    empty_row[:, 0] = True
    empty_row[L // 2] = False
    empty_float_row = runtime.randn(L, S, gen=gen, dtype=torch.float64)  # (L, S): a bias ...
    empty_float_row[L // 2] = float("-inf")  # ... with one query that may attend to nothing
    return [
        Case(f"square, no mask (L = S = {n})", qkv((), n, n, E)),
        Case("batched heads, L != S", qkv((B, H), L, S, E)),
        Case("scale=0.3", qkv((B,), L, S, E), {"scale": 0.3}),
        Case("scale=0.0 (every key weighs the same)", qkv((B,), L, S, E), {"scale": 0.0}),
        Case("boolean padding mask", qkv((B, H), L, S, E), {"attn_mask": padding}),
        Case("float (additive) mask", qkv((B, H), L, S, E), {"attn_mask": additive}),
        Case("is_causal, L = S", qkv((B,), n, n, E), {"is_causal": True}),
        Case("is_causal, L < S", qkv((B,), L, S, E), {"is_causal": True}),
        Case("a query with every key masked", qkv((), L, S, E), {"attn_mask": empty_row}),
        Case("float64, and its gradients", qkv((), L, S, E, torch.float64), check_gradients=True),
        Case("a float mask with an all -inf row, and its gradients", qkv((B,), L, S, E, torch.float64),
             {"attn_mask": empty_float_row}, check_gradients=True),
        Case("bfloat16", qkv((B,), L, S, E, torch.bfloat16)),
    ]


ATTENTION_WEIGHTS = Exercise(
    name="attention_weights",
    reference=attention.attention_weights,
    make_cases=lambda gen: _attention_cases(gen, with_values=False),
    mistakes=WEIGHT_MISTAKES,
    forbidden=PYTORCH_SDPA | _SDPA_REFERENCES,
    depends_on=(SOFTMAX,),
)


# --- scaled dot-product attention ---------------------------------------------------------------


def _output_of(weights_mistake: Mistake) -> Mistake:
    """The same mistake, carried through to the output: weights @ v."""

    def output(q, k, v, attn_mask=None, is_causal=False, scale=None):  # noqa: ANN001
        weights = weights_mistake.function(q, k, attn_mask, is_causal, scale)
        return torch.matmul(weights, v)  # (..., L, S) @ (..., S, Ev) -> (..., L, Ev)

    return Mistake(weights_mistake.name, weights_mistake.hint, output)


def _returns_weights(q, k, v, attn_mask=None, is_causal=False, scale=None):  # noqa: ANN001
    return weights_variant(q, k, attn_mask, is_causal, scale)


def _future_must_not_matter(call, device: torch.device, gen: torch.Generator) -> str | None:
    """With is_causal, changing keys and values after position t leaves outputs 0..t unchanged."""
    L, E = 8, 16
    q, k, v = (runtime.randn(1, L, E, gen=gen, device=device) for _ in range(3))
    t = L // 2
    k2, v2 = k.clone(), v.clone()
    k2[:, t + 1:] = runtime.randn(1, L - t - 1, E, gen=gen, device=device)
    v2[:, t + 1:] = 10.0 * runtime.randn(1, L - t - 1, E, gen=gen, device=device)
    before = call(q, k, v, is_causal=True)
    after = call(q, k2, v2, is_causal=True)
    if before.shape != (1, L, E) or after.shape != (1, L, E):
        return f"expected outputs of shape {(1, L, E)}, got {tuple(before.shape)}"
    moved = (before[:, : t + 1] - after[:, : t + 1]).abs().max().item()
    if moved > 1e-5:
        return (
            f"changing only the keys and values after position {t} changed the outputs at "
            f"positions 0..{t} by up to {moved:.3g} — with is_causal=True a query must not see "
            "the future"
        )
    return None


SCALED_DOT_PRODUCT_ATTENTION = Exercise(
    name="scaled_dot_product_attention",
    reference=attention.scaled_dot_product_attention,
    make_cases=lambda gen: _attention_cases(gen, with_values=True),
    mistakes=(
        Mistake(
            "returns the attention weights instead of weights @ v",
            "the output is the weighted sum of the values: weights @ v, shape (..., L, Ev)",
            _returns_weights,
        ),
        *(_output_of(m) for m in WEIGHT_MISTAKES),
    ),
    forbidden=PYTORCH_SDPA | _SDPA_REFERENCES,
    behaviours=(Behaviour("the future does not matter with is_causal=True", _future_must_not_matter),),
    depends_on=(ATTENTION_WEIGHTS, SOFTMAX),
)

EXERCISES = (SOFTMAX, ATTENTION_WEIGHTS, SCALED_DOT_PRODUCT_ATTENTION)
