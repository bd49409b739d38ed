"""End to end: tune, interrupt, resume from the log without repeating a measurement."""

import pytest

from systems.miniansor import zoo
from systems.miniansor.records import load_records
from systems.miniansor.tune import make_device, tune_model, tune_task
from systems.miniansor.workloads import gemm

TASK = gemm(96, 80, 200, "fp16", act="relu")


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_without_repeating_measurements(tmp_path):
    log = tmp_path / "tune.jsonl"
    count = {"n": 0}

    def kill_after_10(inp, res):
        count["n"] += 1
        if count["n"] == 10:
            raise Interrupt  # as a Ctrl-C would, after the 10th line was written

    with pytest.raises(Interrupt):
        tune_task(TASK, 24, log=log, progress=False, callbacks=[kill_after_10])
    first = [i.key for i, _ in load_records(log)]
    assert len(first) == 10
    res = tune_task(TASK, 24, log=log, progress=False)
    keys = [i.key for i, _ in load_records(log)]
    assert res.resumed == 10 and res.trials == 24
    assert len(keys) == 24 == len(set(keys)) and keys[:10] == first
    assert res.best[TASK.key].time == min(r.time for _, r in load_records(log))


def test_tuned_kernels_are_checked_under_the_interpreter_and_beat_a_random_pick(tmp_path):
    res = tune_task(TASK, 16, log=tmp_path / "t.jsonl", progress=False, seed=1)
    assert res.errors == {} and res.trials == 16
    assert "tiled" in res.summary()["tasks"][0]["sketch"]


def test_tune_model_tunes_every_extracted_task():
    module, inputs = zoo.example("mlp", 1, 256)
    res = tune_model(module, inputs, 3 * 8, verify="none", progress=False)
    assert [t.key for t in res.tasks] == ["gemm:256x14336x4096:fp16:bias+relu",
                                         "gemm:256x14336x14336:fp16:bias+relu",
                                         "gemm:256x4096x14336:fp16:bias"]
    assert res.weights == [1, 2, 1] and set(res.best) == {t.key for t in res.tasks}
    assert res.weighted_latency() == pytest.approx(
        sum(w * res.best[t.key].time for t, w in zip(res.tasks, res.weights, strict=True)))


def test_unknown_devices_are_refused():
    with pytest.raises(ValueError, match="--device must be"):
        make_device("tpu")
