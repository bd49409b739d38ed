"""Per-node metrics: counters, Prometheus text, atomic files, trace events."""

import json
import time

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from systems.minips.metrics import NodeMetrics, load_all


def test_counters_export_as_prometheus_and_json(tmp_path):
    m = NodeMetrics("s0", "server")
    m.inc("push_requests", 3)
    m.wire(sent=100, received=40)
    m.span("push", 0.0, 5.0, keys=10)
    families = {f.name: f for f in text_string_to_metric_families(m.prometheus())}
    sample = families["minips_push_requests"].samples[0]
    assert sample.value == 3 and sample.labels == {"node": "s0", "role": "server"}
    assert families["minips_bytes_sent"].samples[0].value == 100
    m.save(tmp_path)
    assert load_all(tmp_path)["s0"]["bytes_received"] == 40
    trace = json.loads((tmp_path / "trace-s0.json").read_text())
    assert any(e.get("name") == "push" and e["ph"] == "X" for e in trace["traceEvents"])


def test_cpu_seconds_count_from_the_start_of_the_real_work():
    m = NodeMetrics("n", "worker", trace=False)
    t_end = time.process_time() + 0.3
    while time.process_time() < t_end:  # start-up work, left out
        pass
    m.start_cpu_clock()
    t_end = time.process_time() + 0.1
    while time.process_time() < t_end:
        pass
    assert 0.09 <= m.snapshot()["cpu_s"] < 0.25


def test_a_request_given_up_as_stuck_frees_its_trace_row():
    """Every way a request ends closes its row; a given-up one kept it for good, and each
    later request opened another."""
    import threading
    import time

    from systems.minips.recovery import Recovery
    from systems.minips.tracker import Pending, Request

    class Worker(Recovery):  # the bookkeeping KVWorker gives the mixin
        def __init__(self):
            self.lock, self.requests = threading.RLock(), {}
            self.metrics = NodeMetrics("w0", "worker")

        def _next_push(self):
            pass

    kv = Worker()
    lanes = []
    for i in range(3):
        req = Request(i, "pull", np.zeros(1, np.uint64), None, [(0, 8)],
                      lane=kv.metrics.open_lane())
        req.pending[0] = Pending(0, None, 0)  # a slice with no live call: resending
        req.stuck_since = time.monotonic() - 100
        kv.requests[i] = req
        kv._give_up_stuck(silent=100, after=10)
        assert req.done.is_set() and "got no reply" in str(req.error)
        lanes.append(req.lane)
    assert len(set(lanes)) == 1  # the row was free again for the next request
