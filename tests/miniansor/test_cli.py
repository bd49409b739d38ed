"""``casebook ansor``: tune, resume, show; --json prints one document last."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def casebook(*args, cwd=ROOT):
    out = subprocess.run([sys.executable, "-m", "common.cli", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=120)
    return out


def test_tune_then_show(tmp_path, capsys):
    log = tmp_path / "t.jsonl"
    out = casebook("ansor", "tune", "--workload", "gemm", "--shape", "64,96,128", "--dtype",
                   "fp16", "--epilogue", "bias+relu", "--trials", "6", "--log", str(log),
                   "--no-progress", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["trials"] == 6 and doc["tasks"][0]["task"] == "gemm:64x96x128:fp16:bias+relu"
    assert doc["tasks"][0]["best_us"] > 0 and len(log.read_text().splitlines()) == 6
    assert "6 trials (0 resumed from the log)" in out.stdout
    show = casebook("ansor", "show", str(log), "--plot", str(tmp_path / "p.png"), "--json")
    assert show.returncode == 0, show.stderr[-2000:]
    sdoc = json.loads(show.stdout.strip().splitlines()[-1])
    assert sdoc["records"] == 6 and (tmp_path / "p.png").stat().st_size > 1000
    # the plotted curve: best throughput so far, per trial of the task, never falling,
    # ending at the best the table reports
    (key, curve), = sdoc["curves"].items()
    ys = curve["best_tflops"]
    assert key == doc["tasks"][0]["task"] and curve["trials"][-1] == 6
    assert all(b >= a for a, b in zip(ys, ys[1:], strict=False))
    assert ys[-1] == pytest.approx(sdoc["tasks"][0]["tflops"])
    # the default plot beside a log it cannot write (a read-only share; here a directory
    # in the way): the table still shows, where the command failed with only the error
    from common.cli import main

    log.with_suffix(".png").mkdir()
    assert main(["ansor", "show", str(log), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["plot"] is None
    assert "gemm:64x96x128" in out and "no plot: " in err


def test_bad_shape_is_a_clear_error():
    from common.cli import build_parser

    args = build_parser().parse_args(["ansor", "tune", "--workload", "gemm", "--shape",
                                      "64,x", "--trials", "1"])
    with pytest.raises(ValueError, match="comma-separated integers"):
        args.func(args)


def _show(*argv):
    from common.cli import build_parser

    args = build_parser().parse_args(["ansor", "show", *argv])
    return args.func(args)


def _log(path, device, weights, times):
    from systems.miniansor.measure import MeasureInput, MeasureResult
    from systems.miniansor.records import RecordToFile
    from systems.miniansor.sketch import generate_sketches

    rec = RecordToFile(path, device, weights)
    for task, t in times:
        rec(MeasureInput(task, generate_sketches(task)[0], {"num_warps": 1}),
            MeasureResult([t]))


def test_show_weights_each_task_as_the_tuner_did(tmp_path, capsys):
    from systems.miniansor.workloads import layernorm, softmax

    a, b = softmax(4, 64, "fp32"), layernorm(4, 64, "fp32")
    times = [(a, 3e-6), (b, 5e-6), (a, 2e-6), (b, 4e-6)]
    log = tmp_path / "m.jsonl"
    _log(log, "dev", {a.key: 1, b.key: 2}, times)
    out = _show(str(log), "--plot", str(tmp_path / "p.png"))
    assert out["weighted_latency_us"] == pytest.approx(1 * 2.0 + 2 * 4.0)  # sum w * best
    said = capsys.readouterr().out
    assert "weighted latency 10.00 us" in said
    # show only reads a log: it counts its records and resumes nothing (tune's wording)
    assert "4 trials; errors" in said and "resumed" not in said
    bare = tmp_path / "bare.jsonl"  # no weights known: say it is a plain sum
    _log(bare, "dev", None, times)
    out = _show(str(bare), "--plot", str(tmp_path / "q.png"))
    assert out["weighted_latency_us"] is None and out["latency_sum_us"] == pytest.approx(6.0)
    assert "unweighted sum of best latencies 6.00 us" in capsys.readouterr().out
    _log(bare, "other", None, [(a, 1e-9)])  # a second device's times are not mixed in
    with pytest.raises(ValueError, match="2 devices"):
        _show(str(bare), "--plot", str(tmp_path / "q.png"))
    out = _show(str(bare), "--plot", str(tmp_path / "q.png"), "--device", "dev")
    assert out["latency_sum_us"] == pytest.approx(6.0)
    with pytest.raises(ValueError, match=r"no records of device 'nope'; the log holds "
                                         r"\['dev', 'other'\]"):
        _show(str(bare), "--plot", str(tmp_path / "q.png"), "--device", "nope")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no records: an empty log"):
        _show(str(empty))


def test_the_device_spec_a_log_was_tuned_with_reads_it_back(tmp_path):
    """`--device sim` tunes; the log stores the simulator's full name. Reading back with
    `sim` used to find nothing, and apply_history_best returned an empty dispatcher
    (miniflow then fell back to torch for every kernel without a word)."""
    from systems.miniansor.records import apply_history_best
    from systems.miniansor.simulator import SimulatedGPU
    from systems.miniansor.workloads import softmax

    log = tmp_path / "sim.jsonl"
    a = softmax(4, 64, "fp32")
    _log(log, SimulatedGPU().name, None, [(a, 2e-6)])
    assert apply_history_best(log, device="sim").query(a).time == 2e-6
    assert _show(str(log), "--plot", str(tmp_path / "p.png"), "--device", "sim")[
        "latency_sum_us"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no records of device 'other'"):
        apply_history_best(log, device="other")


def test_show_lists_a_task_whose_measurements_all_failed_and_gives_no_total(tmp_path,
                                                                           capsys):
    from systems.miniansor.measure import ErrorNo, MeasureInput, MeasureResult
    from systems.miniansor.records import RecordToFile
    from systems.miniansor.sketch import generate_sketches
    from systems.miniansor.workloads import layernorm, softmax

    a, b = softmax(4, 64, "fp32"), layernorm(4, 64, "fp32")
    log = tmp_path / "m.jsonl"
    _log(log, "dev", {a.key: 1, b.key: 5}, [(a, 2e-6)])
    RecordToFile(log, "dev", {b.key: 5})(
        MeasureInput(b, generate_sketches(b)[0], {"num_warps": 1}),
        MeasureResult([], ErrorNo.WRONG_ANSWER, "bad"))
    out = _show(str(log), "--plot", str(tmp_path / "p.png"))
    rows = {t["task"]: t for t in out["tasks"]}
    assert set(rows) == {a.key, b.key} and rows[b.key]["best_us"] is None
    assert rows[a.key]["best_us"] == pytest.approx(2.0)
    # a model missing a kernel has no latency: not the sum of the others
    assert out["weighted_latency_us"] is None and out["latency_sum_us"] is None
    assert "no latency: 1 task(s) have no successful measurement" in capsys.readouterr().out


def test_tune_on_the_replayed_h200_picks_a_recorded_config_at_its_recorded_time():
    """``--device replay:FILE`` measures nothing: every trial is a row of the committed
    table of real H200 times, so the best must be one of its rows, at that row's time."""
    from systems.miniansor.annotation import config_key
    from systems.miniansor.sketch import Sketch

    table = ROOT / "systems" / "miniansor" / "data" / "space-nvidia-h200.json"
    out = casebook("ansor", "tune", "--workload", "gemm", "--shape", "16,4096,14336",
                   "--dtype", "fp16", "--device", f"replay:{table}", "--trials", "16",
                   "--no-progress", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["trials"] == 16 and "H200" in doc["device"]
    best = doc["tasks"][0]
    rows = json.loads(table.read_text())["tasks"]["gemm:16x4096x14336:fp16:none"]
    key = config_key(Sketch(best["sketch"], "matmul"), best["ann"])
    assert key in rows, key
    assert best["best_us"] == pytest.approx(min(rows[key]["time_s"]) * 1e6, rel=1e-6)


def test_tune_model_tunes_each_extracted_task_and_weighs_them():
    """``tune-model --model mlp``: three GEMM tasks (the middle one occurs twice), and the
    reported objective is the weighted sum of the per-task bests."""
    out = casebook("ansor", "tune-model", "--model", "mlp", "--trials", "24", "--no-progress",
                   "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["trials"] == 24 and [t["weight"] for t in doc["tasks"]] == [1, 2, 1]
    assert doc["weighted_latency_us"] == pytest.approx(
        sum(t["weight"] * t["best_us"] for t in doc["tasks"]), rel=1e-9)
    assert doc["curve"]["trials"] == [8, 16, 24]


def test_inputs_that_are_not_what_they_claim_are_refused_with_their_name(tmp_path, capsys):
    """A replay table given as --log used to be appended to (and spoiled); a typo in an
    epilogue was dropped; a malformed table, a missing log, and a record with a zero
    time gave tracebacks or a negative latency."""
    from common.cli import main

    table = tmp_path / "table.json"
    table.write_text(json.dumps({"format": "miniansor-recorded/1", "source": "simulated",
                                 "tasks": {}}) + "\n")
    before = table.read_bytes()
    tune = ["ansor", "tune", "--workload", "gemm", "--shape", "64,64,64", "--trials", "2",
            "--no-progress", "--no-verify"]
    assert main([*tune, "--log", str(table)]) == 2
    assert "is not a miniansor tuning log" in capsys.readouterr().err
    assert table.read_bytes() == before
    notes = tmp_path / "notes.txt"  # no JSON at all: records were appended to it
    notes.write_text("my notes\nline two\n")
    assert main([*tune, "--log", str(notes)]) == 2
    assert "is not a miniansor tuning log" in capsys.readouterr().err
    assert notes.read_text() == "my notes\nline two\n"
    assert main([*tune, "--history", str(notes)]) == 2  # it learnt nothing, and said 0
    err = capsys.readouterr().err
    assert "--history" in err and "no tuning record" in err
    assert main([*tune, "--epilogue", "bais+relu"]) == 2
    assert "parts are bias, relu or gelu (one), res" in capsys.readouterr().err
    for bad in ([1, 2], {"format": "miniansor-recorded/1", "source": "measured",
                         "tasks": {"gemm:64x64x64:fp16:none": [1]}}):
        table.write_text(json.dumps(bad))
        assert main([*tune, "--device", f"replay:{table}"]) == 2
        err = capsys.readouterr().err
        assert str(table) in err and len(err.strip().splitlines()) == 1, err
    assert main(["ansor", "show", str(tmp_path / "none.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*tune, "--device", "replay:"]) == 2  # used to say "'.' is not a file"
    assert "needs the path of a replay table" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # used to reach scikit-learn and fail there
        main([*tune, "--seed", str(1 << 32)])
    assert "--seed: must be below 2**32" in capsys.readouterr().err
    log = tmp_path / "m.jsonl"
    from systems.miniansor.workloads import softmax

    a = softmax(4, 64, "fp32")
    _log(log, "dev", {a.key: 1}, [(a, 2e-6), (a, 0.0)])  # a zero time is no measurement
    out = _show(str(log), "--plot", str(tmp_path / "p.png"))
    assert out["records"] == 1 and out["tasks"][0]["best_us"] == pytest.approx(2.0)


def test_show_curves_count_every_trial_of_the_task_failed_ones_included(tmp_path):
    from systems.miniansor.measure import ErrorNo, MeasureInput, MeasureResult
    from systems.miniansor.records import RecordToFile
    from systems.miniansor.sketch import generate_sketches
    from systems.miniansor.workloads import softmax

    a = softmax(4, 128, "fp32")  # 128 columns: four warps can share a row
    sk = generate_sketches(a)[0]
    rec = RecordToFile(tmp_path / "m.jsonl", "dev", {a.key: 1})
    rec(MeasureInput(a, sk, {"num_warps": 1}), MeasureResult([], ErrorNo.WRONG_ANSWER, "x"))
    rec(MeasureInput(a, sk, {"num_warps": 2}), MeasureResult([4e-6]))
    rec(MeasureInput(a, sk, {"num_warps": 4}), MeasureResult([2e-6]))
    out = _show(str(tmp_path / "m.jsonl"), "--plot", str(tmp_path / "p.png"))
    curve = out["curves"][a.key]
    assert curve["trials"] == [2, 3]  # the failed first trial counts
    assert curve["best_tflops"] == pytest.approx([a.flops / 4e-6 / 1e12, a.flops / 2e-6 / 1e12])


def test_a_replay_table_as_history_pretrains_the_cost_model(tmp_path, capsys):
    """--history took only logs; a replay table (whose measurements are records too) was
    read as a log of malformed lines, and nothing was learned."""
    from systems.miniansor.recorded import RecordedDevice
    from systems.miniansor.tune import _history

    table = ROOT / "systems/miniansor/data/sim-demo.json"
    got = _history(table)
    assert len(got) == len(RecordedDevice(table).records()) > 0
    assert "skipping line" not in capsys.readouterr().err
    # ... and it reaches the model of a run on the hardware that measured it: the table's
    # records are "replay of <device> (<source>)", which as a name matched no live device,
    # so a table taught nothing to the simulator that made it, or to the GPU that measured it
    from systems.miniansor.tune import _resume, make_device
    from systems.miniansor.workloads import Task

    task = Task.from_key("gemm:2048x2048x2048:fp16:none")
    assert len(_resume([task], None, table, make_device("sim").name)[1]) == len(got)
    h200 = ROOT / "systems/miniansor/data/recorded-nvidia-h200.json"
    assert len(_resume([task], None, h200, "NVIDIA H200")[1]) > 0
    assert _resume([task], None, h200, make_device("sim").name)[1] == []  # another one


def test_a_tuning_run_that_measured_nothing_exits_1_with_standard_json(tmp_path, capsys):
    """Every config of the task fails on this (replayed) device: the run used to exit 0
    and print "weighted_latency_us": Infinity, which JSON readers other than Python's
    refuse."""
    from common.cli import main

    demo = json.loads((Path(__file__).parents[2] / "systems" / "miniansor" / "data" /
                       "sim-demo.json").read_text())
    task = "gemm:2048x2048x2048:fp16:none"
    demo["tasks"] = {task: {cfg: {"error": "OUT_OF_RESOURCES"} for cfg in demo["tasks"][task]}}
    table = tmp_path / "allfail.json"
    table.write_text(json.dumps(demo))
    assert main(["ansor", "tune", "--workload", "gemm", "--shape", "2048,2048,2048",
                 "--device", f"replay:{table}", "--trials", "8", "--no-progress",
                 "--json"]) == 1
    out = capsys.readouterr().out
    doc = json.loads(out.splitlines()[-1], parse_constant=lambda c: pytest.fail(c))
    assert doc["weighted_latency_us"] is None
    assert "no latency: 1 task(s) have no successful measurement" in out


def test_record_table_replaces_its_table_only_when_it_finishes(tmp_path, monkeypatch,
                                                               capsys):
    """A rerun killed after its first chunk replaced a complete (committed) table with
    that chunk, and every reader took it. The chunks go to <out>.partial, which no
    reader's glob takes; only a finished run replaces <out>."""
    from common.cli import main
    from systems.miniansor import recorded

    out, task = tmp_path / "space.json", "gemm:256x256x256:fp16:none"
    cmd = ["ansor", "record-table", "--device", "sim", "--tasks", task, "--configs", "80",
           "--out", str(out), "--no-progress"]
    assert main(cmd) == 0
    assert len(json.loads(out.read_text())["tasks"][task]) == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.json"]
    complete = out.read_bytes()
    real = recorded.record_space

    def cut_after_one_chunk(*a, on_chunk, **kw):
        def chunk(rec, done):
            on_chunk(rec, done)
            raise KeyboardInterrupt
        return real(*a, on_chunk=chunk, **kw)

    monkeypatch.setattr(recorded, "record_space", cut_after_one_chunk)
    assert main(cmd) == 130
    assert out.read_bytes() == complete  # the finished table is untouched
    part = json.loads((tmp_path / "space.json.partial").read_text())
    assert len(part["tasks"][task]) == 64  # one chunk, kept
    assert "space.json.partial" in capsys.readouterr().err
    assert [p.name for p in tmp_path.glob("space*.json")] == ["space.json"]  # bench's glob
