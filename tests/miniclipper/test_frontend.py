"""The query path end to end (systems/miniclipper/frontend.py, query_processor.py,
task_executor.py): real frontend and container processes over loopback."""

import concurrent.futures as cf
import json
import os
import time

import grpc
import numpy as np
import pytest

from common import rpc
from common.wire import pack, unpack
from systems.miniclipper import (
    BatchingConfig,
    deploy_python_closure,
    deploy_sklearn_model,
)
from systems.miniclipper.frontend import QUERY_SERVICE, UNKNOWN_APP

from .conftest import metric, post, scrape, versioned

W = np.random.default_rng(0).standard_normal((8, 5))


def linear(xs):
    return (np.asarray(xs) @ W).argmax(axis=1)


@pytest.fixture(scope="module")
def apps(clipper):
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    lr = LogisticRegression(max_iter=500).fit(X[:500], y[:500])
    c = clipper
    w = W

    def lin(xs):
        return (np.asarray(xs) @ w).argmax(axis=1)

    def slow(xs):
        import time
        time.sleep(0.3)
        return [-2.0] * len(xs)

    def picky(xs):
        if any(x[0] < 0 for x in xs):
            raise ValueError("negative inputs are not allowed")
        return [float(x[0]) for x in xs]

    def dawdle(xs):
        import time
        time.sleep(0.15)
        return [1.0] * len(xs)

    c.register_application("digits", "doubles", -1, 1_000_000, input_length=64)
    deploy_sklearn_model(c, "lr", 1, "doubles", lr)
    c.link_model_to_app("digits", "lr")
    for app, batching in (("lin1", BatchingConfig("static", size=1)),
                          ("lin32", BatchingConfig("static", size=32, max_size=32,
                                                   max_delay_s=0.005))):
        c.register_application(app, "doubles", -1, 5_000_000)
        deploy_python_closure(c, app, 1, "doubles", lin, batching=batching)
        c.link_model_to_app(app, app)
    c.register_application("slow", "doubles", "slow-default", 50_000)
    deploy_python_closure(c, "slow", 1, "doubles", slow)
    c.link_model_to_app("slow", "slow")
    c.register_application("picky", "doubles", -1, 1_000_000)
    deploy_python_closure(c, "picky", 1, "doubles", picky)
    c.link_model_to_app("picky", "picky")
    c.register_application("tiny", "doubles", -1, 10_000_000)
    deploy_python_closure(c, "dawdle", 1, "doubles", dawdle, max_queue=2,
                          batching=BatchingConfig("static", size=1))
    c.link_model_to_app("tiny", "dawdle")
    return c, lr, X


def url(c, app):
    return f"http://{c.get_query_addr()}/{app}/predict"


def container_calls(c, model):
    rows = c.get_all_model_replicas(verbose=True)
    return sum(r["health"]["calls"] for r in rows if r["model"] == model)


def test_outputs_equal_the_in_process_model(apps):
    c, lr, X = apps
    xs = X[500:540]
    got = post(url(c, "digits"), {"input_batch": xs.tolist()})[1]["batch_predictions"]
    assert [r["output"] for r in got] == lr.predict(xs).tolist()
    assert not any(r["default"] for r in got)
    one = post(url(c, "digits"), {"input": xs[0].tolist()})[1]
    assert one["output"] == int(lr.predict(xs[:1])[0]) and one["default"] is False


def test_a_classifier_with_string_labels_answers_its_labels(apps):
    """sklearn's predict returns a numpy array of str (dtype <U4) for a classifier fit on
    string labels: each query must get its label, not the default (every batch failing
    the numbers-only check)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    c, _, X = apps
    y = np.where(load_digits().target % 2 == 0, "even", "odd")
    clf = LogisticRegression(max_iter=500).fit(X[:500], y[:500])
    c.register_application("parity", "doubles", "unknown", 2_000_000, input_length=64)
    deploy_sklearn_model(c, "parity", 1, "doubles", clf)
    c.link_model_to_app("parity", "parity")
    xs = X[500:540]
    got = post(url(c, "parity"), {"input_batch": xs.tolist()})[1]["batch_predictions"]
    assert [r["output"] for r in got] == clf.predict(xs).tolist()
    assert not any(r["default"] for r in got) and {"even", "odd"} <= {r["output"] for r in got}
    one = post(url(c, "parity"), {"input": X[900].tolist()})[1]
    assert one["output"] == clf.predict(X[900:901])[0] and one["default"] is False


def test_batching_changes_no_answer(apps):
    """The same model unbatched (static 1) and batched (up to 32, delayed 5 ms) gives
    every one of 150 concurrent queries the same answer as the in-process model; so does
    every adaptive controller listed in batching.CONTROLLERS (exercise 1's new one too),
    set on lin32 in turn."""
    from systems.miniclipper.batching import CONTROLLERS

    c, _, _ = apps
    rng = np.random.default_rng(5)

    def answers(app, xs):
        with cf.ThreadPoolExecutor(32) as pool:
            got = list(pool.map(lambda x: post(url(c, app), {"input": x.tolist()})[1], xs))
        assert not any(r["default"] for r in got), app
        return [r["output"] for r in got]

    xs = rng.standard_normal((150, 8))
    assert answers("lin1", xs) == answers("lin32", xs) == linear(xs).tolist()
    log = {app: post(f"http://{c.cm.get_admin_addr()}/admin/get_batch_log",
                     {"model_name": app})[1] for app in ("lin1", "lin32")}
    assert max(b["batch_size"] for b in log["lin1"]) == 1
    assert max(b["batch_size"] for b in log["lin32"]) > 1
    try:
        for policy in CONTROLLERS:
            if policy != "static":
                c.set_batching("lin32", BatchingConfig(policy, max_delay_s=0.005))
                xs = rng.standard_normal((150, 8))  # new inputs: not answered by the cache
                assert answers("lin32", xs) == linear(xs).tolist(), policy
    finally:
        c.set_batching("lin32", BatchingConfig("static", size=32, max_size=32,
                                               max_delay_s=0.005))


def test_cache_hits_return_the_same_answer_without_reaching_the_container(apps):
    c, _, _ = apps
    x = [0.5] * 8
    first = post(url(c, "lin1"), {"input": x})[1]
    calls = container_calls(c, "lin1:1")
    again = [post(url(c, "lin1"), {"input": x})[1] for _ in range(5)]
    assert all(r["output"] == first["output"] for r in again)
    assert container_calls(c, "lin1:1") == calls  # five hits, no container call
    post(url(c, "lin1"), {"input": [0.25] * 8})
    assert container_calls(c, "lin1:1") == calls + 1  # a new input does reach it


def test_slo_expiry_yields_the_default_output(apps):
    c, _, _ = apps
    status, r = post(url(c, "slow"), {"input": [1.0]})
    assert status == 200 and r["default"] is True and r["output"] == "slow-default"
    assert "latency SLO" in r["default_explanation"]


def test_a_model_exception_gives_the_default_with_the_error_then_serving_goes_on(apps):
    c, _, _ = apps
    status, r = post(url(c, "picky"), {"input": [-1.0]})
    assert status == 200 and r["default"] is True
    assert "ValueError: negative inputs are not allowed" in r["default_explanation"]
    assert post(url(c, "picky"), {"input": [3.0]})[1] == {"query_id": r["query_id"] + 1,
                                                          "output": 3.0, "default": False}


@pytest.mark.parametrize("body,status,cause", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"inputs": [1]}', 400, 'exactly one of "input"'),
    (b'{"input": "abc"}', 400, "non-empty JSON array"),
    (b'{"input": [1, 2]}', 400, "expects 64"),
    (b'{"input_batch": []}', 400, "non-empty JSON array"),
    (b"[" * 50000, 400, "nests deeper than the parser"),  # a RecursionError in json
    (b'{"input": [' + b"1" * 5000 + b"]}", 400, "too many digits"),  # int()'s limit
])
def test_malformed_requests_get_400_and_the_next_good_one_succeeds(apps, body, status, cause):
    c, lr, X = apps
    code, r = post(url(c, "digits"), raw=body)
    assert code == status and set(r) == {"error", "cause"} and cause in r["cause"]
    code, r = post(url(c, "digits"), {"input": X[600].tolist()})
    assert code == 200 and r["output"] == int(lr.predict(X[600:601])[0])


@pytest.mark.parametrize("body,cause", [
    (b"[" * 50000, "nests deeper than the parser"),
    (b'{"a": ' * 50000, "nests deeper than the parser"),
    (b"[" + b"7" * 5000 + b"]", "too many digits"),
])
def test_json_past_the_parsers_limits_is_a_400_on_update_and_management_too(apps, body,
                                                                             cause):
    """/update and the management API parse with the same loads_strict as /predict: the
    parser's own limits must be a JSON 400 there too, never aiohttp's plain-text 500."""
    c, _, X = apps
    feedback = f"http://{c.get_query_addr()}/digits/update"
    admin = f"http://{c.cm.get_admin_addr()}/admin"
    for route in (feedback, f"{admin}/add_app", f"{admin}/get_application"):
        code, r = post(route, raw=body)
        assert code == 400 and set(r) == {"error", "cause"} and cause in r["cause"], route
    code, r = post(feedback, {"input": X[3].tolist(), "label": 3})
    assert code == 200 and r["models_evaluated"] == ["lr"]
    code, r = post(f"{admin}/get_application", {"name": "digits"})
    assert code == 200 and r["name"] == "digits"


@pytest.mark.parametrize("body,cause", [
    (b'{"input": [NaN, 1]}', "NaN is not a JSON number"),
    (b'{"input": [Infinity]}', "Infinity is not a JSON number"),
    (b'{"input": [1' + b"0" * 400 + b']}', "does not fit in float64"),
])
def test_non_finite_or_overflowing_numbers_get_400_not_a_500(apps, body, cause):
    """Python's JSON parser takes NaN and Infinity, and a 400-digit integer overflows a
    float64: each must be a 400 with a reason, never a 500 or a NaN answer."""
    c, _, _ = apps
    code, r = post(url(c, "lin1"), raw=body)
    assert code == 400 and set(r) == {"error", "cause"} and cause in r["cause"], r
    code, r = post(url(c, "lin1"), {"input": [1.0] * 8})
    assert code == 200 and r["output"] == int(linear([[1.0] * 8])[0])


def test_a_request_larger_than_the_queue_bound_is_a_400_not_a_429(apps):
    """Retrying later cannot help a request of more queries than the queue ever holds."""
    c, _, _ = apps
    code, r = post(url(c, "tiny"), {"input_batch": [[-1.0], [-2.0], [-3.0]]})
    assert code == 400 and "can never fit" in r["cause"] and "bound 2" in r["cause"]


def test_unknown_app_and_path_get_404(apps):
    c, _, _ = apps
    code, r = post(url(c, "nope"), {"input": [1.0]})
    assert code == 404 and "no application named 'nope'" in r["cause"]
    code, r = post(f"http://{c.get_query_addr()}/a/b/c", {"input": [1.0]})
    assert code == 404 and set(r) == {"error", "cause"}


def test_overload_is_rejected_not_queued_forever(apps):
    """A model that takes 150 ms per query, a queue bound of 2: of 12 simultaneous
    queries, the ones over the bound get 429 at once; the rest are answered."""
    c, _, _ = apps
    with cf.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda i: post(url(c, "tiny"), {"input": [float(i)]}), range(12)))
    codes = [code for code, _ in got]
    assert codes.count(429) >= 6 and codes.count(200) >= 2 and set(codes) <= {200, 429}
    rejected = next(r for code, r in got if code == 429)
    assert rejected["error"] == "Overloaded" and "bound of 2" in rejected["cause"]
    assert all(r["output"] == 1.0 for code, r in got if code == 200)

    # the gRPC query API sheds the same way, with RESOURCE_EXHAUSTED (new inputs: the
    # cache must not answer them), and answers the next query once the queue drains
    with rpc.channel(c.cm.get_grpc_addr()) as ch:
        call = rpc.method(ch, QUERY_SERVICE, "Predict")

        def one(v):
            try:
                meta, _ = unpack(call(pack({"app": "tiny", "input": [v]}), timeout=30))
                return "ok", meta["predictions"][0]["output"]
            except grpc.RpcError as e:
                return e.code(), json.loads(e.details())
        with cf.ThreadPoolExecutor(12) as pool:
            got = list(pool.map(one, [100.0 + i for i in range(12)]))
        kinds = [k for k, _ in got]
        assert kinds.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 6 and kinds.count("ok") >= 2
        assert set(kinds) <= {"ok", grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all(v == 1.0 for k, v in got if k == "ok")
        assert all(v["error"] == "Overloaded" for k, v in got if k != "ok")
        assert one(200.0) == ("ok", 1.0)


def test_grpc_query_api(apps):
    c, lr, X = apps
    with rpc.channel(c.cm.get_grpc_addr()) as ch:
        call = rpc.method(ch, QUERY_SERVICE, "Predict")
        meta, _ = unpack(call(pack({"app": "digits"}, [X[700:705]]), timeout=10))
        assert [p["output"] for p in meta["predictions"]] == lr.predict(X[700:705]).tolist()
        meta, _ = unpack(call(pack({"app": "digits", "input": X[9].tolist()}), timeout=10))
        assert meta["predictions"][0]["output"] == int(lr.predict(X[9:10])[0])
        meta, _ = unpack(call(pack({"app": "digits", "input_batch": X[20:23].tolist()}),
                              timeout=10))  # a batch in the JSON header, as over REST
        assert meta["batch"] and [p["output"] for p in meta["predictions"]] == \
            lr.predict(X[20:23]).tolist()
        for req, code in ((pack({"app": "nope"}, [X[0]]), grpc.StatusCode.NOT_FOUND),
                          (b"garbage", grpc.StatusCode.INVALID_ARGUMENT),
                          (pack({"app": "digits"}, [X[0, :3]]),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (pack({"app": "digits"}, [np.full(64, np.nan)]),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (pack({"app": "digits", "input": [1e400] * 64}),
                           grpc.StatusCode.INVALID_ARGUMENT)):
            with pytest.raises(grpc.RpcError) as e:
                call(req, timeout=10)
            assert e.value.code() == code and "cause" in json.loads(e.value.details())
        # a header without an app string used to be an unknown app named 'None'; a second
        # array, or an array beside "input", was silently ignored
        for req, cause in ((pack({}, [X[0]]), 'needs an "app" string'),
                           (pack({"app": ["digits"]}, [X[0]]), 'needs an "app" string'),
                           (pack({"app": "digits"}, [X[0], X[1]]), "exactly one of"),
                           (pack({"app": "digits", "input": X[1].tolist()}, [X[0]]),
                            "exactly one of")):
            with pytest.raises(grpc.RpcError) as e:
                call(req, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert cause in json.loads(e.value.details())["cause"]


def test_grpc_array_queries_of_a_shape_or_dtype_the_app_cannot_take_are_refused(apps):
    """An array query is a row (1-D) or rows (2-D) of numbers for a numeric app; each
    other shape or dtype is INVALID_ARGUMENT saying what was wrong, the server keeps
    serving, and unsigned and half-precision arrays are converted, not refused."""
    c, _, _ = apps
    c.register_application("grpc-words", "strings", "x", 1_000_000)
    c.register_application("grpc-isum", "integers", -1, 10_000_000)
    deploy_python_closure(c, "isum", 1, "integers", lambda xs: [int(sum(x)) for x in xs])
    c.link_model_to_app("grpc-isum", "isum")
    shape = "an array input needs a numeric application and a 1-D or 2-D numeric array"
    with rpc.channel(c.cm.get_grpc_addr()) as ch:
        call = rpc.method(ch, QUERY_SERVICE, "Predict")

        def outputs(app, x):
            meta, _ = unpack(call(pack({"app": app}, [x]), timeout=10))
            return [p["output"] for p in meta["predictions"]]

        for app, x, cause in (
                ("picky", np.ones((2, 2, 2)),
                 f"{shape}; got float64 of shape (2, 2, 2) for input_type 'doubles'"),
                ("picky", np.array([True, False]),
                 f"{shape}; got bool of shape (2,) for input_type 'doubles'"),
                ("picky", np.array(5.0),
                 f"{shape}; got float64 of shape () for input_type 'doubles'"),
                ("grpc-words", np.ones(3),
                 f"{shape}; got float64 of shape (3,) for input_type 'strings'"),
                ("picky", np.zeros((0, 3)), "empty input of shape (0, 3)"),
                ("picky", np.zeros(0), "empty input of shape (1, 0)"),
                ("grpc-isum", np.array([1.5, 2.0]),
                 "input_type 'integers' needs whole numbers, got a float64 array"),
                ("grpc-isum", np.array([2**40, 1], np.uint64),
                 "input_type 'integers': a value does not fit in int32")):
            with pytest.raises(grpc.RpcError) as e:
                call(pack({"app": app}, [x]), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (app, x)
            assert json.loads(e.value.details()) == {"error": "Invalid query",
                                                     "cause": cause}, (app, x)
        assert outputs("grpc-isum", np.array([3, 4], np.uint64)) == [7]
        assert outputs("grpc-isum", np.array([[3, 4], [5, 6]], np.uint8)) == [7, 11]
        assert outputs("picky", np.float16([1.5, 2.0])) == [1.5]
        assert outputs("picky", np.float16([[0.25, 1.0], [3.0, 1.0]])) == [0.25, 3.0]


def test_every_refused_query_is_counted_by_reason(apps):
    """clipper_rejected_total counts what /predict, /update and the gRPC API refuse, by
    the same reasons; an unknown app's name is not made a label (any client could
    grow the series without bound)."""
    c, _, X = apps
    base = f"http://{c.get_query_addr()}"
    want: dict[tuple[str, str], int] = {}
    before = scrape(c)
    for route, body, code, why in (
            ("nope/predict", b'{"input": [1.0]}', 404, (UNKNOWN_APP, "unknown_app")),
            ("nope/update", b'{"input": [1.0], "label": 1}', 404, (UNKNOWN_APP, "unknown_app")),
            ("digits/predict", b"{not json", 400, ("digits", "json")),
            ("digits/update", b"{not json", 400, ("digits", "json")),
            ("digits/update", b'{"input": [1, 2], "label": 0}', 400, ("digits", "input")),
            ("digits/update", b"[" * 50000, 400, ("digits", "input"))):
        assert post(f"{base}/{route}", raw=body)[0] == code, route
        want[why] = want.get(why, 0) + 1
    with rpc.channel(c.cm.get_grpc_addr()) as ch:
        call = rpc.method(ch, QUERY_SERVICE, "Predict")
        for req, why in ((b"garbage", (UNKNOWN_APP, "wire")),
                         (pack({"app": "nope"}, [X[0]]), (UNKNOWN_APP, "unknown_app")),
                         (pack({"app": "digits"}, [X[0, :3]]), ("digits", "input"))):
            with pytest.raises(grpc.RpcError):
                call(req, timeout=10)
            want[why] = want.get(why, 0) + 1
    # feedback to a model whose queue is full is shed with 429 like a query (new inputs)
    with cf.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda i: post(f"{base}/tiny/update",
                                             {"input": [500.0 + i], "label": 1.0})[0],
                              range(12)))
    assert set(codes) <= {200, 429} and codes.count(429) >= 1
    want["tiny", "overload"] = codes.count(429)
    after = scrape(c)
    for (app, reason), n in want.items():
        grew = (metric(after, "clipper_rejected_total", app=app, reason=reason)
                - metric(before, "clipper_rejected_total", 0.0, app=app, reason=reason))
        assert grew == n, (app, reason, grew, n)


def test_metrics_hold_the_values_the_queries_imply(apps):
    """Read back with prometheus_client's parser: each series must hold the value that
    the queries sent here imply, not merely appear (a HELP line names a series that was
    never set)."""
    c, _, _ = apps
    rng = np.random.default_rng(11)
    before = scrape(c)
    xs = rng.standard_normal((7, 8))  # new inputs: seven cache misses, then one hit
    for x in [*xs, xs[0]]:
        code, r = post(url(c, "lin1"), {"input": x.tolist()})
        assert code == 200 and r["default"] is False
    got = post(url(c, "lin32"), {"input_batch": rng.standard_normal((4, 8)).tolist()})[1]
    assert len(got["batch_predictions"]) == 4
    assert post(url(c, "slow"), {"input": [rng.standard_normal()]})[1]["default"] is True
    after = scrape(c)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, 0.0, **labels)

    assert grew("clipper_app_queries_total", app="lin1") == 8
    assert grew("clipper_app_latency_seconds_count", app="lin1") == 8
    assert grew("clipper_model_predictions_total", model="lin1:1") == 7  # not the hit
    assert grew("clipper_cache_lookups_total") == 8 + 4 + 1
    assert grew("clipper_cache_hits_total") == 1
    hits, lookups = (metric(after, f"clipper_cache_{k}_total") for k in ("hits", "lookups"))
    assert metric(after, "clipper_cache_hit_ratio") == pytest.approx(hits / lookups)
    assert metric(after, "clipper_cache_hit_ratio") > 0
    # every input lin32 processed was in one of its batches: sizes sum to the inputs
    assert grew("clipper_model_batch_size_sum", model="lin32:1") == \
        grew("clipper_model_predictions_total", model="lin32:1") == 4
    assert metric(after, "clipper_batch_controller", model="lin32:1", replica="0",
                  field="batch_size") >= 1
    assert metric(after, "clipper_app_default_ratio", app="slow") == 1.0

    # the queue gauge while two queries wait on a model that takes 150 ms each and
    # batches one (one runs, one waits), and once both are answered; first let whatever
    # an earlier test queued there drain and its last batch finish (150 ms). The two come
    # in one request, so both are queued at once: as two posts, the second could arrive
    # after the first was answered and the queue never held one when scraped; as three,
    # all could arrive before the dispatcher took the first, and the bounded queue (2)
    # shed the third with a 429 (CI saw exactly that once)
    t_end = time.monotonic() + 15
    while metric(scrape(c), "clipper_queue_length", model="dawdle:1") and \
            time.monotonic() < t_end:
        time.sleep(0.05)
    time.sleep(0.3)
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, url(c, "tiny"), {"input_batch": [[1000.0], [1001.0]]})
        seen, deadline = [0.0], time.monotonic() + 3
        while time.monotonic() < deadline and not (max(seen) > 0 and seen[-1] == 0):
            seen.append(metric(scrape(c), "clipper_queue_length", model="dawdle:1"))
        code, r = answer.result()
        assert code == 200 and [p["output"] for p in r["batch_predictions"]] == [1.0, 1.0], r
    assert 1 <= max(seen) <= 2, seen
    assert metric(scrape(c), "clipper_queue_length", model="dawdle:1") == 0


def test_sampled_queries_are_traced_from_frontend_to_container(apps, tmp_path):
    from common.trace import load, row_problems

    c, _, X = apps
    post(url(c, "lin1"), {"input": [0.1] * 8})
    with cf.ThreadPoolExecutor(8) as pool:  # queries that overlap in the queue and the app
        codes = list(pool.map(lambda v: post(url(c, "lin1"), {"input": [v] * 8})[0],
                              [0.01 * i for i in range(24)]))
    assert codes == [200] * 24
    events = load(c.get_trace(tmp_path / "trace.json"))
    # every span nests on its row and every arrow end lies in a span of its row, or
    # Perfetto mis-draws the spans and drops the arrows
    assert not row_problems(events), row_problems(events)[:5]
    pids = {e["pid"] for e in events if e.get("ph") == "X"}
    container_pid = next(r["pid"] for r in c.get_all_model_replicas() if r["model"] == "lin1:1")
    assert c.cm.info["pid"] in pids and container_pid in pids
    names = {e["name"].split(" ")[0] for e in events if e.get("ph") == "X"}
    assert {"query", "queue", "rpc", "container"} <= names
    starts = {e["id"] for e in events if e["ph"] == "s"}
    assert starts & {e["id"] for e in events if e["ph"] == "f"}


def _first(xs):
    return [float(x[0]) for x in xs]


def _slow_first(xs):
    import time
    time.sleep(0.2)
    return [float(x[0]) for x in xs]


def _url(c, app, op="predict"):
    return f"http://{c.get_query_addr()}/{app}/{op}"


def test_feedback_gets_more_time_than_a_tight_slo(clipper):
    """update() evaluates the feedback models with max(1 s, 10 x SLO): an app whose SLO
    (5 ms) is shorter than its model's compute (200 ms) still learns from feedback."""
    c = clipper
    c.register_application("tight", "doubles", -1, 5_000, selection_policy="exp4")
    deploy_python_closure(c, "slowfirst", 1, "doubles", _slow_first)
    c.link_model_to_app("tight", "slowfirst")
    code, r = post(_url(c, "tight", "update"), {"input": [3.0, 1.0], "label": 3.0})
    assert code == 200 and r["ok"] is True and r["models_evaluated"] == ["slowfirst"]


def test_the_default_ratio_counts_only_default_answers(clipper):
    c = clipper
    c.register_application("fine", "doubles", -1, 10_000_000)
    deploy_python_closure(c, "first", 1, "doubles", _first)
    c.link_model_to_app("fine", "first")
    for v in range(3):
        code, r = post(_url(c, "fine"), {"input": [float(v), 1.0]})
        assert code == 200 and r["default"] is False and r["output"] == float(v)
    assert metric(scrape(c), "clipper_app_default_ratio", app="fine") == 0.0


def test_linking_a_model_twice_links_it_once(clipper):
    c = clipper
    c.register_application("twice", "doubles", -1, 10_000_000, selection_policy="exp3")
    deploy_python_closure(c, "once", 1, "doubles", _first)
    c.link_model_to_app("twice", "once")
    c.link_model_to_app("twice", "once")
    info = c.get_app_info("twice")
    assert info["linked_models"] == ["once"]
    assert list(info["selection_state"]["weights"]) == ["once"]


def test_a_model_path_relative_to_the_callers_directory_deploys(clipper, tmp_path,
                                                                monkeypatch):
    """deploy_model resolves the path where the caller runs: the server refuses a
    relative path (its working directory is not the caller's)."""
    from systems.miniclipper.deployers import save_python_closure

    c = clipper
    src = save_python_closure(_first)
    monkeypatch.chdir(os.path.dirname(src))
    c.deploy_model("rel", 1, "doubles", os.path.basename(src))
    c.register_application("relapp", "doubles", -1, 10_000_000)
    c.link_model_to_app("relapp", "rel")
    assert c.predict("relapp", [7.0])["output"] == 7.0


def test_container_control_refuses_a_speed_up(clipper):
    """slowdown is how many times slower, 1..1000: 0.5 is not a slow-down (a 400)."""
    c = clipper
    deploy_python_closure(c, "ctl", 1, "doubles", _first)
    mgmt = f"http://{c.cm.get_admin_addr()}/admin"
    code, r = post(f"{mgmt}/container_control", {"model_name": "ctl", "slowdown": 0.5})
    assert code == 400 and "slowdown" in r["cause"]


def test_container_control_tells_every_live_replica_and_names_a_dead_one(clipper):
    """A replica that just died failed the whole call with a bare 500 ("Internal
    error"), and the replicas after it were never told. Now each replica's answer, or
    its error, is in the reply."""
    import signal

    c = clipper
    deploy_python_closure(c, "ctl2", 1, "doubles", _first, num_replicas=2)
    mgmt = f"http://{c.cm.get_admin_addr()}/admin"
    reps = sorted((r for r in c.get_all_model_replicas(verbose=True)
                   if r["model"] == "ctl2:1"), key=lambda r: r["replica_id"])
    os.kill(reps[0]["pid"], signal.SIGKILL)  # the first one asked
    code, rows = post(f"{mgmt}/container_control", {"model_name": "ctl2", "slowdown": 2})
    assert code == 200, rows
    told = [r for r in rows if "error" not in r]
    assert told and all(r["slowdown"] == 2.0 for r in told), rows
    assert any(r["replica_id"] == reps[1]["replica_id"] for r in told), rows
    post(f"{mgmt}/container_control", {"model_name": "ctl2", "slowdown": 1})


def test_health_counts_every_input_of_a_batch(clipper):
    c = clipper
    c.register_application("counted", "doubles", -1, 10_000_000)
    deploy_python_closure(c, "counter", 1, "doubles", _first)
    c.link_model_to_app("counted", "counter")

    def inputs():
        return sum(r["health"]["inputs"] for r in c.get_all_model_replicas(verbose=True)
                   if r["model"] == "counter:1")
    before = inputs()
    xs = np.random.default_rng(3).standard_normal((5, 2)).tolist()
    r = c.predict("counted", batch=xs)
    assert [p["output"] for p in r["batch_predictions"]] == [x[0] for x in xs]
    assert inputs() - before == 5


def test_feedback_with_a_stray_field_is_refused(clipper):
    c = clipper
    c.register_application("strict", "doubles", -1, 10_000_000)
    code, r = post(_url(c, "strict", "update"), {"input": [1.0], "label": 1, "weight": 3})
    assert code == 400 and "feedback must be" in r["cause"]
    code, r = post(_url(c, "strict", "update"), {"uid": "u7", "input": [1.0], "label": 1})
    assert code == 400 and '"uid" must be an integer' in r["cause"]
    # Clipper's own body names the user: taken (our selection state is per application)
    code, r = post(_url(c, "strict", "update"), {"uid": 7, "input": [1.0], "label": 1})
    assert code == 200, r


def test_an_app_with_no_linked_model_says_so(clipper):
    c = clipper
    c.register_application("lonely", "doubles", "nobody", 10_000_000)
    r = c.predict("lonely", [1.0])
    assert r["default"] is True and r["output"] == "nobody"
    assert r["default_explanation"] == "No connected models found for query"


def test_management_refuses_booleans_for_numbers_and_a_zero_input_length(clipper):
    c = clipper
    mgmt = f"http://{c.cm.get_admin_addr()}/admin"
    base = {"input_type": "doubles", "default_output": 0, "latency_slo_micros": 1000}
    code, r = post(f"{mgmt}/add_app", {**base, "name": "booly", "latency_slo_micros": True})
    assert code == 400 and "latency_slo_micros" in r["cause"]
    code, r = post(f"{mgmt}/add_app", {**base, "name": "zerolen", "input_length": 0})
    assert code == 400 and "input_length must be in" in r["cause"]
    assert not {"booly", "zerolen"} & set(c.get_all_apps())


def test_a_scrape_changes_no_counter(clipper):
    """GET /metrics brings the scrape-time counters up to date: scraping again with no
    query in between must leave every *_total as it was (each scrape used to be able
    to add the running total again). Tasks expired in a queue make the dropped counter
    non-zero first: a 5 ms SLO in front of a model that takes 200 ms."""
    import concurrent.futures as cf

    c = clipper
    c.register_application("hurry", "doubles", -1, 5_000)
    deploy_python_closure(c, "dawdler", 1, "doubles", _slow_first,
                          batching={"policy": "static", "size": 1, "max_size": 1})
    c.link_model_to_app("hurry", "dawdler")
    with cf.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda v: post(_url(c, "hurry"), {"input": [100.0 + v]}), range(6)))
    t_end = time.monotonic() + 5
    while time.monotonic() < t_end:  # let the queue drain (its last tasks expire)
        if metric(scrape(c), "clipper_queue_length", model="dawdler:1") == 0:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    a = scrape(c)
    b = scrape(c)
    totals = {k: v for k, v in a.items() if k[0].endswith("_total")}
    assert totals and {k: b.get(k) for k in totals} == totals
    assert metric(a, "clipper_cache_lookups_total") > 0
    assert metric(a, "clipper_queue_dropped_total", model="dawdler:1") > 0


def test_grpc_integers_that_do_not_fit_int32_are_refused_not_wrapped(clipper):
    """REST refuses 2**40 for an "integers" app; the gRPC array path must too, not
    wrap it to another number the model then answers for."""
    import json

    import grpc

    from common import rpc
    from common.wire import pack, unpack
    from systems.miniclipper.frontend import QUERY_SERVICE

    c = clipper
    c.register_application("ints", "integers", -1, 10_000_000)
    deploy_python_closure(c, "intfirst", 1, "integers", lambda xs: [int(x[0]) for x in xs])
    c.link_model_to_app("ints", "intfirst")
    with rpc.channel(c.cm.get_grpc_addr()) as ch:
        call = rpc.method(ch, QUERY_SERVICE, "Predict")
        meta, _ = unpack(call(pack({"app": "ints"}, [np.array([7, 1], np.int64)]), timeout=10))
        assert meta["predictions"][0]["output"] == 7
        with pytest.raises(grpc.RpcError) as e:
            call(pack({"app": "ints"}, [np.array([2**40 + 7, 1], np.int64)]), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not fit" in json.loads(e.value.details())["cause"]


def test_a_model_answering_nan_gives_valid_json_over_grpc_as_over_rest(clipper):
    """The gRPC reply's header (JSON, by common.wire's spec) carried bare NaN and
    Infinity, which no parser but Python's reads; REST sent the strings. Both now
    answer the strings."""
    c = clipper
    c.register_application("nan-app", "doubles", -1.0, 5_000_000)
    deploy_python_closure(c, "nanny", 1, "doubles",
                          lambda xs: [float("nan") if x[0] > 0 else float("inf") for x in xs])
    c.link_model_to_app("nan-app", "nanny")
    code, r = post(f"http://{c.cm.get_query_addr()}/nan-app/predict",
                   {"input_batch": [[1.0], [-1.0]]})
    assert code == 200
    rest = [p["output"] for p in r["batch_predictions"]]
    with rpc.channel(c.cm.get_grpc_addr()) as ch:
        call = rpc.method(ch, QUERY_SERVICE, "Predict")
        meta, _ = unpack(call(pack({"app": "nan-app", "input_batch": [[2.0], [-2.0]]}),
                              timeout=30))
    assert rest == [p["output"] for p in meta["predictions"]] == ["NaN", "Infinity"]


def test_a_query_can_pin_a_version_as_in_clipper(clipper):
    """Clipper's query takes an optional "version" (query_frontend.hpp): the answer comes
    from that version of the app's one model. It was ignored: a canary or an old answer
    came silently from the current version, and a version never deployed was answered."""
    c = clipper
    c.register_application("pin", "doubles", -1.0, 2_000_000)
    for v in (1, 2):
        deploy_python_closure(c, "pin", v, "doubles", versioned(v))
    c.link_model_to_app("pin", "pin")
    assert post(url(c, "pin"), {"input": [0.0]})[1]["output"] == 2.0  # the current one
    code, r = post(url(c, "pin"), {"input": [0.0], "version": "1"})
    assert code == 200 and r["output"] == 1.0 and r["default"] is False
    assert post(url(c, "pin"), {"input_batch": [[0.0], [1.0]], "version": 1})[1][
        "batch_predictions"][1]["output"] == 1.0
    code, r = post(url(c, "pin"), {"input": [0.0], "version": "7"})
    assert code == 400 and "model 'pin' has no version '7'; deployed: ['1', '2']" in r["cause"]
    # the gRPC query API takes the same query (it ignored the pin)
    with rpc.channel(c.cm.get_grpc_addr()) as ch:
        call = rpc.method(ch, QUERY_SERVICE, "Predict")
        meta, _ = unpack(call(pack({"app": "pin", "input": [0.0], "version": "1"}),
                              timeout=30))
        assert meta["predictions"][0]["output"] == 1.0
        meta, _ = unpack(call(pack({"app": "pin", "version": 1}, [np.zeros((2, 1))]),
                              timeout=30))
        assert [p["output"] for p in meta["predictions"]] == [1.0, 1.0]
        with pytest.raises(grpc.RpcError) as e:
            call(pack({"app": "pin", "input": [0.0], "version": "7"}), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "model 'pin' has no version '7'" in e.value.details()
    deploy_python_closure(c, "pin-b", 1, "doubles", versioned(9))
    c.link_model_to_app("pin", "pin-b")
    code, r = post(url(c, "pin"), {"input": [0.0], "version": "1"})
    assert code == 400 and "'pin' links 2" in r["cause"]
