"""Selection, coalescing and straggler mitigation end to end
(systems/miniclipper/query_processor.py with selection.py and cache.py)."""

import asyncio
import concurrent.futures as cf
import time

import pytest

from systems.miniclipper import deploy_python_closure
from systems.miniclipper.metrics import Metrics
from systems.miniclipper.query_processor import SLO_EXPLANATION, Application, QueryProcessor
from systems.miniclipper.queues import TaskExpired
from systems.miniclipper.selection import make_policy

from .conftest import post


def _right(xs):
    return [int(x[0]) for x in xs]


def _wrong(xs):
    return [int(x[0]) + 1 for x in xs]


def _late(xs):
    import time
    time.sleep(0.4)
    return [int(x[0]) for x in xs]


STRAGGLER_SLO_US = 1_000_000


def _straggler(xs):
    """Answers 4 s after the 1 s SLO: late however loaded the machine, while the other
    model has the whole second to answer."""
    import time
    time.sleep(5.0)
    return [int(x[0]) for x in xs]


@pytest.fixture(scope="module")
def ensemble(clipper):
    c = clipper
    for name, fn in (("right", _right), ("wrong", _wrong), ("late", _late),
                     ("straggler", _straggler)):
        deploy_python_closure(c, name, 1, "doubles", fn)
    # SLOs far above what the fast models need (a query returns as soon as every model
    # has answered), so these tests check the logic, not the loaded machine's speed
    c.register_application("bandit", "doubles", -1, 10_000_000, selection_policy="exp3")
    c.register_application("vote", "doubles", -1, 10_000_000, selection_policy="exp4")
    c.register_application("stragglers", "doubles", -1, STRAGGLER_SLO_US,
                           selection_policy="exp4")
    c.register_application("coalesce", "doubles", -1, 10_000_000, selection_policy="exp4")
    c.register_application("first", "doubles", -1, 10_000_000, selection_policy="default")
    for app, models in (("bandit", ("right", "wrong")), ("vote", ("right", "wrong")),
                        ("stragglers", ("right", "straggler")), ("coalesce", ("right", "late")),
                        ("first", ("wrong", "right"))):
        for m in models:
            c.link_model_to_app(app, m)
    return c


def _feedback(c, app, n):
    for i in range(n):
        code, r = post(f"http://{c.get_query_addr()}/{app}/update",
                       {"input": [float(i % 7), 0.5], "label": i % 7})
        assert code == 200 and r["ok"]
    return c.get_app_info(app)["selection_state"]


def test_exp3_learns_from_feedback_to_pick_the_right_model(ensemble):
    c = ensemble
    state = _feedback(c, "bandit", 60)
    assert state["weights"]["right"] > 5 * state["weights"]["wrong"]
    outs = c.predict("bandit", batch=[[float(k), 0.25] for k in range(40)])
    hits = sum(r["output"] == k for k, r in enumerate(outs["batch_predictions"]))
    assert hits >= 32  # Exp3 keeps exploring with probability gamma / 2 = 5%


def test_exp4_ensemble_follows_the_model_feedback_favours(ensemble):
    c = ensemble
    _feedback(c, "vote", 20)
    r = c.predict("vote", [5.0, 0.0])
    assert r["output"] == 5 and sorted(r["models_used"]) == ["right", "wrong"]
    assert 0.5 < r["confidence"] < 1.0 and r["models_missing"] == []


def test_exp4_straggler_is_left_out_at_the_slo(ensemble):
    t0 = time.monotonic()
    r = ensemble.predict("stragglers", [3.0, 1.0])
    waited = time.monotonic() - t0
    assert r["default"] is False and r["output"] == 3
    assert r["models_missing"] == ["straggler"] and r["confidence"] == pytest.approx(0.5)
    assert waited < 4.0  # answered at the SLO, not when the straggler finished (5 s)


def test_the_default_policy_answers_with_the_first_linked_model_only(ensemble):
    """DefaultPolicy (Clipper's DefaultOutputSelectionPolicy): "wrong" was linked first,
    so it answers, alone, whatever the feedback says."""
    c = ensemble
    state = _feedback(c, "first", 3)
    assert state["weights"] == {"wrong": 1.0, "right": 1.0} and state["feedback_count"] == 3
    r = c.predict("first", [4.0, 0.0])
    assert r["output"] == 5 and r["default"] is False and "models_used" not in r


def _settled_calls(c, model):
    """The container's call count once it has been idle for longer than one slow call
    (Health answers while a batch runs, so an earlier test's batch may be in flight)."""
    deadline, last, quiet_since = time.monotonic() + 10, None, time.monotonic()
    while time.monotonic() < deadline:
        (h,) = [r["health"] for r in c.get_all_model_replicas(verbose=True)
                if r["model"] == model]
        if (h["calls"], h["busy"]) != last:
            last, quiet_since = (h["calls"], h["busy"]), time.monotonic()
        elif not h["busy"] and time.monotonic() - quiet_since > 0.6:
            return h["calls"]
        time.sleep(0.05)
    raise AssertionError(f"{model} never settled: {last}")


def test_identical_concurrent_queries_make_one_container_call(ensemble):
    c = ensemble
    before = _settled_calls(c, "late:1")
    with cf.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda _: c.predict("coalesce", [6.0, 9.0]), range(12)))
    assert {r["output"] for r in got} == {6}
    assert _settled_calls(c, "late:1") - before == 1  # twelve queries, one call, shared


class _Failing:
    """A stand-in task executor: each model's task fails at once with ``errors[model]``."""

    def __init__(self, errors):
        self.errors = errors
        self.unavailable = {}  # every model has replicas (QueryProcessor.wake reads it)

    def schedule_all(self, calls, deadline, slo, traced=False):
        out = []
        for (name, _), inputs, _ in calls:
            fs = [asyncio.get_running_loop().create_future() for _ in inputs]
            for f in fs:
                f.set_exception(self.errors[name])
            out.append(fs)
        return out


@pytest.mark.parametrize("policy,errors,why", [
    ("default", {"a": TaskExpired("deadline passed while queued for a:1")}, SLO_EXPLANATION),
    ("exp4", {"a": TaskExpired("deadline passed while queued for a:1"),
              "b": TaskExpired("deadline passed while queued for b:1")}, SLO_EXPLANATION),
    ("exp4", {"a": TaskExpired("deadline passed while queued for a:1"),
              "b": RuntimeError("b's container died")}, "b's container died")])
def test_a_task_dropped_from_its_queue_at_its_deadline_is_explained_as_the_slo(
        policy, errors, why):
    """A query whose task expired in the queue (TaskExpired) missed its SLO: the default
    output says so with Clipper's SLO sentence, as when the task is still in flight at
    the deadline. Only real failures (a container that died) are reported as errors,
    and an expiry is not listed among them."""
    qp = QueryProcessor(_Failing(errors), Metrics())
    qp.current_version.update({m: "1" for m in errors})
    app = Application("app", "doubles", -1.0, 1_000_000, policy,
                      state=make_policy(policy).init_state([]))
    qp.apps["app"] = app
    qp.link(app, list(errors))
    (r,) = asyncio.run(qp.predict("app", [[1.0]], time.monotonic()))
    assert r["default"] is True and r["output"] == -1.0
    assert r["default_explanation"] == why


def test_exp3_does_not_draw_a_model_that_runs_no_replica_while_another_serves(ensemble):
    """A linked model scaled to 0 replicas (or whose restarts were given up) has a
    current version, so it was not asleep: Exp3 drew it at its full share, each such
    query answered the default, and feedback never lowered its weight (it outputs
    nothing to score), so half the answers stayed defaults for good. It sleeps now
    while the other model serves, and wakes when a replica runs again."""
    c = ensemble
    deploy_python_closure(c, "idle", 1, "doubles", _right, num_replicas=0)
    c.register_application("sleepy", "doubles", -1, 10_000_000, selection_policy="exp3")
    for m in ("right", "idle"):
        c.link_model_to_app("sleepy", m)
    outs = c.predict("sleepy", batch=[[float(k), 0.75] for k in range(40)])
    assert all(not r["default"] and r["output"] == k
               for k, r in enumerate(outs["batch_predictions"])), outs
    assert c.get_app_info("sleepy")["selection_state"]["asleep"] == ["idle"]
    c.set_num_replicas("idle", 1)
    c.predict("sleepy", [1.0, 0.75])
    assert c.get_app_info("sleepy")["selection_state"]["asleep"] == []
