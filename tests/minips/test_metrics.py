"""Per-node metrics: counters, Prometheus text, atomic files, trace events."""

import json
import time

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
