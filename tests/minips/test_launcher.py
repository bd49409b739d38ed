"""``casebook ps launch`` end to end: a torch MLP on digits over real processes, with
the per-node metrics and the merged Chrome trace it promises."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def test_cli_launch_trains_the_mlp_and_reports_metrics_and_a_trace(tmp_path):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "common.cli", "ps", "launch", "--servers", "2", "--workers",
           "2", "--app", "mlp", "--consistency", "ssp:2", "--steps", "80", "--eval-every",
           "0.5", "--no-progress", "--out", str(out_dir), "--json"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    wall = time.monotonic() - t0
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["final"]["accuracy"] >= 0.85
    assert res["curve"][0]["t"] == 0.0 and len(res["curve"]) >= 3
    nodes = res["per_node"]
    worker_pushes = nodes["w0"]["push_requests"] + nodes["w1"]["push_requests"]
    server_pushes = nodes["s0"]["push_requests"] + nodes["s1"]["push_requests"]
    assert worker_pushes == 2 * 80 + 1  # plus worker 0's initialisation push
    assert server_pushes == 2 * worker_pushes  # each push is one message per server
    assert res["worker_bytes"] > 0 and nodes["s0"]["bytes_received"] > 0
    # CPU is counted from the start of training: some, and no more than the cores could
    # give during the run
    for n in ("w0", "w1", "s0", "s1"):
        assert 0 < nodes[n]["cpu_s"] <= wall * os.cpu_count()
    trace = json.loads(Path(res["trace"]).read_text())["traceEvents"]
    assert len({e["pid"] for e in trace if e["ph"] == "X"}) >= 4  # servers and workers
    flows = {e["id"] for e in trace if e["ph"] == "s"} & {e["id"] for e in trace if e["ph"] == "f"}
    assert flows  # arrows from a worker's request to the server span that served it
    assert (out_dir / "metrics-s0.prom").read_text().startswith("# HELP")
    assert "s0" in p.stdout and "MB on the wire" in p.stdout
