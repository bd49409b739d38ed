"""The tuning log: append-only lines, robust reading, best kernel per task."""

import json

import pytest
import torch

from systems.miniansor.measure import ErrorNo, MeasureInput, MeasureResult
from systems.miniansor.records import (
    RecordToFile,
    apply_history_best,
    load_records,
)
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.workloads import gemm, softmax

A = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 2, "num_stages": 2}


def _write(path, rows):
    rec = RecordToFile(path, "test-device")
    for inp, res in rows:
        rec(inp, res)


def test_records_round_trip_with_every_field(tmp_path):
    task = gemm(40, 50, 60, "fp32", bias=True)
    sk = generate_sketches(task)[0]
    rows = [(MeasureInput(task, sk, A), MeasureResult([2e-5, 3e-5, 2.5e-5])),
            (MeasureInput(task, sk, {**A, "BLOCK_M": 32}),
             MeasureResult([], ErrorNo.OUT_OF_RESOURCES, "too big"))]
    _write(tmp_path / "log.jsonl", rows)
    line = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert {"task", "sketch", "ann", "costs", "error", "device", "versions"} <= set(line)
    back = load_records(tmp_path / "log.jsonl")
    assert [(i.key, i.task, r.costs, r.error) for i, r in back] == \
        [(i.key, i.task, r.costs, r.error) for i, r in rows]
    assert back[0][0].sketch == sk


def test_a_torn_last_line_is_skipped(tmp_path, capsys):
    task = softmax(4, 100, "fp32")
    sk = generate_sketches(task)[0]
    path = tmp_path / "log.jsonl"
    _write(path, [(MeasureInput(task, sk, {"num_warps": 1}), MeasureResult([1e-6]))])
    with open(path, "a") as f:
        f.write('{"v": 1, "task": "softmax:4x100:fp32:none", "ske')
    assert len(load_records(path)) == 1
    assert "skipping line 2" in capsys.readouterr().err
    assert load_records(tmp_path / "missing.jsonl") == []


def test_apply_history_best_runs_the_fastest_recorded_kernel(tmp_path):
    task = gemm(40, 50, 60, "fp32", act="relu")
    other = softmax(5, 64, "fp32")
    sk = generate_sketches(task)[0]
    slow, fast = A, {**A, "BLOCK_N": 64}
    _write(tmp_path / "log.jsonl", [
        (MeasureInput(task, sk, slow), MeasureResult([3e-5])),
        (MeasureInput(task, sk, fast), MeasureResult([1e-5])),
        (MeasureInput(task, sk, {**A, "BLOCK_M": 32}), MeasureResult([], ErrorNo.WRONG_ANSWER)),
        (MeasureInput(other, generate_sketches(other)[0], {"num_warps": 2}),
         MeasureResult([2e-6]))])
    best = apply_history_best(tmp_path / "log.jsonl")
    assert task in best and other.key in best and gemm(1, 1, 1) not in best
    assert best.query(task).ann == fast and best.query(task).time == 1e-5
    x = task.make_inputs()
    assert torch.allclose(best.kernel(task)(x), task.reference(x), atol=1e-4)
    with pytest.raises(KeyError, match="no successful record"):
        best.kernel(gemm(8, 8, 8))
