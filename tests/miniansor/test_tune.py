"""End to end: tune, interrupt, resume from the log without repeating a measurement."""

import json
import statistics

import pytest

from systems.miniansor import zoo
from systems.miniansor.annotation import HardwareLimits
from systems.miniansor.measure import ErrorNo, MeasureInput, MeasureResult
from systems.miniansor.records import RecordToFile, apply_history_best, load_records, task_weights
from systems.miniansor.simulator import SimulatedGPU
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.study import exhaustive_space, random_run
from systems.miniansor.tune import make_device, tune_model, tune_task
from systems.miniansor.workloads import check_output, gemm

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


def test_resuming_uses_only_the_records_of_the_same_device(tmp_path):
    log = tmp_path / "tune.jsonl"
    other = RecordToFile(log, "another GPU")
    sk = generate_sketches(TASK)[0]
    for bn in (16, 32, 64):  # implausibly fast times from elsewhere
        other(MeasureInput(TASK, sk, {"BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": 16,
                                      "num_warps": 2, "num_stages": 2}),
              MeasureResult([1e-12]))
    res = tune_task(TASK, 8, log=log, progress=False, verify="none")
    mine = [r for _, r in load_records(log) if r.device == res.device]
    assert res.resumed == 0 and len(mine) == 8 and res.device != "another GPU"
    assert res.best[TASK.key].time == min(r.time for r in mine) > 1e-12
    again = tune_task(TASK, 12, log=log, progress=False, verify="none")
    assert again.resumed == 8 and again.trials == 12


def test_tuned_kernels_are_checked_under_the_interpreter_and_beat_a_random_pick(tmp_path):
    """16 trials on the (deterministic, seeded) simulated device against random search
    with the same budget over the same space (every valid annotation of every sketch,
    uniform without replacement), on the same device, so that the same config measures
    the same. The tuner's best must be at least as fast as random search's median best
    over nine seeds, and truly (noise-free) within 5% of the exhaustive optimum, which
    the median random run is not."""
    res = tune_task(TASK, 16, log=tmp_path / "t.jsonl", progress=False, seed=1)
    assert res.errors == {} and res.trials == 16
    assert "tiled" in res.summary()["tasks"][0]["sketch"]
    dev = SimulatedGPU(seed=1)  # what tune_task(device="sim", seed=1) measured on
    assert res.device == dev.name
    space = exhaustive_space(TASK, dev)
    random_best = [min(t for _, t in random_run(space, dev, s, 16)) for s in range(9)]
    best = res.best[TASK.key]
    assert best.time <= statistics.median(random_best), (best.time, sorted(random_best))
    assert dev.true_time(TASK, best.sketch, best.ann) <= 1.05 * space.best
    assert statistics.median(random_best) > 1.05 * space.best  # so the bar means something


def test_tune_model_tunes_every_extracted_task(tmp_path):
    module, inputs = zoo.example("mlp", 1, 256)
    log = tmp_path / "m.jsonl"
    res = tune_model(module, inputs, 3 * 8, verify="none", progress=False, log=log)
    assert [t.key for t in res.tasks] == ["gemm:256x14336x4096:fp16:bias+relu",
                                         "gemm:256x14336x14336:fp16:bias+relu",
                                         "gemm:256x4096x14336:fp16:bias"]
    assert res.weights == [1, 2, 1] and set(res.best) == {t.key for t in res.tasks}
    assert task_weights(log) == {t.key: w for t, w in zip(res.tasks, res.weights, strict=True)}
    assert res.weighted_latency() == pytest.approx(
        sum(w * res.best[t.key].time for t, w in zip(res.tasks, res.weights, strict=True)))


def test_unknown_devices_are_refused():
    with pytest.raises(ValueError, match="--device must be"):
        make_device("tpu")


@pytest.mark.parametrize("model", ["GBT", "xgb", ""])
def test_an_unknown_cost_model_is_refused_not_run_as_the_ablation(model, tmp_path):
    """Anything but exactly "gbt" ran the random-model ablation without a word."""
    from systems.miniansor.study import ansor_run

    with pytest.raises(ValueError, match=f"cost model must be 'gbt' or 'random', got "
                                         f"'{model}'"):
        tune_task(TASK, 4, log=tmp_path / "t.jsonl", progress=False, model=model)
    with pytest.raises(ValueError, match="cost model must be"):
        ansor_run(TASK, SimulatedGPU(), 0, 4, model=model)
    assert not (tmp_path / "t.jsonl").exists()  # refused before anything was measured


def test_a_gemm_smaller_than_two_mma_tiles_is_tuned_with_one_warp(tmp_path):
    task = gemm(16, 16, 64, "fp16")  # one 16x16 tile: no room for a second warp
    res = tune_task(task, 4, log=tmp_path / "t.jsonl", progress=False)
    assert res.trials == 4 and res.errors == {}
    assert res.best[task.key].ann["num_warps"] == 1
    x = task.make_inputs()
    assert check_output(task, apply_history_best(tmp_path / "t.jsonl").kernel(task)(x),
                        task.reference(x)) is None


def test_a_task_with_nothing_to_measure_is_an_error_naming_it():
    tiny_smem = HardwareLimits(smem_per_block=1024, sm_count=132)  # no GEMM block fits
    with pytest.raises(ValueError, match="nothing to tune for gemm:64x64x64:fp16:none"):
        tune_task(gemm(64, 64, 64), 8, progress=False, limits=tiny_smem)


def test_a_task_stopped_for_consecutive_errors_stays_stopped_on_resume(tmp_path):
    log = tmp_path / "tune.jsonl"
    rec = RecordToFile(log, SimulatedGPU().name)
    sk = generate_sketches(TASK)[0]
    anns = [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": 2, "num_stages": 2}
            for bm in (16, 32, 64) for bn in (16, 32, 64, 128) for bk in (16, 32, 64, 128)]
    good = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 2, "num_stages": 2}
    rec(MeasureInput(TASK, sk, good), MeasureResult([1e-5]))  # a success must be runnable
    for a in [a for a in anns if a != good][:32]:  # then 32 failures in a row: the limit
        rec(MeasureInput(TASK, sk, a), MeasureResult([], ErrorNo.RUNTIME_ERROR, "died"))
    res = tune_task(TASK, 48, log=log, progress=False, verify="none")
    assert res.resumed == 33 and res.trials == 33 and len(load_records(log)) == 33


def test_a_resume_after_one_failed_first_measurement_tunes_the_task(tmp_path):
    """A run killed right after its first measurement, which failed: the cut-short
    warm-up round must not count as a round (the task was then judged dead on it)."""
    log = tmp_path / "tune.jsonl"
    RecordToFile(log, SimulatedGPU().name)(
        MeasureInput(TASK, generate_sketches(TASK)[0],
                     {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 2,
                      "num_stages": 2}),
        MeasureResult([], ErrorNo.RUNTIME_ERROR, "worker died"))
    res = tune_task(TASK, 24, log=log, progress=False, verify="none")
    assert res.resumed == 1 and res.trials == 24 and TASK.key in res.best


def test_the_same_task_listed_twice_is_tuned_once_with_the_summed_weight(tmp_path):
    from systems.miniansor.tune import tune_tasks
    from systems.miniansor.workloads import softmax

    log = tmp_path / "t.jsonl"
    res = tune_tasks([softmax(64, 3000), softmax(64, 3000)], [1, 3], 16, log=log,
                     progress=False, verify="none", per_round=4)
    assert [t.key for t in res.tasks] == [softmax(64, 3000).key] and res.weights == [4]
    keys = [i.key for i, _ in load_records(log)]
    assert len(keys) == len(set(keys)) == 16  # no config measured twice
    assert task_weights(log) == {softmax(64, 3000).key: 4.0}


# ---- learning from other tasks' records (TVM's update_from_file) ---------------------
OTHERS = [gemm(2048, 2048, 2048, "fp16"), gemm(128, 4096, 4096, "fp16"),
          gemm(16, 4096, 14336, "fp16")]
NEW = gemm(4096, 4096, 4096, "fp16")  # under 1% of its space is within 5% of its best


@pytest.fixture(scope="module")
def history_log(tmp_path_factory):
    log = tmp_path_factory.mktemp("history") / "others.jsonl"
    for t in OTHERS:
        tune_task(t, 48, log=log, progress=False, verify="none")
    return log


def _first_round_quality(seed: int, **kw) -> float:
    """True time of the best of one round (8 trials) of NEW / the exhaustive best."""
    res = tune_task(NEW, 8, progress=False, verify="none", seed=seed, **kw)
    b, dev = res.best[NEW.key], SimulatedGPU(seed=0)
    return dev.true_time(NEW, b.sketch, b.ann) / exhaustive_space(NEW, dev).best


def test_a_history_of_other_tasks_guides_the_first_round(history_log):
    """Without records the model predicts at random until it has 8 measurements, so the
    first round is a random draw (1.25-1.9x the best in seeds 0-5); a model trained on
    three other GEMMs' records picks a first round within 5% of the best. The history is
    learned from, never resumed: NEW's budget is all its own."""
    cold = [_first_round_quality(s) for s in range(3)]
    warm = [_first_round_quality(s, history=history_log) for s in range(3)]
    assert max(warm) <= 1.05 and max(warm) < min(cold), (warm, cold)
    assert {i.task.key for i, _ in load_records(history_log)} == {t.key for t in OTHERS}


def test_other_tasks_in_the_resumed_log_train_the_model_too(history_log, tmp_path):
    log = tmp_path / "shared.jsonl"
    log.write_text(history_log.read_text())
    res = tune_task(NEW, 8, log=log, progress=False, verify="none", seed=0)
    assert res.resumed == 0 and res.trials == 8
    b = res.best[NEW.key]
    dev = SimulatedGPU(seed=0)
    assert dev.true_time(NEW, b.sketch, b.ann) <= 1.05 * exhaustive_space(NEW, dev).best


def test_history_from_another_device_is_not_learned(history_log, tmp_path, capsys):
    """The same records relabelled as another GPU's: the run is exactly the cold one."""
    foreign = tmp_path / "foreign.jsonl"
    lines = [json.loads(x) for x in history_log.read_text().splitlines()]
    foreign.write_text("".join(json.dumps({**x, "device": "another GPU"}) + "\n"
                               for x in lines))
    cold = tune_task(NEW, 16, progress=False, verify="none", seed=0)
    other = tune_task(NEW, 16, progress=False, verify="none", seed=0, history=foreign)
    assert other.best[NEW.key] == cold.best[NEW.key]
    assert f"not learning from {len(lines)} history records" in capsys.readouterr().err


def test_a_missing_history_log_is_an_error_not_a_cold_start(tmp_path):
    with pytest.raises(FileNotFoundError, match="history log .*nope.jsonl does not exist"):
        tune_task(NEW, 8, progress=False, verify="none", history=tmp_path / "nope.jsonl")


def test_a_resume_with_a_larger_budget_does_not_warm_every_task_up_again(tmp_path,
                                                                          monkeypatch):
    """16 trials over 4 tasks are rounds of 4; resumed to 96 the rounds are 8, and
    counting only whole rounds of the new size made every finished warm-up look unfinished
    (each task then spent a round before the gradient could choose)."""
    from systems.miniansor import task_scheduler as ts
    from systems.miniansor.tune import tune_tasks
    from systems.miniansor.workloads import softmax

    seen = []
    real = ts.TaskScheduler.tune

    def spy(self, total, per_round=8, progress=True):
        seen.append(list(self.task_cts))
        return real(self, total, per_round, progress)
    monkeypatch.setattr(ts.TaskScheduler, "tune", spy)
    tasks = [softmax(64, 3000), softmax(128, 4096), softmax(256, 1000), softmax(32, 8192)]
    log = tmp_path / "t.jsonl"
    tune_tasks(tasks, None, 16, log=log, progress=False, verify="none", per_round=8)
    again = tune_tasks(tasks, None, 32, log=log, progress=False, verify="none", per_round=8)
    assert seen == [[0, 0, 0, 0], [1, 1, 1, 1]] and again.trials == 32


def test_a_resumed_run_reports_the_best_of_the_log_not_only_of_its_new_trials(tmp_path):
    log = tmp_path / "tune.jsonl"
    first = tune_task(TASK, 8, log=log, progress=False, verify="none")
    again = tune_task(TASK, 8, log=log, progress=False, verify="none")  # nothing new
    assert again.resumed == 8 and len(load_records(log)) == 8
    assert again.best[TASK.key].time == first.best[TASK.key].time
    assert again.weighted_latency() == first.weighted_latency() < float("inf")


def test_on_the_simulator_the_default_verify_checks_each_kernel_locally(monkeypatch):
    """The simulator runs no kernel, so verify='auto' must check ours (under the
    interpreter); a replayed or CUDA device checks its own."""
    from systems.miniansor import measure

    checked = []
    monkeypatch.setattr(measure, "verify_program",
                        lambda task, sketch, ann, *a, **k: checked.append(sketch.name))
    res = tune_task(TASK, 8, progress=False)  # device="sim", verify="auto"
    assert res.trials == 8 and len(checked) >= 1


@pytest.mark.parametrize("per_round", [4, 8, 32])
def test_a_task_whose_logged_tries_all_failed_gets_a_new_warm_up_on_resume(tmp_path,
                                                                          per_round):
    """16 failures logged (fewer than the consecutive-error limit), then a resume with a
    bigger budget: it used to measure nothing and report 16 trials when 16 failures made
    two rounds or more (per_round 4, 8), and tune when they made less than one (32)."""
    log = tmp_path / "tune.jsonl"
    rec = RecordToFile(log, SimulatedGPU().name)
    sk = generate_sketches(TASK)[0]
    for bm in (16, 32, 64, 128):
        for bk in (16, 32, 64, 128):
            rec(MeasureInput(TASK, sk, {"BLOCK_M": bm, "BLOCK_N": 16, "BLOCK_K": bk,
                                        "num_warps": 8, "num_stages": 2}),
                MeasureResult([], ErrorNo.RUNTIME_ERROR, "a driver that was broken then"))
    res = tune_task(TASK, 40, log=log, progress=False, verify="none", per_round=per_round)
    assert res.resumed == 16 and res.trials == 40 and TASK.key in res.best


def test_a_run_that_stops_before_its_budget_says_why(tmp_path, capsys):
    from systems.miniansor.workloads import softmax

    task = softmax(4, 64, "fp32")  # a space of a few configs (its sketches' warps, rows)
    res = tune_task(task, 64, log=tmp_path / "t.jsonl", progress=False, verify="none")
    assert res.trials < 64
    assert (f"{task.key}: stopped after {res.trials} trials: nothing left to measure"
            in capsys.readouterr().err)
