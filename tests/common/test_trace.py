import json
import subprocess
import sys
import threading
import time

import pytest

from common.trace import TraceWriter, flow_number, load, merge, write_json_atomic


def _valid_chrome_trace(doc):
    """The checks chrome://tracing and Perfetto apply to the JSON object format."""
    assert isinstance(doc["traceEvents"], list)
    for e in doc["traceEvents"]:
        assert e["ph"] in {"X", "C", "s", "f", "M", "i"}
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float))
        if e["ph"] == "X":
            assert e["dur"] >= 0
        if e["ph"] in "sf":  # Perfetto reads a string id as hex and drops the arrow when
            assert isinstance(e["id"], int) and 0 <= e["id"] < 1 << 53  # it does not parse;
            # JavaScript (chrome://tracing) keeps integers exact below 2^53


def test_spans_counters_and_flows_are_written_as_valid_json(tmp_path):
    w = TraceWriter("unit-test")
    w.name_thread("main", tid=1)
    with w.span("outer", tid=1, args={"k": 1}) as extra:
        time.sleep(0.001)
        w.flow(42, start=True, tid=1)
        extra["late"] = "added inside"
    w.counter("queue", {"len": 3})
    w.instant("mark", tid=1)
    path = w.save(tmp_path / "t.json")
    doc = json.loads(path.read_text())
    _valid_chrome_trace(doc)
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert spans[0]["name"] == "outer" and spans[0]["dur"] >= 1000  # >= 1 ms in us
    assert spans[0]["args"] == {"k": 1, "late": "added inside"}
    assert any(e["ph"] == "C" and e["args"] == {"len": 3} for e in doc["traceEvents"])
    assert any(e["ph"] == "M" and e["args"]["name"] == "unit-test" for e in doc["traceEvents"])


def test_threads_get_their_own_rows():
    w = TraceWriter()
    together = threading.Barrier(4)  # all four alive at once, so none reuses an id

    def work():
        with w.span("t"):
            together.wait()

    ts = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len({e["tid"] for e in w.events}) == 4


CHILD = """
import sys
from common.trace import TraceWriter
w = TraceWriter("child")
with w.span("handle", tid=1):
    w.flow("q7", start=False, tid=1)
w.save(sys.argv[1])
"""


def test_traces_from_two_processes_merge_on_one_clock(tmp_path):
    parent = TraceWriter("parent")
    with parent.span("send", tid=1):
        parent.flow("q7", start=True, tid=1)
    parent.save(tmp_path / "p.json")
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "c.json")], check=True)
    out = merge([tmp_path / "p.json", tmp_path / "c.json"], tmp_path / "m.json")
    doc = json.loads(out.read_text())
    _valid_chrome_trace(doc)
    ev = doc["traceEvents"]
    assert len({e["pid"] for e in ev}) == 2
    start = next(e for e in ev if e["ph"] == "s")
    finish = next(e for e in ev if e["ph"] == "f")
    assert start["id"] == finish["id"] == flow_number("q7") != flow_number("q8")
    # CLOCK_MONOTONIC is machine-wide: the child's span starts after the parent's flow.
    assert finish["ts"] >= start["ts"]
    assert finish["ts"] - start["ts"] < 60e6


def test_torch_profiler_trace_is_merged(tmp_path):
    import torch

    from common.trace import torch_profile

    w = TraceWriter("host")
    with w.span("region"):
        with torch_profile(w, label="torch ops"):
            torch.ones(64, 64) @ torch.ones(64, 64)
    w.save(tmp_path / "t.json")
    ev = load(tmp_path / "t.json")
    names = {e.get("name") for e in ev}
    assert "aten::mm" in names or "aten::matmul" in names
    region = next(e for e in ev if e.get("name") == "region")
    mm = next(e for e in ev if e.get("name") in ("aten::mm", "aten::matmul"))
    assert region["ts"] - 1e3 <= mm["ts"] <= region["ts"] + region["dur"] + 1e3


def test_atomic_json_files_are_readable_by_others(tmp_path):
    import stat

    from common.trace import write_json_atomic

    p = write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert stat.S_IMODE(p.stat().st_mode) == 0o644 and json.loads(p.read_text()) == {"a": 1}


def test_a_failed_write_leaves_no_temporary_and_numpy_values_are_written(tmp_path):
    import numpy as np

    path = write_json_atomic(tmp_path / "ok.json", {"x": np.float32(1.5), "v": np.arange(2)})
    assert json.loads(path.read_text()) == {"x": 1.5, "v": [0, 1]}
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.json"]


def test_a_durable_write_reaches_the_disk_before_it_is_visible(tmp_path, monkeypatch):
    """A checkpoint's manifest is written this way just before the files it replaces
    are deleted: the file and its directory entry must both be fsynced."""
    import os

    from common.trace import write_json_atomic

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    path = write_json_atomic(tmp_path / "manifest.json", {"generation": 1}, durable=True)
    assert json.loads(path.read_text()) == {"generation": 1}
    assert any(".manifest.json." in p for p in synced) and str(tmp_path) in synced
    synced.clear()
    write_json_atomic(tmp_path / "trace.json", {})  # a trace need not be
    assert synced == []


def test_a_nan_duration_and_pid_zero_are_written_as_chrome_reads_them(tmp_path):
    """max(nan, 0) is nan, which is not JSON; ``pid or self.pid`` replaced a pid of 0."""
    w = TraceWriter("unit-test")
    w.complete("nan-span", 1.0, float("nan"), tid=1)
    w.name_process("zero", pid=0)
    doc = json.loads(w.save(tmp_path / "t.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"{c} in a trace"))
    assert next(e for e in doc["traceEvents"] if e["name"] == "nan-span")["dur"] == 0.0
    assert any(e["ph"] == "M" and e["pid"] == 0 for e in doc["traceEvents"])


def test_a_bounded_writer_keeps_its_bound_and_counts_what_it_dropped():
    """A long-running Clipper frontend traced ~7 events per sampled query without end
    (3.5 MB per 1,000 queries); past ``max_events`` events are dropped and counted,
    except row names (metadata), which the viewer needs for what was kept."""
    from common.trace import TraceWriter

    w = TraceWriter("p", max_events=10)
    for i in range(100):
        w.complete("x", float(i), 1.0)
    w.name_thread("late")
    w.extend([{"ph": "X", "name": "y", "ts": 0, "dur": 1, "pid": 1, "tid": 1}] * 5)
    assert len(w.events) == 11 and w.dropped == 96
    assert w.events[-1]["ph"] == "M"


def test_a_bounded_trace_says_it_was_cut_short_and_keeps_row_names():
    """Past max_events the served/saved trace must say how much it lost (else a
    truncated trace looks complete), and extend() keeps row names as _add does."""
    w = TraceWriter("p", max_events=3)
    for i in range(10):
        w.complete(f"e{i}", float(i), 1.0)
    doc = w.to_json()
    assert doc["otherData"]["dropped_events"] == w.dropped == 8
    w.extend([{"ph": "M", "name": "process_name", "pid": 7, "tid": 0,
               "args": {"name": "torch"}}])
    assert any(e.get("pid") == 7 for e in w.events)


def test_row_problems_finds_overlaps_and_unbound_arrows():
    from common.trace import row_problems

    def x(ts, dur, tid=1):
        return {"ph": "X", "name": "a", "ts": ts, "dur": dur, "pid": 1, "tid": tid}

    clean = [x(0, 10), x(2, 3), x(5, 5), x(20, 1),
             {"ph": "s", "id": 1, "ts": 3, "pid": 1, "tid": 1},
             {"ph": "f", "id": 1, "bp": "e", "ts": 20, "pid": 1, "tid": 1}]
    assert row_problems(clean) == []
    assert "without nesting" in row_problems([x(0, 10), x(5, 10)])[0]
    assert row_problems([x(0, 10), x(5, 10, tid=2)]) == []  # other rows may overlap
    stray = [x(0, 10), {"ph": "s", "id": 7, "ts": 3, "pid": 1, "tid": 2}]
    assert "lies in no span of its row" in row_problems(stray)[0]


def test_rows_keep_overlapping_work_apart_and_are_reused():
    from common.trace import TraceWriter, row_problems

    tw = TraceWriter()
    a, b = tw.open_row("req"), tw.open_row("req")
    assert a != b
    tw.close_row("req", a)
    assert tw.open_row("req") == a  # a free row is reused: rows = most open at once
    spans = [(0, 10), (5, 15), (12, 20), (2, 4), (16, 30)]  # written in end order or not
    for t0, t1 in spans:
        tw.complete("q", t0, t1 - t0, tid=tw.row_for("queue", t0, t1))
    assert row_problems(tw.events) == []
    queue_rows = {e["tid"] for e in tw.events if e.get("name") == "q"}
    assert len(queue_rows) == 3  # (2, 4) comes last: rows 0 and 1 have moved past it
    names = {e["args"]["name"] for e in tw.events if e.get("name") == "thread_name"}
    assert {"req 0", "req 1", "queue 0", "queue 1", "queue 2"} <= names


def test_a_nan_anywhere_is_written_as_null_so_json_parse_reads_the_file(tmp_path):
    """A NaN counter (a diverged loss) or an inf span arg was written as bare NaN or
    Infinity: JavaScript's JSON.parse, which Perfetto and chrome://tracing use, refuses
    the whole file."""
    import numpy as np

    tw = TraceWriter("p")
    tw.counter("loss", {"loss": float("nan")})
    tw.complete("step", 1.0, 2.0, args={"lr": np.float64("inf"), "ok": 1.5})
    path = tw.save(tmp_path / "t.json")

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    doc = json.loads(path.read_text(), parse_constant=refuse)
    args = [e["args"] for e in doc["traceEvents"] if e.get("ph") in ("C", "X")]
    assert {"loss": None} in args and {"lr": None, "ok": 1.5} in args
