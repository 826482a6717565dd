"""The benchmark machinery: interleaved medians, peak extra memory, results saved."""

import json

import torch

from course_lib import bench


def test_time_interleaved_gives_a_median_per_candidate_and_runs_each_in_turn():
    order = []
    medians = bench.time_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, torch.device("cpu"), repeats=3, warmup=1
    )
    assert order == ["a", "b"] * 4 and set(medians) == {"a", "b"} and all(t >= 0 for t in medians.values())


def test_peak_extra_bytes_counts_what_a_call_keeps_alive():
    x = torch.randn(512, 256)
    assert bench.peak_extra_bytes(lambda: x @ x.T) == 512 * 512 * 4


def test_results_are_saved_as_json(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    path = bench.save("demo", {"device": "cpu", "rows": [1, 2]})
    assert json.loads(path.read_text()) == {"device": "cpu", "rows": [1, 2]}


def test_the_grading_benchmark_mixes_right_wrong_and_blank_submissions():
    from course_lib.bench import grading

    students = grading._submissions(7)
    assert list(students.values()) == ["right", "noscale", "blank", "right", "noscale", "blank", "right"]
    assert len(set(students)) == 7 and grading.WORKERS == (1, 2)


def test_the_flash_benchmark_times_a_training_step_against_sdpa(monkeypatch):
    from course_lib.bench import flash as flash_bench  # noqa: PLC0415

    for name, value in {"TRAINING_LENGTHS": "64", "HEADS": "2"}.items():
        monkeypatch.setenv(f"FLASH_BENCH_{name}", value)
    rows = flash_bench._training_table(torch.device("cpu"))
    assert {(r["candidate"], r["causal"]) for r in rows} == {
        (name, causal) for name in ("flash (PyTorch tiles) fwd+bwd", "sdpa (default) fwd+bwd") for causal in (False, True)}
    assert all(r["seconds"] > 0 for r in rows)
    lines = flash_bench.summarise({"training": rows})
    assert [line.split(":")[0] for line in lines] == ["training float32 L=64 causal=False", "training float32 L=64 causal=True"]
