"""On a CUDA GPU: the references agree with the CPU and with PyTorch there, and every check gives
the same verdict as on the CPU (a correct submission passes, each known mistake is named).
Skipped without CUDA."""

import pytest
import torch
import torch.nn.functional as F

from course_lib import runtime
from course_lib.attention import scaled_dot_product_attention
from course_lib.grading import check_softmax
from test_l05_checks import CORRECT, MISTAKES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_reference_on_the_gpu_matches_pytorch(dtype):
    gen = runtime.generator(0)
    q, k, v = (runtime.randn(2, 4, 33, 64, gen=gen, dtype=dtype, device="cuda") for _ in range(3))
    tol = runtime.tolerance(dtype, "cuda")
    for kwargs in ({}, {"is_causal": True}, {"scale": 0.2}):
        torch.testing.assert_close(
            scaled_dot_product_attention(q, k, v, **kwargs),
            F.scaled_dot_product_attention(q, k, v, **kwargs),
            rtol=tol.rtol, atol=tol.atol,
        )


@pytest.mark.parametrize("check,fn", CORRECT, ids=lambda x: getattr(x, "__name__", ""))
def test_correct_implementations_pass_on_the_gpu(check, fn, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    check(fn)
    check(fn, hidden=True, seed=1)


@pytest.mark.parametrize("check,mistake", MISTAKES, ids=lambda x: getattr(x, "name", ""))
def test_mistakes_are_named_on_the_gpu(check, mistake, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(AssertionError, match="known mistake"):
        check(mistake.function)


def test_a_result_left_on_the_cpu_is_reported(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(AssertionError, match="expected the result on cuda"):
        check_softmax(lambda x, dim=-1: torch.zeros(x.shape, dtype=x.dtype))
