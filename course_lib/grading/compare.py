"""Comparing a student's result with the reference's, as trees of tensors.

A result is a tensor, or a tuple / named tuple / list / dict of results. ``flatten`` turns it into
``(name, leaf)`` pairs — ``output``, ``hidden``, ``weights[0]``, ``state["c"]`` — so a message
names the leaf that is wrong. ``compare_trees`` returns ``None`` when everything is close, or a
``Mismatch``: which leaf, what is wrong, and the largest error when values differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from course_lib import runtime

_TYPE_HINTS = {
    "NoneType": " — did you forget `return`?",
    "ndarray": " — stay in torch (torch.exp, .sum, ...) so the result keeps its device and gradients",
    "list": " — build the result with torch operations instead of a Python list",
}
_WIDER = {torch.float64: 3, torch.float32: 2, torch.float16: 1, torch.bfloat16: 1}


@dataclass(frozen=True)
class Mismatch:
    kind: str  # "type" | "structure" | "shape" | "device" | "dtype" | "nan" | "inf" | "values"
    problem: str
    leaf: str | None = None  # None when the result is a single tensor
    largest_error: float | None = None


def flatten(value: Any, names: Sequence[str] | None = None, prefix: str = "") -> list[tuple[str, Any]]:
    """``(name, leaf)`` for every leaf of a nested tuple / named tuple / list / dict.

    ``names`` names a top-level tuple's items (an exercise's ``output_names``)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        keys = [f"{prefix}.{f}" if prefix else f for f in value._fields]
    elif isinstance(value, (tuple, list)):
        keys = [names[i] if not prefix and names and i < len(names) else f"{prefix}[{i}]" for i in range(len(value))]
    elif isinstance(value, dict):
        return [pair for k, v in value.items() for pair in flatten(v, prefix=f'{prefix}["{k}"]')]
    else:
        return [(prefix, value)]
    return [pair for key, item in zip(keys, value) for pair in flatten(item, prefix=key)]


def describe_structure(value: Any, names: Sequence[str] | None = None) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        inside = ", ".join(names[: len(value)]) if names else f"{len(value)} items"
        return f"a {type(value).__name__} of {len(value)} ({inside})"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)}"
    return f"{type(value).__name__}"


def compare_trees(
    actual: Any, expected: Any, device: torch.device, tolerances: dict | None = None,
    names: Sequence[str] | None = None,
) -> Mismatch | None:
    """The first way ``actual`` differs from ``expected``, or None when they are close."""
    mismatch = _compare_structure(actual, expected, names)
    if mismatch:
        return mismatch
    if not isinstance(expected, (tuple, list, dict)):
        return compare_leaf(actual, expected, device, tolerances)
    for (name, mine), (_, theirs) in zip(flatten(actual, names), flatten(expected, names)):
        problem = compare_leaf(mine, theirs, device, tolerances)
        if problem:
            return Mismatch(problem.kind, problem.problem, name or None, problem.largest_error)
    return None


def _compare_structure(actual: Any, expected: Any, names: Sequence[str] | None) -> Mismatch | None:
    if isinstance(expected, torch.Tensor):
        if isinstance(actual, tuple):
            return Mismatch("structure", f"your function returned a tuple of {len(actual)} items; return "
                            f"only the tensor of shape {tuple(expected.shape)}")
        return None  # compare_leaf says what a non-tensor is
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            return Mismatch("structure", f"expected {describe_structure(expected, names)}, got "
                            f"{describe_structure(actual)}")
    if isinstance(expected, dict) and (not isinstance(actual, dict) or set(actual) != set(expected)):
        return Mismatch("structure", f"expected {describe_structure(expected)}, got {describe_structure(actual)}")
    if isinstance(expected, (tuple, list)):
        for mine, theirs in zip(actual, expected):
            inner = _compare_structure(mine, theirs, None)
            if inner:
                return inner
    if isinstance(expected, dict):
        for key in expected:
            inner = _compare_structure(actual[key], expected[key], None)
            if inner:
                return inner
    return None


def compare_leaf(actual: Any, expected: Any, device: torch.device, tolerances: dict | None = None) -> Mismatch | None:
    if not isinstance(expected, torch.Tensor):
        if actual != expected:
            return Mismatch("values", f"expected {expected!r}, got {actual!r}")
        return None
    if not isinstance(actual, torch.Tensor):
        return Mismatch("type", f"expected a torch.Tensor of shape {tuple(expected.shape)}, got "
                        f"{type(actual).__name__}" + _TYPE_HINTS.get(type(actual).__name__, ""))
    if actual.shape != expected.shape:
        return Mismatch("shape", f"expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}")
    if actual.device != expected.device:
        return Mismatch("device", f"expected the result on {expected.device} (where the inputs are), got it "
                        f"on {actual.device} — create new tensors with device=<input>.device")
    if actual.dtype != expected.dtype:
        return Mismatch("dtype", _dtype_problem(actual.dtype, expected.dtype))
    return compare_values(actual.detach(), expected.detach(), tolerance_for(expected.dtype, device, tolerances))


def tolerance_for(dtype: torch.dtype, device: torch.device, overrides: dict | None = None) -> runtime.Tolerance:
    if overrides and dtype in overrides:
        return overrides[dtype]
    return runtime.tolerance(dtype, device)


def _dtype_problem(actual: torch.dtype, expected: torch.dtype) -> str:
    message = f"expected dtype {expected} (the inputs' dtype), got {actual} — "
    if _WIDER.get(actual, 0) > _WIDER.get(expected, 0):
        return message + ("a .double() or .float() changed it on the way: convert the result back with "
                          ".to(<input>.dtype)")
    return message + "create new tensors with dtype=<input>.dtype (torch.tensor(...) and torch.zeros(...) default to float32)"


def compare_values(actual: torch.Tensor, expected: torch.Tensor, tol: runtime.Tolerance) -> Mismatch | None:
    if tol.close(actual, expected):
        return None
    bad_nan = torch.isnan(actual) & ~torch.isnan(expected)
    if bad_nan.any():
        return Mismatch("nan", f"your result has NaN at {int(bad_nan.sum())} position(s) where the answer is a "
                        f"number, first at index {_index(bad_nan)}")
    bad_inf = torch.isinf(actual) & ~torch.isinf(expected)
    if bad_inf.any():
        return Mismatch("inf", f"your result has inf at {int(bad_inf.sum())} position(s), first at index "
                        f"{_index(bad_inf)}")
    if torch.isnan(expected).any() and not torch.isnan(actual).any():
        return Mismatch("nan", "the answer has NaN here (the input has NaN); yours does not")
    error = (actual.double() - expected.double()).abs().nan_to_num(0.0)
    where = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    largest = error.max().item()
    digits = 6 if largest > 1e-4 else 12  # enough digits for the two numbers to differ visibly
    problem = (
        f"values differ: largest error {largest:.3g} at index {where} "
        f"(expected {expected[where].item():.{digits}g}, got {actual[where].item():.{digits}g}; "
        f"tolerance rtol={tol.rtol:g}, atol={tol.atol:g})"
    )
    if expected.dtype == torch.float64 and largest < 1e-4:
        problem += (
            "\n  Hint: an error this small on float64 inputs is float32 rounding — is part of your "
            "computation in float32 (a .float(), or a new tensor made without dtype=<input>.dtype)?"
        )
    return Mismatch("values", problem, largest_error=largest)


def _index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def close_trees(a: Any, b: Any, device: torch.device, tolerances: dict | None = None) -> bool:
    """True when two results have the same structure, and every leaf the same shape, dtype and
    device and close values (used to recognise a known mistake)."""
    return compare_trees(a, b, device, tolerances) is None
