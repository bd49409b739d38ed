"""The recorded device replays a table and says where its numbers came from."""

import json

import numpy as np
import pytest

from systems.miniansor.annotation import config_key
from systems.miniansor.measure import DeviceFault, ErrorNo, MeasureInput, Measurer
from systems.miniansor.recorded import (
    DATA_DIR,
    FORMAT,
    RecordedDevice,
    TableRecorder,
    table_from_simulator,
    validate_table,
)
from systems.miniansor.simulator import SimulatedGPU
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.tune import tune_task
from systems.miniansor.workloads import gemm, softmax

TASKS = [gemm(256, 512, 1024), softmax(1024, 2048)]


@pytest.fixture(scope="module")
def table():
    return table_from_simulator(TASKS, SimulatedGPU(seed=0), configs_per_task=120)


def test_a_simulated_table_says_so_and_replays_the_simulator(table):
    assert table["source"] == "simulated" and "NOT a measurement" in table["notes"]
    dev = RecordedDevice(table)
    assert dev.source == "simulated" and "simulated" in dev.name
    sim = SimulatedGPU(seed=0)
    for task in TASKS:
        space = dev.space(task)
        assert 0 < len(space) <= 120
        s, a = space[0]
        assert dev.measure(task, s, a, 3) == pytest.approx(sim.measure(task, s, a, 3),
                                                           rel=1e-3)


def test_unrecorded_configs_fail_as_not_recorded(table):
    dev = RecordedDevice(table)
    task = TASKS[0]
    s, a = dev.space(task)[0]
    recorded = {k for k in table["tasks"][task.key]}
    missing = next(dict(a, num_warps=w) for w in (2, 4, 8, 16)
                   if f"{s.name}[{','.join(f'{k}={dict(a, num_warps=w)[k]}' for k in sorted(a))}]"
                   not in recorded)
    with pytest.raises(DeviceFault) as e:
        dev.measure(task, s, missing)
    assert e.value.kind == "NOT_RECORDED"


def test_tuning_on_the_replay_device_measures_only_recorded_configs(table):
    dev = RecordedDevice(table)
    task = TASKS[0]
    keys = []
    res = tune_task(task, 24, device=dev, progress=False,
                    callbacks=[lambda i, r: keys.append(i.key)])
    assert res.trials == 24 and len(set(keys)) == 24
    assert set(keys) <= set(table["tasks"][task.key])
    assert res.errors.get("NOT_RECORDED", 0) == 0


def test_replaying_a_task_the_table_lacks_is_an_error(table):
    with pytest.raises(ValueError, match="table of .* has no config"):
        tune_task(gemm(128, 128, 128), 8, device=RecordedDevice(table), progress=False)


def test_a_recorder_writes_a_table_the_device_reads(tmp_path):
    task = TASKS[1]
    sim = SimulatedGPU()
    rec = TableRecorder("unit-test GPU", "measured")
    m = Measurer(sim, verify="none", callbacks=[rec])
    sk = table_from_simulator([task], sim, 2)["tasks"][task.key]
    from systems.miniansor.annotation import parse_config_key
    from systems.miniansor.sketch import sketch_by_name

    inputs = [MeasureInput(task, sketch_by_name(task, parse_config_key(k)[0]),
                           parse_config_key(k)[1]) for k in sk]
    m.measure(inputs)
    path = rec.write(tmp_path / "t.json")
    dev = RecordedDevice(path)
    assert dev.source == "measured" and len(dev.space(task)) == 2
    assert Measurer(dev, verify="none").measure(inputs)[0].error == ErrorNo.NO_ERROR


def test_tables_without_a_source_are_refused(tmp_path, table):
    bad = dict(table, source="made-up")
    with pytest.raises(ValueError, match="source must be one of"):
        validate_table(bad)
    p = tmp_path / "x.json"
    p.write_text(json.dumps({k: v for k, v in table.items() if k != "format"}))
    with pytest.raises(ValueError, match="format"):
        RecordedDevice(p)


def test_the_committed_demo_table_is_labelled_simulated():
    t = json.loads((DATA_DIR / "sim-demo.json").read_text())
    validate_table(t)
    assert t["source"] == "simulated"
    assert not list(DATA_DIR.glob("recorded-*.json")) or all(
        json.loads(p.read_text())["source"] == "measured"
        for p in DATA_DIR.glob("recorded-*.json"))


def test_record_space_measures_the_same_draw_through_the_measurer_and_saves_each_chunk(table):
    """The GPU recorder, run on the simulator: it draws the same configs as
    table_from_simulator for the same seed, records each one's time (the device's own
    median) or error, and hands the table so far to on_chunk after every chunk."""
    from systems.miniansor.recorded import record_space

    saved = []
    rec = record_space(TASKS, SimulatedGPU(seed=0), configs_per_task=120, seed=0, chunk=50,
                       on_chunk=lambda r, done: saved.append(
                           (done, sum(len(v) for v in r.tasks.values()))))
    got = rec.table()
    validate_table(got)
    assert got["source"] == "simulated"
    for task in TASKS:
        assert set(got["tasks"][task.key]) == set(table["tasks"][task.key])  # same draw
        for ck, entry in got["tasks"][task.key].items():
            ref = table["tasks"][task.key][ck]
            assert ("error" in entry) == ("error" in ref)
            if "error" not in entry:  # the simulator's time, up to its seeded noise
                assert np.median(entry["time_s"]) == pytest.approx(np.median(ref["time_s"]),
                                                                   rel=0.1)
    want, done = [], 0
    for task in TASKS:  # chunks of 50 within each task
        n = len(table["tasks"][task.key])
        want += [done + min(i + 50, n) for i in range(0, n, 50)]
        done += n
    assert [d for d, _ in saved] == want and want[-1] == done
    assert all(d == count for d, count in saved)  # the table so far holds every config


def test_record_space_refuses_a_replayed_device(table):
    from systems.miniansor.recorded import record_space

    with pytest.raises(ValueError, match="not on a 'replay' device"):
        record_space(TASKS, RecordedDevice(table), configs_per_task=2)



def test_a_table_read_as_records_keeps_each_time_and_error_and_skips_what_it_is_told(table):
    """The records a cost model pre-trains on: one per recorded config of a
    known sketch, with the table's times (or its error), labelled with the device."""
    t = json.loads(json.dumps(table))  # a copy to add entries to
    task = TASKS[0]
    first = next(iter(t["tasks"][task.key]))
    t["tasks"][task.key][first] = {"error": "OUT_OF_RESOURCES", "msg": "smem"}
    t["tasks"][task.key]["tutorial[BLOCK_M=64]"] = {"time_s": [1e-6]}  # not our sketch
    dev = RecordedDevice(t)
    recs = dev.records()
    assert len(recs) == sum(len(e) for e in t["tasks"].values()) - 1
    for inp, res in recs:
        entry = t["tasks"][inp.task.key][inp.key]
        assert res.device == dev.name
        if inp.key == first and inp.task.key == task.key:
            assert res.error == ErrorNo.OUT_OF_RESOURCES and res.time == float("inf")
        else:
            assert res.ok and res.time == pytest.approx(np.median(entry["time_s"]))
    only_softmax = dev.records(skip=lambda x: x.key == task.key)
    assert {i.task.key for i, _ in only_softmax} == {TASKS[1].key}
    assert len(only_softmax) == len(t["tasks"][TASKS[1].key])


@pytest.mark.parametrize("entry,why", [
    ({"time_s": [0.0]}, "times > 0"), ({"time_s": [-1e-3]}, "times > 0"),
    ({"time_s": 5}, "times > 0"), ({"time_s": []}, "times > 0"),
    ({"error": "SEGFAULT"}, "not one of"), ({"error": "NO_ERROR"}, "not one of"),
    # replay failed it, records() (--history) timed it; "abc" crashed tuning
    ({"error": "COMPILE_ERROR", "time_s": [1e-9]}, "both time_s and error"),
    ({"error": "COMPILE_ERROR", "time_s": "abc"}, "both time_s and error")])
def test_a_table_entry_with_an_unusable_time_or_error_is_refused_by_name(table, entry, why):
    """A zero time crashed the cost model's fit (an infinite throughput), a negative one
    became the best kernel, an unknown error name crashed ``records()``."""
    task = TASKS[0]
    bad = json.loads(json.dumps(table))
    ck = next(iter(bad["tasks"][task.key]))
    bad["tasks"][task.key][ck] = entry
    with pytest.raises(ValueError, match=why) as e:
        RecordedDevice(bad)
    assert ck in str(e.value)


def test_a_config_key_missing_a_parameter_is_refused_naming_the_key(table):
    """A key without one of its sketch's parameters (a hand edit, or a table from a
    sketch with other knobs) passed validation, was sampled by the search, and stopped
    tuning in the cost model with the bare message "'BLOCK_K'"."""
    task = TASKS[0]
    bad = json.loads(json.dumps(table))
    ck = next(k for k in bad["tasks"][task.key] if "BLOCK_K=" in k)
    dropped = ck.replace(f"BLOCK_K={ck.split('BLOCK_K=')[1].split(',')[0]},", "")
    bad["tasks"][task.key][dropped] = bad["tasks"][task.key].pop(ck)
    with pytest.raises(ValueError, match=r"sets \[.*\], but sketch .* has parameters") as e:
        RecordedDevice(bad)
    assert dropped in str(e.value)
    bad["tasks"][task.key]["tiled.rowmajor[BLOCK_M]"] = {"time_s": [1e-3]}
    bad["tasks"][task.key].pop(dropped)
    with pytest.raises(ValueError, match="is not a config key"):
        RecordedDevice(bad)


def test_a_recorded_true_time_is_the_median_of_the_recorded_times():
    task = gemm(64, 64, 64)
    sk = generate_sketches(task)[0]
    ann = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 2, "num_stages": 2}
    table = {"format": FORMAT, "source": "measured", "device": "test",
             "tasks": {task.key: {config_key(sk, ann): {"time_s": [1e-3, 1e-3, 4e-3]}}}}
    assert RecordedDevice(table).true_time(task, sk, ann) == 1e-3
