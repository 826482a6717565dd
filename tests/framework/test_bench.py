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
