"""Fixtures shared by the process-level miniclipper tests."""

import json
import urllib.error
import urllib.request

import pytest

from systems.miniclipper import ClipperConnection, LocalContainerManager


def strict_json(body: bytes):
    """JSON as strict readers (JavaScript, jq, Go) parse it: Python's json takes the bare
    NaN and Infinity that RFC 8259 does not."""
    def refuse(name):
        raise ValueError(f"not JSON: a bare {name} in {body[:200]!r}")
    return json.loads(body, parse_constant=refuse)


def post(url, doc=None, raw=None):
    """POST JSON (or raw bytes); return (status, decoded body) even for 4xx answers. The
    body must be strict JSON."""
    data = raw if raw is not None else json.dumps(doc).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, strict_json(r.read())
    except urllib.error.HTTPError as e:
        return e.code, strict_json(e.read())


def scrape(conn) -> dict[tuple[str, tuple], float]:
    """``GET /metrics`` read with prometheus_client's own parser, as Prometheus reads it:
    ``{(sample name, sorted label pairs): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(conn.get_metrics())
            for s in family.samples}


def metric(samples, name, missing=None, **labels) -> float:
    """One series' value from :func:`scrape`; KeyError if it was never written, unless
    ``missing`` says what that means (0 for a counter no event has created yet)."""
    key = (name, tuple(sorted(labels.items())))
    return samples[key] if missing is None else samples.get(key, missing)


def versioned(v):
    """A closure that answers ``float(v)`` for every input: which version served."""
    return lambda xs: [float(v)] * len(xs)


@pytest.fixture(scope="module")
def clipper(tmp_path_factory):
    """A running Clipper (ports chosen by the OS), stopped with its containers after the
    module's tests."""
    cm = LocalContainerManager(log_dir=tmp_path_factory.mktemp("clipper-logs"))
    conn = ClipperConnection(cm)
    conn.start_clipper(query_port=0, mgmt_port=0, grpc_port=0, trace_sample=1.0)
    try:
        yield conn
    finally:
        conn.stop_all()
