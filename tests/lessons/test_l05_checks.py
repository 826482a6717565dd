"""Every check in course_lib.grading, both ways: it passes the reference and other correct
implementations, and fails each known mistake with the mistake's name in the message."""

import math
import re
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from course_lib import attention, grading
from course_lib.grading import (
    EXERCISES,
    l05_scaled_dot_product as attention_checks,
    check_attention_weights,
    check_scaled_dot_product_attention,
    check_softmax,
    framework,
)

HIDDEN_SEEDS = tuple(range(1, 21))  # the notebooks use a few; verdicts must hold for any


# --- correct implementations, written differently from the reference -------------------------


def softmax_float64_inside(x, dim=-1):
    wide = x.double()
    top = wide.amax(dim=dim, keepdim=True).nan_to_num(0.0, neginf=0.0)
    e = (wide - top).exp()
    return (e / e.sum(dim=dim, keepdim=True).clamp_min(1e-300)).to(x.dtype)


def softmax_by_logsumexp(x, dim=-1):
    lse = torch.logsumexp(x, dim=dim, keepdim=True)
    return torch.exp(x - lse).nan_to_num(0.0)  # an all -inf row: exp(-inf - -inf) = nan -> 0


def softmax_torch_where(x, dim=-1):
    work = x.float() if x.dtype == torch.bfloat16 else x
    m = torch.where(torch.isneginf(work.amax(dim, keepdim=True)), 0.0, work.amax(dim, keepdim=True))
    e = torch.exp(work - m)
    s = e.sum(dim, keepdim=True)
    return torch.where(s == 0, torch.zeros_like(e), e / s).to(x.dtype)


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
    return torch.softmax(scores, dim=-1).nan_to_num(0.0).to(q.dtype)


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


@pytest.mark.parametrize("check,fn", CORRECT, ids=lambda x: getattr(x, "__name__", str(x)))
def test_correct_implementations_pass_public_and_hidden(check, fn, capsys):
    assert check(fn) is None
    for seed in HIDDEN_SEEDS:
        assert check(fn, hidden=True, seed=seed) is None
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.count("passed") == 1 + len(HIDDEN_SEEDS)


def _check_for(exercise):
    return getattr(grading, f"check_{exercise.name}")


def test_every_exercise_has_its_check():
    for name, exercise in EXERCISES.items():
        assert exercise.name == name and callable(_check_for(exercise))
        assert exercise.mistakes, f"{name} names no known mistake"


@pytest.mark.parametrize("exercise", EXERCISES.values(), ids=list(EXERCISES))
def test_reference_passes_its_own_check(exercise):
    check = _check_for(exercise)
    # The reference is refused as a shortcut when called by name; its undecorated body passes.
    body = exercise.reference.__wrapped__
    if exercise is attention_checks.SCALED_DOT_PRODUCT_ATTENTION:
        body = sdpa_einsum  # the reference's body calls the (refused) reference attention_weights
    check(body)
    check(body, hidden=True, seed=1)


MISTAKES = [(_check_for(exercise), mistake) for exercise in EXERCISES.values() for mistake in exercise.mistakes]


@pytest.mark.parametrize("check,mistake", MISTAKES, ids=lambda x: getattr(x, "name", getattr(x, "__name__", "")))
def test_each_known_mistake_fails_with_its_name(check, mistake):
    for kwargs in [{}] + [{"hidden": True, "seed": s} for s in HIDDEN_SEEDS]:
        with pytest.raises(AssertionError) as info:
            check(mistake.function, **kwargs)
        message = str(info.value)
        assert f"known mistake: {mistake.name}." in message, message
        assert mistake.hint in message


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
        for case in attention_checks.SOFTMAX.make_cases(framework.runtime.generator(seed)):
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


def test_a_lookup_table_of_public_answers_fails_the_hidden_cases():
    memorised = _memorised_softmax(0)
    assert _failing_case(check_softmax, memorised) == GRADIENT_CASE
    assert _failing_case(check_softmax, memorised, hidden=True, seed=1) != GRADIENT_CASE


def test_a_secret_salt_makes_the_hidden_cases_unknowable(monkeypatch, capsys):
    memorised = _memorised_softmax(0, 1)  # the public cases and the open course's hidden seed 1
    monkeypatch.delenv(framework.HIDDEN_SALT_ENV_VAR, raising=False)
    assert _failing_case(check_softmax, memorised, hidden=True, seed=1) == GRADIENT_CASE
    monkeypatch.setenv(framework.HIDDEN_SALT_ENV_VAR, "instructor's secret")
    assert _failing_case(check_softmax, memorised, hidden=True, seed=1) != GRADIENT_CASE
    check_softmax(softmax_torch_where, hidden=True, seed=1)
    assert "hidden cases, seed 1 (salted)" in capsys.readouterr().out
    assert _failing_case(check_softmax, memorised) == GRADIENT_CASE  # public cases are never salted


# --- a student's bad function is reported in words -----------------------------------------


def _fails(check, fn, *words):
    with pytest.raises(AssertionError) as info:
        check(fn)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "Traceback" not in message
    return message


def test_not_implemented_stub():
    def softmax(x, dim=-1):
        # YOUR CODE HERE
        raise NotImplementedError()

    _fails(check_softmax, softmax, "still raises NotImplementedError")


def test_student_exception_names_the_line():
    def softmax(x, dim=-1):
        return x[99]

    _fails(check_softmax, softmax, "raised IndexError", "return x[99]")


def test_infinite_loop_is_stopped(monkeypatch):
    monkeypatch.setattr(framework, "CALL_TIMEOUT_SECONDS", 0.3)

    def softmax(x, dim=-1):
        while True:
            try:
                pass
            except Exception:  # a student's bare except must not swallow the time limit
                pass

    _fails(check_softmax, softmax, "did not return within 0.3 s")


def test_wrong_shape_dtype_device_type_and_nan():
    _fails(check_softmax, lambda x, dim=-1: x.sum(dim), "expected shape (3,), got ()")
    _fails(check_softmax, lambda x, dim=-1: softmax_torch_where(x).float(), "expected dtype torch.float64", "got torch.float32")
    _fails(check_softmax, lambda x, dim=-1: softmax_torch_where(x).to("meta"), "expected the result on cpu", "got it on meta")
    _fails(check_softmax, lambda x, dim=-1: softmax_torch_where(x).tolist(), "expected a torch.Tensor", "got list")
    _fails(check_softmax, lambda x, dim=-1: None, "did you forget `return`")
    _fails(check_softmax, lambda x, dim=-1: softmax_torch_where(x).numpy(), "got ndarray")
    _fails(check_softmax, lambda x, dim=-1: softmax_torch_where(x) * torch.nan, "NaN at 3 position(s)")
    _fails(
        check_scaled_dot_product_attention,
        lambda q, k, v, attn_mask=None, is_causal=False, scale=None: (sdpa_einsum(q, k, v), None),
        "returned a tuple of 2 items",
    )


def test_in_place_change_of_an_input_is_reported():
    def softmax(x, dim=-1):
        x.sub_(x.amax(dim, keepdim=True).nan_to_num(0.0, neginf=0.0)).exp_()
        return x / x.sum(dim, keepdim=True)

    _fails(check_softmax, softmax, "changed its input `x` in place")


def test_output_cut_off_from_autograd():
    def sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
        return torch.tensor(sdpa_einsum(q, k, v, attn_mask, is_causal, scale).tolist(), dtype=q.dtype)

    message = _fails(check_scaled_dot_product_attention, sdpa, "cut off from autograd")
    assert "known mistake" not in message


def test_causal_leak_is_caught_by_the_behaviour_test_alone():
    exercise = attention_checks.SCALED_DOT_PRODUCT_ATTENTION
    leaky = next(m.function for m in exercise.mistakes if "leaks the future" in m.name)
    problem = framework._run_behaviour(exercise, leaky, exercise.behaviours[0], torch.device("cpu"), 0)
    assert "must not see the future" in problem
    assert framework._run_behaviour(exercise, sdpa_einsum, exercise.behaviours[0], torch.device("cpu"), 0) is None


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
        (check_softmax, lambda x, dim=-1: torch.ops.aten._softmax(x, dim, False), "aten._softmax"),
        (check_softmax, lambda x, dim=-1: torch.ops.aten.softmax(x, dim), "aten._softmax"),
        (check_softmax, lambda x, dim=-1: torch.ops.aten._safe_softmax(x, dim), "aten._safe_softmax"),
        (check_attention_weights, lambda q, k, attn_mask=None, is_causal=False, scale=None: attention.attention_weights(q, k, attn_mask, is_causal, scale), "course_lib.attention.sdpa.attention_weights"),
        (check_attention_weights, lambda q, k, attn_mask=None, is_causal=False, scale=None: F.scaled_dot_product_attention(q, k, torch.eye(k.shape[-2], dtype=q.dtype), attn_mask, is_causal=is_causal, scale=scale), "scaled_dot_product_attention"),
        (check_scaled_dot_product_attention, lambda q, k, v, attn_mask=None, is_causal=False, scale=None: F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=is_causal, scale=scale), "scaled_dot_product_attention"),
        (check_scaled_dot_product_attention, lambda q, k, v, attn_mask=None, is_causal=False, scale=None: attention.scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale), "course_lib.attention.sdpa.scaled_dot_product_attention"),
        (check_scaled_dot_product_attention, _aten_sdpa, "aten."),
        (check_scaled_dot_product_attention, lambda q, k, v, attn_mask=None, is_causal=False, scale=None: attention.attention_weights(q, k, attn_mask, is_causal, scale) @ v, "course_lib.attention.sdpa.attention_weights"),
    ],
)
def test_shortcuts_are_refused(check, fn, word):
    message = _fails(check, fn, "write the computation yourself")
    assert word in message


def test_torch_softmax_is_allowed_where_it_is_not_the_answer():
    check_attention_weights(weights_float64_torch_softmax)


def test_shortcut_refusal_ends_with_the_check():
    with pytest.raises(AssertionError):
        check_softmax(lambda x, dim=-1: torch.softmax(x, dim))
    assert torch.softmax(torch.zeros(2), 0).sum() == 1
    assert attention.softmax(torch.zeros(2)).sum() == 1


# --- quiet and well-behaved -----------------------------------------------------------------


def test_checks_write_nothing_to_stderr_and_return_none(capfd):
    def noisy(x, dim=-1):
        warnings.warn("a student's warning")
        print("debugging output", file=sys.stderr)
        return softmax_torch_where(x, dim)

    assert check_softmax(noisy) is None
    with pytest.raises(AssertionError):
        check_softmax(lambda x, dim=-1: warnings.warn("w") or x)
    captured = capfd.readouterr()
    assert captured.err == ""
    assert "✓ check_softmax passed" in captured.out


def test_passing_something_that_is_not_a_function():
    with pytest.raises(AssertionError, match="needs your function, got NoneType"):
        check_softmax(None)
    with pytest.raises(ValueError, match="needs a seed"):
        check_softmax(softmax_torch_where, hidden=True)


def test_same_grade_whatever_the_device_variable_says(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    check_softmax(softmax_torch_where)
    monkeypatch.setenv("COURSE_DEVICE", "cuda" if not torch.cuda.is_available() else "nonsense")
    with pytest.raises(ValueError, match="COURSE_DEVICE"):
        check_softmax(softmax_torch_where)


def test_mistake_variants_with_no_knob_turned_are_the_reference():
    # Each known mistake is the reference computation with one knob turned; untouched, it is right.
    check_softmax(attention_checks._softmax_variant)
    check_attention_weights(attention_checks._weights_variant)


def test_an_unfinished_helper_is_blamed_not_the_function_being_checked():
    def softmax(x, dim=-1):
        # YOUR CODE HERE
        raise NotImplementedError()

    def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
        return softmax(q @ k.transpose(-2, -1))

    _fails(check_attention_weights, attention_weights, "calls `softmax`, which still raises NotImplementedError")


def test_dot_t_on_batched_tensors_gets_a_hint():
    def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None):
        return torch.softmax(q @ k.T * q.shape[-1] ** -0.5, dim=-1)  # right for 2-D q and k only

    _fails(check_attention_weights, attention_weights, "raised RuntimeError", "`.T` reverses *all* dimensions")


def test_float32_arithmetic_on_float64_inputs_gets_a_precision_hint():
    def softmax(x, dim=-1):
        return softmax_torch_where(x.float(), dim).to(x.dtype)

    message = _fails(check_softmax, softmax, "is float32 rounding")
    expected, got = re.search(r"expected ([\d.e-]+), got ([\d.e-]+)", message).groups()
    assert expected != got  # enough digits to see the difference
