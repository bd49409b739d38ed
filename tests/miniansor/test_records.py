"""The tuning log: append-only lines, robust reading, best kernel per task."""

import json

import pytest
import torch

from systems.miniansor.measure import ErrorNo, MeasureInput, MeasureResult
from systems.miniansor.records import (
    RecordToFile,
    apply_history_best,
    load_records,
    task_weights,
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


def test_a_malformed_line_is_skipped_not_fatal(tmp_path, capsys):
    """Valid JSON of the wrong shape (a hand edit, another tool's line) is skipped with
    its reason, like a torn line; it used to make every reader of the log crash."""
    task = softmax(4, 100, "fp32")
    path = tmp_path / "log.jsonl"
    _write(path, [(MeasureInput(task, generate_sketches(task)[0], {"num_warps": 1}),
                   MeasureResult([1e-6]))])
    good = json.loads(path.read_text())
    bad = [{**good, "ann": None}, {**good, "task": 7}, [1, 2], {**good, "costs": "1e-6"},
           {**good, "v": 99}, {**good, "costs": []}]
    with open(path, "a") as f:
        f.writelines(json.dumps(b) + "\n" for b in bad)
    assert len(load_records(path)) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "'ann' must be a dict" in err and "'task' must be a str" in err
    assert "line 4" in err and "line 5" in err
    # another record format, and a success without a time (it would be the best kernel,
    # at an infinite time, for apply_history_best)
    assert "line 6" in err and "v=99" in err and "line 7" in err and "without costs" in err


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


def test_appending_after_a_torn_line_keeps_every_new_record(tmp_path):
    task = softmax(4, 100, "fp32")
    sk = generate_sketches(task)[0]
    path = tmp_path / "log.jsonl"
    rows = [(MeasureInput(task, sk, {"num_warps": w}), MeasureResult([w * 1e-6]))
            for w in (1, 2, 4)]
    _write(path, rows[:1])
    with open(path, "a") as f:  # a run killed mid-write
        f.write('{"v": 1, "task": "softmax:4x100:fp32:none", "ske')
    _write(path, rows[1:])  # the resumed run appends two more
    back = load_records(path)
    assert [(i.ann, r.costs) for i, r in back] == [(i.ann, r.costs) for i, r in rows]
    whole = path.read_text().splitlines()[-1]
    path.write_text(path.read_text()[:-1])  # a whole last record that lost its newline
    _write(path, rows[:1])
    assert len(load_records(path)) == 4 and path.read_text().splitlines()[2] == whole


def test_apply_history_best_keeps_to_one_device(tmp_path):
    task = gemm(40, 50, 60, "fp32")
    sk = generate_sketches(task)[0]
    path = tmp_path / "log.jsonl"
    RecordToFile(path, "gpu-a")(MeasureInput(task, sk, A), MeasureResult([3e-5]))
    RecordToFile(path, "gpu-b")(MeasureInput(task, sk, {**A, "BLOCK_N": 64}),
                                MeasureResult([1e-5]))
    assert [r.device for _, r in load_records(path)] == ["gpu-a", "gpu-b"]
    assert apply_history_best(path, "gpu-a").query(task).time == 3e-5
    assert apply_history_best(path, "gpu-b").query(task).ann == {**A, "BLOCK_N": 64}
    with pytest.raises(ValueError, match=r"no records of device 'gpu-c'; the log holds "
                                         r"\['gpu-a', 'gpu-b'\]"):
        apply_history_best(path, "gpu-c")  # an empty dispatcher would fall back silently
    with pytest.raises(ValueError, match="2 devices"):
        apply_history_best(path)  # the fastest of two devices' times means nothing


def test_task_weights_are_read_back_from_the_log(tmp_path):
    a, b = softmax(4, 100, "fp32"), softmax(8, 100, "fp32")
    path = tmp_path / "log.jsonl"
    rec = RecordToFile(path, "d", {a.key: 3.0})
    for t in (a, b):
        rec(MeasureInput(t, generate_sketches(t)[0], {"num_warps": 1}), MeasureResult([1e-6]))
    assert task_weights(path) == {a.key: 3.0}
    with path.open("a") as f:  # lines that are JSON but no record: skipped, as load_records
        f.write("[1, 2]\nnull\n3\n")  # does (with a device, .get met a list: a traceback)
    assert task_weights(path, "d") == {a.key: 3.0} == task_weights(path)


def test_each_device_keeps_the_weight_its_run_logged(tmp_path, capsys):
    """Tuned in a model on the simulator (weight 2), then alone on a GPU (weight 1):
    ``show --device sim`` weighted the simulator's latency by the GPU run's 1."""
    from common.cli import main

    t = softmax(4, 100, "fp32")
    path = tmp_path / "log.jsonl"
    inp = MeasureInput(t, generate_sketches(t)[0], {"num_warps": 1})
    RecordToFile(path, "sim-dev", {t.key: 2.0})(inp, MeasureResult([1e-5]))
    RecordToFile(path, "gpu-dev", {t.key: 1.0})(inp, MeasureResult([3e-6]))
    assert task_weights(path, "sim-dev") == {t.key: 2.0}
    assert task_weights(path, "gpu-dev") == {t.key: 1.0} == task_weights(path)
    assert main(["ansor", "show", str(path), "--device", "sim-dev", "--json", "--plot",
                 str(tmp_path / "p.png")]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["weighted_latency_us"] == pytest.approx(20.0)


def test_a_task_whose_every_record_failed_has_no_best_kernel():
    """ApplyHistoryBest picks among *successful* records: a task that only failed is not
    tuned (KeyError naming it), not dispatched to a config that gave a wrong answer."""
    from systems.miniansor.measure import ErrorNo, MeasureInput, MeasureResult
    from systems.miniansor.records import ApplyHistoryBest

    task = gemm(40, 50, 60, "fp32")
    sk = generate_sketches(task)[0]
    ann = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 2, "num_stages": 2}
    bad = MeasureResult([], ErrorNo.WRONG_ANSWER, "mismatch", device="d")
    ahb = ApplyHistoryBest([(MeasureInput(task, sk, ann), bad)], "d")
    assert task not in ahb and ahb.query(task) is None
    with pytest.raises(KeyError, match="no successful record"):
        ahb.kernel(task)


def test_a_record_of_a_sketch_the_rules_no_longer_make_keeps_its_fixed_values(tmp_path):
    """A record names a sketch the current rules do not generate (renamed, or a student's):
    it is rebuilt from the record, fixed values included, so it runs as measured."""
    from systems.miniansor.measure import MeasureInput, MeasureResult
    from systems.miniansor.records import RecordToFile, load_records
    from systems.miniansor.sketch import Sketch

    task = gemm(40, 50, 60, "fp32")
    gone = Sketch("tiled.oldname", "matmul", (("BLOCK_M", (16,)),), (("GROUP_M", 1),))
    ann = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 2, "num_stages": 2}
    RecordToFile(tmp_path / "log.json", "d")(MeasureInput(task, gone, ann),
                                               MeasureResult([1e-5], device="d"))
    ((inp, _),) = load_records(tmp_path / "log.json")
    assert inp.sketch.name == "tiled.oldname"
    assert inp.sketch.full_config(inp.ann) == {**ann, "GROUP_M": 1}


def test_a_record_whose_config_cannot_run_is_skipped_not_handed_out_as_the_best(
        tmp_path, capsys):
    """Lines with the right fields but a config that cannot run for their task (edited by
    hand, or from another version) used to be read as records: the fastest became the
    "best kernel", and resuming crashed with KeyError 'BLOCK_K' in the features."""
    from systems.miniansor.simulator import SimulatedGPU
    from systems.miniansor.tune import tune_task

    task = gemm(40, 50, 60, "fp32")
    sk = generate_sketches(task)[0]
    log = tmp_path / "log.jsonl"
    RecordToFile(log, SimulatedGPU().name)(MeasureInput(task, sk, A), MeasureResult([2e-5]))
    good = json.loads(log.read_text())
    no_bk = {k: v for k, v in A.items() if k != "BLOCK_K"}
    bad = [{"ann": no_bk},                                              # a parameter missing
           {"sketch": "row.one", "template": "rows", "ann": {"num_warps": 2}},  # wrong kind
           {"template": "nope"},                                        # no such template
           {"ann": {**A, "BLOCK_M": 3}},                                # off the domain
           {"ann": {**A, "BLOCK_M": 4096, "BLOCK_N": 4096}},            # over the limits
           # a sketch the rules do not make is rebuilt from the record: its values were
           # taken as their own domain, so these became the best kernel (one failed to
           # compile, GROUP_M=0 answered wrong)
           {"sketch": "tiled.old", "ann": {**A, "BLOCK_M": 48}},
           {"sketch": "tiled.old", "ann": {**A, "num_warps": 3}},
           {"fixed": {"GROUP_M": 0}}]
    with log.open("a") as f:
        for change in bad:
            f.write(json.dumps({**good, "costs": [1e-7], **change}) + "\n")
    assert [r.costs for _, r in load_records(log)] == [[2e-5]]
    err = capsys.readouterr().err
    assert err.count("skipping line") == len(bad), err
    best = apply_history_best(log).query(task)
    assert best.time == 2e-5 and best.ann == A
    res = tune_task(task, 8, log=log, progress=False, verify="none")  # resumes, no crash
    assert res.resumed == 1 and res.trials == 8


def test_a_second_run_on_a_log_in_use_is_refused_and_an_unused_new_log_is_removed(
        tmp_path):
    """Two runs appending to one log at once both resumed from the same lines and
    measured the same configs twice; a resume then counted the repeats."""
    from systems.miniansor.records import held

    log = tmp_path / "new" / "log.jsonl"
    with held(log):
        with pytest.raises(ValueError, match="another tuning run is appending to this log"):
            with held(log):
                pass
    assert not log.exists()  # created by the run, left empty: gone
    log.write_text("")
    with held(log):
        pass
    assert log.exists()  # not ours to remove


def test_failed_records_and_successes_under_other_limits_are_read_back(tmp_path, capsys):
    """Reading checks a config's form, not one device's limits: a student's template that
    failed for lack of a knob stays (a resume must not measure it again), and so does a
    success measured under the run's own limits (tune_tasks(limits=...)); both were
    briefly skipped."""
    from systems.miniansor.sketch import Sketch

    student = Sketch("student", "tests.miniansor.faulty:launch_wrong", (("num_warps", (1,)),))
    big = gemm(2048, 2048, 2048, "fp16")
    wide = {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    _write(tmp_path / "log.jsonl", [
        (MeasureInput(big, student, {"num_warps": 1}),  # no BLOCK_M for a GEMM's checks
         MeasureResult([], ErrorNo.INSTANTIATION_ERROR, "KeyError: 'BLOCK_M'")),
        (MeasureInput(big, generate_sketches(big)[0], wide),  # 256 accumulators a thread:
         MeasureResult([1e-4]))])                             # over H100's 128
    assert len(load_records(tmp_path / "log.jsonl")) == 2
    assert "skipping" not in capsys.readouterr().err


def test_cuda_reads_back_the_one_gpu_of_a_log_on_a_machine_without_one(tmp_path):
    task = gemm(40, 50, 60, "fp32")
    sk = generate_sketches(task)[0]
    log = tmp_path / "log.jsonl"
    RecordToFile(log, "NVIDIA H100 80GB HBM3")(MeasureInput(task, sk, A), MeasureResult([3e-5]))
    RecordToFile(log, "simulated NVIDIA H100 SXM")(MeasureInput(task, sk, A),
                                                   MeasureResult([1e-5]))
    assert apply_history_best(log, "cuda").query(task).time == 3e-5  # needs no GPU here
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert apply_history_best(empty, "cuda").best == {}  # as for any device: nothing
    RecordToFile(log, "NVIDIA H200")(MeasureInput(task, sk, A), MeasureResult([2e-5]))
    with pytest.raises(ValueError, match="'cuda' stands for the GPU a log was tuned on, "
                                         "and this log holds 2 GPUs"):
        apply_history_best(log, "cuda")


def test_a_record_of_a_newly_registered_template_is_read_back(tmp_path, monkeypatch,
                                                              capsys):
    """Exercise 1 registers a persistent GEMM in TEMPLATES. Reading used to judge a
    template's kind by a second list the page never mentioned, so every record of the
    new template was skipped ("does not compute gemm") and `show` named a slower best."""
    from systems.miniansor import sketch as sketch_mod
    from systems.miniansor.sketch import Sketch

    monkeypatch.setitem(sketch_mod.TEMPLATES, "persistent",
                        sketch_mod.TEMPLATES["matmul"])
    task = gemm(40, 50, 60, "fp32")
    tiled = generate_sketches(task)[0]
    new = Sketch("tiled.persistent", "persistent", tiled.domains, tiled.fixed)
    _write(tmp_path / "log.jsonl", [(MeasureInput(task, tiled, A), MeasureResult([2e-5])),
                                    (MeasureInput(task, new, A), MeasureResult([1e-5]))])
    assert len(load_records(tmp_path / "log.jsonl")) == 2
    assert "skipping" not in capsys.readouterr().err
    assert apply_history_best(tmp_path / "log.jsonl").query(task).sketch.name == \
        "tiled.persistent"


def test_a_built_in_template_of_the_other_kind_is_skipped(tmp_path, capsys):
    """A GEMM record naming a row template (edited by hand, or from another version)
    would launch a row kernel on a GEMM's inputs; the record is skipped, with its reason."""
    task = gemm(40, 50, 60, "fp32")
    log = tmp_path / "log.jsonl"
    _write(log, [(MeasureInput(task, generate_sketches(task)[0], A), MeasureResult([2e-5]))])
    good = json.loads(log.read_text())
    with log.open("a") as f:
        f.write(json.dumps({**good, "template": "looped", "costs": [1e-7]}) + "\n")
    assert [r.costs for _, r in load_records(log)] == [[2e-5]]
    assert "template 'looped' does not compute gemm" in capsys.readouterr().err


def test_a_log_of_blank_lines_is_taken_as_an_empty_one(tmp_path):
    """check_log failed with IndexError on a file of blank lines (an empty log someone
    opened and saved): it has no record to spoil, so tuning may append to it."""
    from systems.miniansor.records import check_log

    log = tmp_path / "blank.jsonl"
    log.write_text("\n\n  \n")
    check_log(log)  # no error
    log.write_text("\nnotes\n")
    with pytest.raises(ValueError, match="is not a miniansor tuning log"):
        check_log(log)


def test_a_log_tuned_on_a_replay_table_is_read_back_with_the_same_replay_spec(tmp_path,
                                                                              capsys):
    """``--device replay:FILE`` stores the table's device name ("replay of X (source)");
    the same spec reads those records back (device_name), from apply_history_best and
    ``show --device``, and not the simulator's in the same log. A spec matching nothing
    names what it stood for and what the log holds; a table that is not there is named."""
    from common.cli import main
    from systems.miniansor.recorded import RecordedDevice, table_from_simulator
    from systems.miniansor.simulator import SimulatedGPU

    task = softmax(4, 100, "fp32")
    table = tmp_path / "table.json"
    table.write_text(json.dumps(table_from_simulator([task], SimulatedGPU(seed=0),
                                                     configs_per_task=2)))
    replay = RecordedDevice(table).name
    assert replay.startswith("replay of simulated ")
    sk = generate_sketches(task)[0]
    log = tmp_path / "log.jsonl"
    RecordToFile(log, replay)(MeasureInput(task, sk, {"num_warps": 2}), MeasureResult([4e-6]))
    assert apply_history_best(log, f"replay:{table}").query(task).time == 4e-6
    with pytest.raises(ValueError, match=r"no records of device 'sim' \(simulated NVIDIA "
                                         r"H100 SXM\); the log holds \['replay of simulated "):
        apply_history_best(log, "sim")
    RecordToFile(log, SimulatedGPU().name)(MeasureInput(task, sk, {"num_warps": 1}),
                                           MeasureResult([1e-6]))  # faster, on the sim
    assert apply_history_best(log, f"replay:{table}").query(task).ann == {"num_warps": 2}
    assert apply_history_best(log, "sim").query(task).time == 1e-6
    with pytest.raises(FileNotFoundError, match="replay table '.*missing.json' is not a file"):
        apply_history_best(log, f"replay:{tmp_path / 'missing.json'}")
    assert main(["ansor", "show", str(log), "--device", f"replay:{table}", "--json",
                 "--plot", str(tmp_path / "p.png")]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["device"] == replay and doc["records"] == 1
    assert doc["tasks"][0]["best_us"] == pytest.approx(4.0)
