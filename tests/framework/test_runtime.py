import pytest
import torch

from course_lib import runtime


def test_device_defaults_to_cuda_else_cpu(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    assert runtime.device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_device_variable_overrides_and_is_checked(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "not-a-device")
    with pytest.raises(ValueError, match="not a device name"):
        runtime.device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("COURSE_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            runtime.device()
    if not torch.backends.mps.is_available():
        monkeypatch.setenv("COURSE_DEVICE", "mps")
        with pytest.raises(ValueError, match="MPS is not available"):
            runtime.device()


def test_mps_is_never_chosen_without_being_asked(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.device().type != "mps"


def test_random_inputs_are_the_same_for_the_same_seed_whatever_the_dtype():
    a = runtime.randn(3, 4, gen=runtime.generator(7))
    b = runtime.randn(3, 4, gen=runtime.generator(7), dtype=torch.float64)
    assert torch.equal(a, b.float())
    assert not torch.equal(a, runtime.randn(3, 4, gen=runtime.generator(8)))


def test_tolerances_loosen_with_precision_and_on_the_gpu():
    f64, f32, bf16 = (runtime.tolerance(d) for d in (torch.float64, torch.float32, torch.bfloat16))
    assert f64.rtol < f32.rtol < bf16.rtol
    assert runtime.tolerance(torch.float32, "cuda").rtol > f32.rtol
    with pytest.raises(ValueError, match="no tolerance"):
        runtime.tolerance(torch.int64)
