"""Default / Exp3 / Exp4 selection (systems/miniclipper/selection.py) on synthetic feedback."""

import asyncio
import math
import random
import time

import pytest

from systems.miniclipper.metrics import Metrics
from systems.miniclipper.query_processor import Application, QueryProcessor
from systems.miniclipper.selection import (
    POLICIES,
    Combined,
    DefaultPolicy,
    Exp3Policy,
    Exp4Policy,
    SelectionPolicy,
    SelectionState,
    make_policy,
)


def _stream(n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        yield rng.randrange(10)


def test_exp3_converges_to_the_better_model():
    """Arm "good" is right 90% of the time, "bad" 30%. After feedback, Exp3 draws "good"
    almost always (up to its exploration floor gamma / K)."""
    pol, rng, noise = Exp3Policy(), random.Random(1), random.Random(2)
    state = pol.init_state(["bad", "good"])
    picks = []
    for label in _stream(600):
        (m,) = pol.feedback_models(state, rng)
        right = noise.random() < (0.9 if m == "good" else 0.3)
        pol.observe(state, label, {m: label if right else (label + 1) % 10})
        picks.append(pol.select(state, rng)[0])
    p = pol.probabilities(state)
    assert p["good"] > 0.9 and abs(sum(p.values()) - 1) < 1e-9
    assert picks[-200:].count("good") / 200 > 0.85
    assert p["bad"] >= pol.gamma / 2 - 1e-12  # exploration never stops


def test_exp4_converges_and_the_ensemble_follows_the_better_model():
    pol, noise = Exp4Policy(), random.Random(3)
    state = pol.init_state(["a", "b", "c"])
    accuracy = {"a": 0.3, "b": 0.9, "c": 0.3}
    for label in _stream(300):
        outs = {m: label if noise.random() < acc else (label + 1 + k) % 10
                for k, (m, acc) in enumerate(accuracy.items())}
        pol.observe(state, label, outs)
    w = state.weights
    assert w["b"] > 10 * w["a"] and w["b"] > 10 * w["c"]
    # a and c outvote b two to one, but b's weight wins the vote
    combined = pol.combine(state, {"a": 1, "b": 7, "c": 1})
    assert combined.output == 7 and combined.confidence > 0.8


def test_exp4_counts_equal_numbers_as_one_answer():
    """An sklearn model's class 1 and a closure's 1.0 are the same answer, as feedback
    scores them; counted by JSON text they split the vote and the odd one out won."""
    pol = Exp4Policy()
    state = pol.init_state(["a", "b", "c"])
    combined = pol.combine(state, {"a": 1, "b": 1.0, "c": 2})
    assert combined.output == 1 and combined.confidence == pytest.approx(2 / 3)
    assert pol.combine(state, {"a": [1, 0], "b": [1.0, 0.0], "c": [0, 1]}).output == [1, 0]
    assert pol.combine(state, {"a": 1.5, "b": 1, "c": 1.5}).output == 1.5


def test_exp4_straggler_combine_reports_missing_models_as_lost_confidence():
    pol = Exp4Policy()
    state = pol.init_state(["a", "b", "c", "d"])
    full = pol.combine(state, {"a": 3, "b": 3, "c": 3, "d": 3})
    partial = pol.combine(state, {"a": 3, "b": 3})
    assert full.confidence == pytest.approx(1.0) and partial.confidence == pytest.approx(0.5)
    assert partial.output == 3 and partial.models_missing == ["c", "d"]
    assert pol.combine(state, {}) is None  # nothing arrived: the default output


def test_new_models_start_at_the_average_weight():
    pol = make_policy("exp4")
    state = pol.init_state(["a", "b"])
    state.weights = {"a": 4.0, "b": 2.0}
    pol.sync_models(state, ["a", "b", "c"])
    assert state.weights["c"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="must be one of"):
        make_policy("ucb")


def test_weights_never_underflow():
    pol = Exp3Policy()
    state = pol.init_state(["a", "b"])
    for _ in range(5000):
        pol.observe(state, 1, {"a": 0})
    p = pol.probabilities(state)
    assert p["a"] > 0 and p["b"] > 0.9


def test_default_policy_uses_the_first_linked_model_and_never_learns():
    pol = make_policy("default")
    assert isinstance(pol, DefaultPolicy)
    state = pol.init_state(["first", "second", "third"])
    rng = random.Random(0)
    assert all(pol.select(state, rng) == ["first"] for _ in range(20))
    assert pol.feedback_models(state, rng) == ["first"]
    c = pol.combine(state, {"first": 7})
    assert (c.output, c.confidence, c.models_used, c.models_missing) == (7, 1.0, ["first"], [])
    assert pol.combine(state, {}) is None
    for _ in range(5):
        pol.observe(state, 3, {"first": 0})  # always wrong: nothing changes but the count
    assert state.weights == {"first": 1.0, "second": 1.0, "third": 1.0}
    assert state.feedback_count == 5


class _LastModel(SelectionPolicy):
    """A policy written against the base class only: the last linked model answers."""

    name = "last"

    def select(self, state, rng):
        return list(state.weights)[-1:]

    def combine(self, state, outputs):
        if not outputs:
            return None
        (m, out), = outputs.items()
        return Combined(out, 1.0, [m], [])

    def observe(self, state, label, outputs):
        state.feedback_count += 1


class _Done:
    """A stand-in task executor: every model answers at once with ``f(model, x)``."""

    def __init__(self, f):
        self.f, self.calls = f, []
        self.unavailable = {}  # every model has replicas (QueryProcessor.wake reads it)

    def schedule_all(self, calls, deadline, slo, traced=False):
        return [self.schedule(model, inputs, deadline, slo) for model, inputs, _ in calls]

    def schedule(self, model, inputs, deadline, slo, traced=False, query_id=0):
        self.calls.append(model)
        out = []
        for x in inputs:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(self.f(model[0], x))
            out.append(fut)
        return out


def test_a_subclassed_policy_plugs_into_the_query_processor(monkeypatch):
    """The SelectionPolicy seam: a new subclass, registered by name, decides which model
    the query processor asks and how its answer is combined; the base class supplies
    the rest (weights, links)."""
    with pytest.raises(TypeError):
        SelectionPolicy()  # select/combine/observe are abstract
    monkeypatch.setitem(POLICIES, "last", _LastModel)
    ex = _Done(lambda m, x: f"{m}:{x[0]}")
    qp = QueryProcessor(ex, Metrics())
    qp.apps["app"] = Application("app", "doubles", "dflt", 1_000_000, "last",
                                 state=make_policy("last").init_state([]))
    qp.current_version.update({"a": "1", "b": "2", "c": "1"})
    qp.link(qp.apps["app"], ["a", "b", "c"])
    assert qp.apps["app"].state.weights == {"a": 1.0, "b": 1.0, "c": 1.0}
    out = asyncio.run(qp.predict("app", [[1.0], [2.0]], time.monotonic()))
    assert [r["output"] for r in out] == ["c:1.0", "c:2.0"] and ex.calls == [("c", "1")]
    r = asyncio.run(qp.update("app", [5.0], "c:5.0"))
    assert r["models_evaluated"] == ["c"] and r["selection_state"]["feedback_count"] == 1


class _Later(_Done):
    """A stand-in task executor whose answers come ``delay`` seconds later."""

    def __init__(self, f, delay):
        super().__init__(f)
        self.delay = delay

    def schedule(self, model, inputs, deadline, slo, traced=False, query_id=0):
        loop = asyncio.get_running_loop()
        out = [loop.create_future() for _ in inputs]
        loop.call_later(self.delay, lambda: [f.set_result(self.f(model[0], x))
                                             for f, x in zip(out, inputs, strict=True)])
        self.calls.append(model)
        return out


def _exp3_app(qp, models):
    app = Application("app", "doubles", -1.0, 5_000_000, "exp3",
                      state=make_policy("exp3").init_state([]))
    qp.apps["app"] = app
    qp.link(app, models)
    return app


def test_a_query_answered_by_a_model_unlinked_while_it_waited_keeps_its_answer():
    """Exp3 combines with the answering model's probability; a model unlinked while its
    query waited (delete_model_links) has none any more. That was a KeyError, and the
    whole request a 500."""
    async def main():
        qp = QueryProcessor(_Later(lambda m, x: m, 0.2), Metrics())
        qp.current_version.update(a="1", b="1")
        app = _exp3_app(qp, ["a", "b"])
        task = asyncio.ensure_future(qp.predict("app", [[float(i)] for i in range(8)],
                                                time.monotonic()))
        await asyncio.sleep(0.05)
        qp.unlink(app, ["a"])
        return qp, await task
    qp, out = asyncio.run(main())
    assert ("a", "1") in qp.executor.calls  # some queries were waiting for a
    assert sorted({r["output"] for r in out}) == ["a", "b"] and not any(r["default"]
                                                                         for r in out)


def _feedback_rounds(qp, n, label_of, seed=1):
    async def main():
        rng = random.Random(seed)
        for _ in range(n):
            await qp.update("app", [0.0], label_of(rng))
    asyncio.run(main())


def test_feedback_while_a_model_sleeps_moves_no_weight_to_or_from_it():
    """b has no version left (stopped): asleep. Feedback draws a alone, and only a
    gets losses; a must not sink against b (observe_sleeping keeps the awake share).
    Without it a's weight fell to 1e-17 against b's in 40 feedbacks (probabilities
    over every linked model), or in 400 (over the awake ones, but no rescale)."""
    qp = QueryProcessor(_Done(lambda m, x: 1.0), Metrics())
    qp.current_version.update(a="1")
    app = _exp3_app(qp, ["a", "b"])
    _feedback_rounds(qp, 400, lambda rng: 1.0 if rng.random() < 0.5 else 0.0)
    assert app.state.weights["a"] / app.state.weights["b"] == pytest.approx(1.0)
    assert app.state.feedback_count == 400


def test_exp3_learns_among_the_awake_models_and_the_asleep_keeps_its_share():
    """a (right 90%) and c (right 30%) serve, b sleeps: Exp3 learns a over c as usual,
    and b's share of the total weight is what it was when it fell asleep."""
    qp = QueryProcessor(_Done(lambda m, x: 1.0 if m == "a" else 0.0), Metrics())
    qp.current_version.update(a="1", c="1")
    app = _exp3_app(qp, ["a", "b", "c"])
    _feedback_rounds(qp, 60, lambda rng: 1.0 if rng.random() < 0.9 else 0.0)
    w = app.state.weights
    assert w["a"] > 3 * w["c"]
    assert w["b"] / sum(w.values()) == pytest.approx(1 / 3)


def test_feedback_is_weighed_by_the_asleep_set_of_its_draw():
    """a is drawn alone (b asleep, so p_a = 1); while a's answer is on its way, b gets
    a version and a query wakes it. The feedback must still count as a draw among the
    awake models of its draw: a/b stays 1, not the update of a p_a = 0.5 draw."""
    async def main():
        qp = QueryProcessor(_Later(lambda m, x: 0.0, 0.1), Metrics())
        qp.current_version.update(a="1")
        app = _exp3_app(qp, ["a", "b"])
        fb = asyncio.ensure_future(qp.update("app", [0.0], 1.0))  # a is wrong
        await asyncio.sleep(0.02)
        qp.current_version["b"] = "1"
        await qp.predict("app", [[0.0]], time.monotonic())  # wakes b
        assert (await fb)["models_evaluated"] == ["a"]
        return app.state.weights
    w = asyncio.run(main())
    assert w["a"] / w["b"] == pytest.approx(1.0)


def test_a_policy_that_ignores_asleep_never_picks_a_stopped_model(monkeypatch):
    """The query processor hands ``select`` the awake models only, so a policy written
    before ``asleep`` existed (the last linked model answers) still answers from a
    model that serves."""
    monkeypatch.setitem(POLICIES, "last", _LastModel)
    qp = QueryProcessor(_Done(lambda m, x: f"{m}:{x[0]}"), Metrics())
    qp.apps["app"] = Application("app", "doubles", "dflt", 1_000_000, "last",
                                 state=make_policy("last").init_state([]))
    qp.current_version.update(a="1", b="1")  # c was stopped: no version
    qp.link(qp.apps["app"], ["a", "b", "c"])
    out = asyncio.run(qp.predict("app", [[1.0]], time.monotonic()))
    assert out[0]["output"] == "b:1.0" and not out[0]["default"]


def test_a_model_linked_while_feedback_waited_counts_as_asleep_for_it():
    """The draw saw a alone (p_a = 1); b, linked meanwhile with no version, was not
    drawable then and must not change how a's loss is weighed, nor gain from it."""
    async def main():
        qp = QueryProcessor(_Later(lambda m, x: 0.0, 0.1), Metrics())
        qp.current_version.update(a="1")
        app = _exp3_app(qp, ["a"])
        fb = asyncio.ensure_future(qp.update("app", [0.0], 1.0))  # a is wrong
        await asyncio.sleep(0.02)
        qp.link(app, ["b"])  # starts at the average weight: a's
        await fb
        return app.state.weights
    w = asyncio.run(main())
    assert w["a"] / w["b"] == pytest.approx(1.0)


def test_only_policies_with_relative_weights_have_an_asleep_share_kept():
    """The default policy learns nothing, and a policy that keeps other numbers in its
    weights (say a mean reward) must get them back as it left them: the rescale is for
    Exp3 and Exp4, whose weights matter only as ratios."""
    qp = QueryProcessor(_Done(lambda m, x: 1.0), Metrics())
    qp.current_version.update(a="1")
    app = Application("app", "doubles", -1.0, 5_000_000, "default",
                      state=make_policy("default").init_state([]))
    qp.apps["app"] = app
    qp.link(app, ["a", "b"])
    _feedback_rounds(qp, 5, lambda rng: 0.0)
    assert app.state.weights == {"a": 1.0, "b": 1.0} and app.state.feedback_count == 5
    assert not DefaultPolicy.relative_weights and not SelectionPolicy.relative_weights
    assert Exp3Policy.relative_weights and Exp4Policy.relative_weights


def test_an_asleep_weight_at_the_floor_keeps_its_share():
    """A weight at _normalise's floor (1e-300) asleep beside a live one: its share must
    not creep up over many feedbacks (1 - share rounds to 0 there)."""
    qp = QueryProcessor(_Done(lambda m, x: 1.0), Metrics())
    qp.current_version.update(a="1")
    app = _exp3_app(qp, ["a", "b"])
    app.state.weights = {"a": 2.0, "b": 1e-300}
    _feedback_rounds(qp, 300, lambda rng: 1.0 if rng.random() < 0.5 else 0.0)
    w = app.state.weights
    assert w["b"] / w["a"] == pytest.approx(0.5e-300, rel=1e-6, abs=0)


class _Counting(_LastModel):
    """A policy that keeps a count per model besides the weights, as UCB1 must."""

    name = "counting"

    def select(self, state, rng):
        pulls = state.extra.setdefault("pulls", {})
        m = min(state.awake(), key=lambda m: pulls.get(m, 0))
        pulls[m] = pulls.get(m, 0) + 1
        return [m]


def test_a_policy_keeps_its_own_numbers_in_state_extra_while_a_model_sleeps(monkeypatch):
    """Exercise 2's UCB1 needs a pull count per model. State kept anywhere but the
    weights was dropped by the copy `select` gets while a linked model sleeps (HTTP
    500), and policies are shared by every app, so `self` is no place for it either."""
    monkeypatch.setitem(POLICIES, "counting", _Counting)
    qp = QueryProcessor(_Done(lambda m, x: m), Metrics())
    qp.current_version.update({"a": "1", "b": "1"})  # "c" has no version: asleep
    for name in ("one", "two"):
        qp.apps[name] = Application(name, "doubles", "dflt", 1_000_000, "counting",
                                    state=make_policy("counting").init_state([]))
        qp.link(qp.apps[name], ["a", "b", "c"])
    out = asyncio.run(qp.predict("one", [[1.0], [2.0], [3.0], [4.0]], time.monotonic()))
    assert sorted(r["output"] for r in out) == ["a", "a", "b", "b"]
    assert qp.apps["one"].describe()["selection_state"]["extra"] == {"pulls": {"a": 2, "b": 2}}
    assert qp.apps["two"].state.extra == {}  # per application


def test_votes_and_feedback_use_the_outputs_the_client_sees():
    """A closure answering "1" is answered to the client as the number 1 (json_output,
    as Clipper's frontend does). Exp4 voted on the raw values, so "1", 1 and "1.0" were
    three answers and two models answering 2 outvoted three answering 1; and feedback
    labelled with the number the client saw scored the right model as wrong, so Exp3
    learnt nothing (the weights moved exactly as for a label no model ever gives)."""
    answers = {"s1": "1", "n1": 1, "s1b": "1.0", "n2a": 2, "n2b": 2.0}
    qp = QueryProcessor(_Done(lambda m, x: answers[m]), Metrics())
    qp.current_version.update({m: "1" for m in answers})
    vote = Application("vote", "doubles", -1.0, 5_000_000, "exp4",
                       state=make_policy("exp4").init_state([]))
    qp.apps["vote"] = vote
    qp.link(vote, list(answers))
    (r,) = asyncio.run(qp.predict("vote", [[1.0]], time.monotonic()))
    assert r["output"] == 1 and r["confidence"] == pytest.approx(0.6)

    qp = QueryProcessor(_Done(lambda m, x: str(float((x[0] > 0) == (m == "right")))),
                        Metrics())
    qp.current_version.update(right="1", wrong="1")
    app = _exp3_app(qp, ["right", "wrong"])

    async def feedback():
        rng = random.Random(3)
        for _ in range(60):
            x = rng.uniform(-1, 1)
            await qp.update("app", [x], 1.0 if x > 0 else 0.0)  # a number, as answered
    asyncio.run(feedback())
    assert app.state.weights["right"] > 10 * app.state.weights["wrong"], app.state.weights


def test_one_feedback_moves_exp4_and_exp3_weights_by_exactly_their_update_rules():
    """Weights {a: 3, b: 1}, eta 0.2, a wrong and b right. Exp4 sees every model's loss,
    so a is scaled by exp(-eta) alone (Clipper's C++ also divided by p_a, which punishes
    an unlikely model harder than a likely one for the same mistake); Exp3 saw one drawn
    arm, so its loss is importance-weighted: exp(-eta / p_a), p_a = 0.9 * 3/4 + 0.1/2."""
    pol = Exp4Policy(eta=0.2)
    state = SelectionState({"a": 3.0, "b": 1.0})
    pol.observe(state, 1, {"a": 0, "b": 1})
    assert state.weights["a"] / state.weights["b"] == pytest.approx(3 * math.exp(-0.2),
                                                                    rel=1e-12)
    assert sum(state.weights.values()) == pytest.approx(2)  # normalised to K
    pol = Exp3Policy(eta=0.2, gamma=0.1)
    state = SelectionState({"a": 3.0, "b": 1.0})
    pol.observe(state, 1, {"a": 0})
    assert state.weights["a"] / state.weights["b"] == pytest.approx(
        3 * math.exp(-0.2 / 0.725), rel=1e-12)
