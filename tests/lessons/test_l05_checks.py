"""Lesson 05's checks, as a student meets them: correct implementations written differently
from the reference pass (public and hidden cases, on every device here); the mistakes students
make, written as they write them, fail with the mistake's name; shortcuts are refused.

(Every listed mistake of every exercise is run by tests/framework/test_every_exercise.py.)"""

import linecache
import math
import re

import pytest
import torch
import torch.nn.functional as F

from course_lib import attention, runtime
from course_lib.grading import (
    check_attention_weights,
    check_scaled_dot_product_attention,
    check_softmax,
    framework,
)
from course_lib.grading import l05_scaled_dot_product as lesson
from course_lib.grading import policy as grading_policy
from failing import check_fails as _fails

HIDDEN_SEEDS = tuple(range(1, 21))  # the notebooks use a few; verdicts must hold for any
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- correct implementations, written differently from the reference -------------------------


def softmax_float64_inside(x, dim=-1):
    wide = x.double()
    top = wide.amax(dim=dim, keepdim=True).nan_to_num(0.0, neginf=0.0)
    e = (wide - top).exp()
    return (e / e.sum(dim=dim, keepdim=True).clamp_min(1e-300)).to(x.dtype)


def softmax_by_logsumexp(x, dim=-1):
    empty = torch.isneginf(x).all(dim=dim, keepdim=True)  # rows with nothing to attend to
    lse = torch.logsumexp(x.masked_fill(empty, 0.0), dim=dim, keepdim=True)  # finite everywhere
    return torch.exp(x - lse)  # an empty row: exp(-inf - lse) = 0, and so is its gradient


def softmax_torch_where(x, dim=-1):
    work = x.float() if x.dtype == torch.bfloat16 else x
    m = torch.where(torch.isneginf(work.amax(dim, keepdim=True)), 0.0, work.amax(dim, keepdim=True))
    e = torch.exp(work - m)
    s = e.sum(dim, keepdim=True)
    return (e / torch.where(s == 0, torch.ones_like(s), s)).to(x.dtype)


def softmax_naive_bfloat16(x, dim=-1):
    """No upcast: exp and sum straight in the input's dtype, as a student would write it."""
    m = x.amax(dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = (x - m).exp()
    s = e.sum(dim, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def weights_einsum_log_mask(q, k, attn_mask=None, is_causal=False, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("...le,...se->...ls", q, k) * scale  # (..., L, S)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        bias = torch.log(attn_mask.to(scores.dtype)) if attn_mask.dtype == torch.bool else attn_mask
        scores = scores + bias
    return softmax_torch_where(scores)


def weights_float64_torch_softmax(q, k, attn_mask=None, is_causal=False, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale  # (..., L, S)
    L, S = scores.shape[-2:]
    if is_causal:
        scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), -math.inf)
    elif attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(attn_mask.logical_not(), -math.inf)
    elif attn_mask is not None:
        scores = scores + attn_mask.double()
    # torch.softmax is allowed here; a row with nothing to attend to gets zeros before, not after.
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., L, 1)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return weights.to(q.dtype)


def sdpa_einsum(q, k, v, attn_mask=None, is_causal=False, scale=None):
    weights = weights_einsum_log_mask(q, k, attn_mask, is_causal, scale)
    return torch.einsum("...ls,...sv->...lv", weights, v)


def sdpa_float64(q, k, v, attn_mask=None, is_causal=False, scale=None):
    weights = weights_float64_torch_softmax(q, k, attn_mask, is_causal, scale)
    return (weights.double() @ v.double()).to(v.dtype)


CORRECT = [
    (check_softmax, softmax_float64_inside),
    (check_softmax, softmax_by_logsumexp),
    (check_softmax, softmax_torch_where),
    (check_softmax, softmax_naive_bfloat16),
    (check_attention_weights, weights_einsum_log_mask),
    (check_attention_weights, weights_float64_torch_softmax),
    (check_scaled_dot_product_attention, sdpa_einsum),
    (check_scaled_dot_product_attention, sdpa_float64),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check,fn", CORRECT, ids=lambda x: getattr(x, "__name__", str(x)))
def test_correct_implementations_pass_public_and_hidden(check, fn, device, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", device)
    assert check(fn) is None
    for seed in HIDDEN_SEEDS:
        assert check(fn, hidden=True, seed=seed) is None
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.count("passed") == 1 + len(HIDDEN_SEEDS)


def test_the_articles_final_softmax_fails_on_a_fully_masked_row():
    def article_softmax(z, dim=-1):  # the article's second version, in torch
        exp_scores = torch.exp(z - z.amax(dim=-1, keepdim=True))
        return exp_scores / exp_scores.sum(dim=-1, keepdim=True)

    with pytest.raises(AssertionError) as info:
        check_softmax(article_softmax)
    assert 'case "dim=0"' in str(info.value)
    assert "ignores `dim`" in str(info.value)


def _memorised_softmax(*seeds):
    """A 'softmax' that only looks its answers up in a table of the cases drawn from `seeds`."""
    table = {}
    for seed in seeds:
        for case in lesson.SOFTMAX.make_cases(runtime.generator(seed)):
            table[_key(case.args[0])] = attention.softmax(*case.args, **case.kwargs)

    def memorised(x, dim=-1):
        return table.get(_key(x), torch.zeros_like(x))

    return memorised


def _key(x):
    return (x.dtype, x.detach().float().numpy().tobytes())


def _failing_case(check, fn, **kwargs):
    with pytest.raises(AssertionError) as info:
        check(fn, **kwargs)
    return str(info.value).split('"')[1]


GRADIENT_CASE = "float64, and its gradient"  # a table has no gradient: it fails there, and only there


@pytest.fixture
def on_cpu(monkeypatch):
    """For tests whose fakes build CPU tensors (on a GPU the check would report the device first)."""
    monkeypatch.setenv("COURSE_DEVICE", "cpu")


def test_a_lookup_table_of_public_answers_fails_the_hidden_cases(on_cpu):
    memorised = _memorised_softmax(0)
    assert _failing_case(check_softmax, memorised) == GRADIENT_CASE
    assert _failing_case(check_softmax, memorised, hidden=True, seed=1) != GRADIENT_CASE


def test_a_secret_salt_makes_the_hidden_cases_unknowable(on_cpu, monkeypatch, capsys):
    memorised = _memorised_softmax(0, 1)  # the public cases and the open course's hidden seed 1
    monkeypatch.delenv(framework.HIDDEN_SALT_ENV_VAR, raising=False)
    assert _failing_case(check_softmax, memorised, hidden=True, seed=1) == GRADIENT_CASE
    monkeypatch.setenv(framework.HIDDEN_SALT_ENV_VAR, "instructor's secret")
    assert _failing_case(check_softmax, memorised, hidden=True, seed=1) != GRADIENT_CASE
    check_softmax(softmax_torch_where, hidden=True, seed=1)
    assert "hidden cases, seed 1 (salted)" in capsys.readouterr().out
    assert _failing_case(check_softmax, memorised) == GRADIENT_CASE  # public cases are never salted


# --- the mistakes students make, written as they write them, fail with their names ---------------


def _named(check, fn, mistake, **kwargs):
    """The check fails ``fn`` and names ``mistake`` (its Failure's field, not parsed prose)."""
    failure = _fails(check, fn, **kwargs)
    assert failure.mistake == mistake, failure.message
    return failure


def softmax_dim0_written_in(x, dim=-1):
    e = torch.exp(x - x.amax(dim=0, keepdim=True).nan_to_num(0.0, neginf=0.0))
    return e / e.sum(dim=0, keepdim=True).clamp_min(1e-30)


def test_a_softmax_with_dim_0_written_in_is_named():
    _named(check_softmax, softmax_dim0_written_in, "ignores `dim` and always normalises along the first axis (dim=0 written in)")


def test_a_softmax_that_hides_nan_after_the_division_is_named_by_its_gradient():
    def softmax(x, dim=-1):  # right forwards on every case; NaN backwards on a fully masked row
        e = torch.exp(x - x.amax(dim, keepdim=True))
        return (e / e.sum(dim, keepdim=True)).nan_to_num(0.0)

    failure = _named(check_softmax, softmax, "a fully masked row has NaN gradients (0/0 hidden after the division)")
    assert failure.case == "a fully masked row, and its gradient" and failure.kind == "gradient"
    assert "torch.where(total > 0, total" in failure.hint


def test_torch_where_after_dividing_zero_by_zero_is_named_by_its_gradient():
    def softmax(x, dim=-1):
        m = x.amax(dim, keepdim=True)
        e = torch.exp(x - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
        s = e.sum(dim, keepdim=True)
        return torch.where(s > 0, e / s, torch.zeros_like(e))

    _named(check_softmax, softmax, "a fully masked row has NaN gradients (0/0 hidden after the division)")


def test_torch_softmax_patched_with_nan_to_num_fails_the_float_mask_gradient_case():
    def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = q @ k.transpose(-2, -1) * scale
        if is_causal:
            attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        return torch.softmax(scores, dim=-1).nan_to_num(0.0)

    failure = _named(check_attention_weights, attention_weights, "a query whose keys are all masked has NaN gradients")
    assert failure.case == "a float mask with an all -inf row, and its gradients"


def _weights(mask_style="bool", scale_style="none", d_k=lambda q, k: q.shape[-1], transpose=lambda k: k.transpose(-2, -1)):
    """attention_weights as a student writes it, with one habit chosen per argument."""

    def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
        if scale_style == "or":
            scale = scale or 1 / math.sqrt(d_k(q, k))
        elif scale is None:
            scale = 1 / math.sqrt(d_k(q, k))
        scores = q @ transpose(k) * scale
        if is_causal:
            attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        if attn_mask is not None:
            if mask_style == "zero_fill":
                scores = scores.masked_fill(~attn_mask, 0) if attn_mask.dtype == torch.bool else scores + attn_mask
            elif mask_style == "annotated_transformer":  # masked_fill(mask == 0, -inf) for every mask
                scores = scores.masked_fill(attn_mask == 0, -math.inf)
            elif mask_style == "invert_everything":
                scores = scores.masked_fill(~attn_mask, -math.inf)
            elif attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, -math.inf)
            else:
                scores = scores + attn_mask
        return softmax_torch_where(scores)

    return attention_weights


def test_masking_with_zero_instead_of_minus_infinity_is_named():
    _named(check_attention_weights, _weights(mask_style="zero_fill"), "masked scores are set to 0 instead of -inf")


def test_a_float_mask_treated_as_boolean_is_named():
    _named(check_attention_weights, _weights(mask_style="annotated_transformer"),
           "the float mask is treated as a boolean (masked_fill(attn_mask == 0, -inf))")


def test_inverting_a_float_mask_gets_a_hint():
    failure = _fails(check_attention_weights, _weights(mask_style="invert_everything"))
    assert failure.case == "float (additive) mask" and failure.kind == "exception"
    assert "`~` only works on a boolean mask" in failure.hint


def test_scale_or_default_is_named_on_a_scale_of_zero():
    failure = _named(check_attention_weights, _weights(scale_style="or"), "a `scale` of 0.0 is treated as not given (`scale or 1/sqrt(E)`)")
    assert failure.case == "scale=0.0 (every key weighs the same)"


@pytest.mark.parametrize("d_k", [lambda q, k: q.shape[-2], lambda q, k: k.shape[-2], lambda q, k: q.shape[0]], ids=["L", "S", "q.shape[0]"])
def test_d_k_from_the_wrong_dimension_is_named(d_k):
    _named(check_attention_weights, _weights(d_k=d_k), "d_k is taken from the wrong dimension (it is q.shape[-1], the size of each query)")


def _notebook(source):
    """Run ``source`` as a notebook's cells would: its functions are globals of one namespace, and
    its lines can be read back (IPython puts each cell's source in linecache)."""
    name = f"<notebook cell {abs(hash(source))}>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace = {"torch": torch, "math": math}
    exec(compile(source, name, "exec"), namespace)
    return namespace


@pytest.mark.parametrize("scores,words", [
    ("q @ k", "share their *last* dimension"),
    ("q @ k.transpose(0, 1)", "swap the first two dimensions"),
    ("q @ k.T", "`.T` reverses *all* dimensions"),
])
def test_transposing_the_wrong_dimensions_gets_a_hint(scores, words):
    cell = _notebook(
        "def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):\n"
        f"    scores = {scores} / math.sqrt(q.shape[-1])\n"
        "    return torch.softmax(scores, dim=-1)\n"
    )
    failure = _fails(check_attention_weights, cell["attention_weights"])
    assert failure.kind == "exception" and words in failure.hint, failure.message


SOFTMAX_WITH_DIM_0 = """
def softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim=0, keepdim=True).nan_to_num(0.0, neginf=0.0))
    return e / e.sum(dim=0, keepdim=True).clamp_min(1e-30)

def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
    return softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)

def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    return attention_weights(q, k, attn_mask, is_causal, scale) @ v
"""


@pytest.mark.parametrize("check", [check_attention_weights, check_scaled_dot_product_attention])
def test_a_wrong_softmax_is_blamed_in_the_functions_that_call_it(check):
    """When `softmax` hard-codes dim=0 and the functions that call it are right, is `softmax` blamed?"""
    cell = _notebook(SOFTMAX_WITH_DIM_0)
    failure = _fails(check, cell[check.__name__.removeprefix("check_")], "your `softmax`", "fails its own check")
    assert failure.kind == "dependency" and failure.blamed == "softmax"  # also through attention_weights
    assert failure.mistake == "ignores `dim` and always normalises along the first axis (dim=0 written in)"
    assert "softmax over the query axis" not in failure.message


def test_an_unfinished_helper_is_blamed_not_the_function_being_checked():
    def softmax(x, dim=-1):
        # YOUR CODE HERE
        raise NotImplementedError()

    def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
        return softmax(q @ k.transpose(-2, -1))

    failure = _fails(check_attention_weights, attention_weights, "your `softmax`", "still raises NotImplementedError")
    assert failure.blamed == "softmax"


def test_causal_leak_is_caught_by_the_behaviour_test_alone():
    exercise = lesson.SCALED_DOT_PRODUCT_ATTENTION
    leaky = next(m.function for m in exercise.mistakes if "leaks the future" in m.name)
    failure = exercise._run_behaviour(leaky, exercise.behaviours[0], torch.device("cpu"), 0)
    assert "must not see the future" in failure.problem
    assert exercise._run_behaviour(sdpa_einsum, exercise.behaviours[0], torch.device("cpu"), 0) is None


def test_output_cut_off_from_autograd(on_cpu):
    def sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
        return torch.tensor(sdpa_einsum(q, k, v, attn_mask, is_causal, scale).tolist(), dtype=q.dtype)

    failure = _fails(check_scaled_dot_product_attention, sdpa, "cut off from autograd")
    assert failure.mistake is None


def test_returning_output_and_weights_is_said_in_words():
    def sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
        return sdpa_einsum(q, k, v, attn_mask, is_causal, scale), None

    _fails(check_scaled_dot_product_attention, sdpa, "returned a tuple of 2 items")


def test_float32_arithmetic_on_float64_inputs_gets_a_precision_hint():
    def softmax(x, dim=-1):
        return softmax_torch_where(x.float(), dim).to(x.dtype)

    message = _fails(check_softmax, softmax, "is float32 rounding").message
    expected, got = re.search(r"expected ([\d.e-]+), got ([\d.e-]+)", message).groups()
    assert expected != got  # enough digits to see the difference


def test_mistake_variants_with_no_knob_turned_are_the_reference():
    # Each known mistake is the reference computation with one knob turned; untouched, it is right.
    check_softmax(lesson.softmax_variant)
    check_attention_weights(lesson.weights_variant)


# --- shortcuts are refused ------------------------------------------------------------------


def _aten_sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
    return torch.ops.aten.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal, scale=scale)


@pytest.mark.parametrize(
    "check,fn,word",
    [
        (check_softmax, lambda x, dim=-1: torch.softmax(x, dim), "torch.softmax"),
        (check_softmax, lambda x, dim=-1: F.softmax(x, dim=dim), "softmax"),
        (check_softmax, lambda x, dim=-1: x.softmax(dim), "softmax"),
        (check_softmax, lambda x, dim=-1: torch.nn.Softmax(dim)(x), "softmax"),
        (check_softmax, lambda x, dim=-1: F.log_softmax(x, dim).exp(), "log_softmax"),
        (check_softmax, lambda x, dim=-1: attention.softmax(x, dim), "course_lib.attention.sdpa.softmax"),
        (check_softmax, lambda x, dim=-1: F.softmin(-x, dim), "softmin"),
        (check_softmax, lambda x, dim=-1: torch.ops.aten.softmax(x, dim), "aten._softmax"),
        (check_attention_weights, lambda q, k, attn_mask=None, is_causal=False, scale=None: attention.attention_weights(q, k, attn_mask, is_causal, scale), "course_lib.attention.sdpa.attention_weights"),
        (check_attention_weights, lambda q, k, attn_mask=None, is_causal=False, scale=None: F.scaled_dot_product_attention(q, k, torch.eye(k.shape[-2], dtype=q.dtype, device=q.device), attn_mask, is_causal=is_causal, scale=scale), "scaled_dot_product_attention"),
        (check_scaled_dot_product_attention, lambda q, k, v, attn_mask=None, is_causal=False, scale=None: F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=is_causal, scale=scale), "scaled_dot_product_attention"),
        (check_scaled_dot_product_attention, lambda q, k, v, attn_mask=None, is_causal=False, scale=None: attention.scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale), "course_lib.attention.sdpa.scaled_dot_product_attention"),
        (check_scaled_dot_product_attention, _aten_sdpa, "aten."),
        (check_scaled_dot_product_attention, lambda q, k, v, attn_mask=None, is_causal=False, scale=None: attention.attention_weights(q, k, attn_mask, is_causal, scale) @ v, "course_lib.attention.sdpa.attention_weights"),
    ],
)
def test_shortcuts_are_refused(check, fn, word):
    failure = _fails(check, fn, "write the computation yourself")
    assert failure.kind == "shortcut" and word in failure.problem


PRIVATE_ROUTES = {
    "aten._softmax": lambda x, dim=-1: torch.ops.aten._softmax(x, dim, False),
    "aten._safe_softmax": lambda x, dim=-1: torch.ops.aten._safe_softmax(x, dim),
}


@pytest.mark.parametrize("word", list(PRIVATE_ROUTES))
def test_private_routes_are_refused_by_reading_and_by_the_guard_underneath(word, monkeypatch):
    failure = _fails(check_softmax, PRIVATE_ROUTES[word], "a private part of a library")
    assert failure.kind == "refused"
    monkeypatch.setattr(grading_policy, "function_refusals", lambda fn: [])  # as if the reading had missed it
    failure = _fails(check_softmax, PRIVATE_ROUTES[word], "write the computation yourself")
    assert failure.kind == "shortcut" and word in failure.problem


def test_torch_softmax_is_allowed_where_it_is_not_the_answer():
    check_attention_weights(weights_float64_torch_softmax)


def test_shortcut_refusal_ends_with_the_check():
    with pytest.raises(AssertionError):
        check_softmax(lambda x, dim=-1: torch.softmax(x, dim))
    assert torch.softmax(torch.zeros(2), 0).sum() == 1
    assert attention.softmax(torch.zeros(2)).sum() == 1
