"""The query processor: selection, then the task executor, then combine within the SLO.

Mirrors ``QueryProcessor::predict`` and ``::update`` in Clipper's
``src/libclipper/src/query_processor.cpp``: the application's selection policy picks the
models; their tasks are scheduled through the cache and queues; a timer set to the SLO
races the tasks (``folly::collectAny`` of all-tasks-done and the timer); whatever
arrived by then is combined by the policy, and if nothing did the application's default
output is returned with an explanation ("Failed to retrieve a prediction response within
the specified latency SLO", Clipper's words). Feedback (``update``) evaluates the
policy's feedback models on the input, usually a cache hit, and updates the policy state.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from dataclasses import dataclass, field
from typing import Any

from common.trace import TraceWriter, now_us

from .datatypes import json_output, parse_input
from .metrics import Metrics
from .queues import TaskExpired
from .selection import SelectionPolicy, SelectionState, make_policy, observe_sleeping
from .task_executor import TaskExecutor

_policy = functools.lru_cache(maxsize=None)(make_policy)  # policies keep no state of their own
SLO_EXPLANATION = "Failed to retrieve a prediction response within the specified latency SLO"
NO_MODELS_EXPLANATION = "No connected models found for query"


async def wait_until(futures: list[asyncio.Future], deadline: float) -> None:
    """Wait until every future is done or the deadline passes (never cancelling them:
    other queries may share them through the cache).

    A request's tasks go through its model queue in order and complete a batch at a
    time, so waiting on the last pending one and re-checking costs one wake-up per batch;
    ``asyncio.wait(futures)`` would attach a callback to each of them."""
    pending = [f for f in futures if not f.done()]
    while pending and (left := deadline - time.monotonic()) > 0:
        await asyncio.wait(pending[-1:], timeout=left)
        pending = [f for f in pending if not f.done()]


class UnknownApp(KeyError):
    """No application by that name (HTTP 404)."""


@dataclass
class Application:
    """A registered application: a REST endpoint with a type, an SLO and a default."""

    name: str
    input_type: str
    default_output: Any
    slo_micros: int
    policy: str = "exp3"
    input_length: int | None = None
    models: list[str] = field(default_factory=list)
    state: SelectionState = field(default_factory=SelectionState)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "input_type": self.input_type,
                "default_output": self.default_output, "latency_slo_micros": self.slo_micros,
                "selection_policy": self.policy, "input_length": self.input_length,
                "linked_models": list(self.models), "selection_state": self.state.to_dict()}


class QueryProcessor:
    """Applications, the current version of each model, and the predict/update paths."""

    def __init__(self, executor: TaskExecutor, metrics: Metrics,
                 tracer: TraceWriter | None = None, trace_sample: float = 0.0, seed: int = 0):
        self.executor, self.metrics = executor, metrics
        self.tracer, self.trace_sample = tracer, trace_sample
        self.apps: dict[str, Application] = {}
        self.current_version: dict[str, str] = {}
        self.counts: dict[str, list[int]] = {}  # app -> [queries, default outputs]
        self._next_id = 0
        self._rng = random.Random(seed)

    def app(self, name: str) -> Application:
        try:
            return self.apps[name]
        except KeyError:
            raise UnknownApp(f"no application named {name!r}; registered: "
                             f"{sorted(self.apps)}") from None

    def parse(self, app: Application, values: list[Any]) -> list[Any]:
        return [parse_input(v, app.input_type, app.input_length) for v in values]

    def link(self, app: Application, model_names: list[str]) -> None:
        for m in model_names:
            if m not in app.models:
                app.models.append(m)
        make_policy(app.policy).sync_models(app.state, app.models)

    def unlink(self, app: Application, model_names: list[str]) -> None:
        """Clipper's ``delete_model_links``; the policy forgets the unlinked models."""
        app.models[:] = [m for m in app.models if m not in model_names]
        make_policy(app.policy).sync_models(app.state, app.models)

    def wake(self, app: Application) -> SelectionState:
        """Mark the linked models with no current version as asleep (selection.py), and
        return what the policy selects from: the awake ones. Links are by name, so a
        model whose versions were all stopped stays linked; it is not chosen until a
        version serves again (Clipper would send it queries that wait out their SLO),
        even by a policy that does not look at ``asleep``.

        A model whose current version runs no replica (scaled to 0, or its restarts
        given up: ``TaskExecutor.unavailable``) sleeps too while another linked model
        serves: drawn, it could only answer the default, and no feedback would ever
        lower its weight, so its share of the traffic stayed defaults for good. When
        no linked model serves, they are drawn as before, and the default says why."""
        weights, cur = app.state.weights, self.current_version
        stopped = {m for m in weights if m not in cur}
        down = {m for m in weights if m in cur and (m, cur[m]) in self.executor.unavailable}
        asleep = frozenset(stopped | down if len(stopped | down) < len(weights) else stopped)
        app.state.asleep = asleep
        if not asleep:
            return app.state
        return SelectionState({m: w for m, w in app.state.weights.items() if m not in asleep},
                              app.state.feedback_count, extra=app.state.extra)

    def _versions(self, names: list[str]) -> dict[str, tuple[str, str]]:
        return {n: (n, self.current_version[n]) for n in names if n in self.current_version}

    async def predict(self, app_name: str, inputs: list[Any], arrival: float,
                      version: str | None = None) -> list[dict[str, Any]]:
        """Answer each (already parsed) input of one request; all share one deadline.
        ``version`` pins the app's one linked model to that version (the frontend
        checked it) instead of its current one."""
        app = self.app(app_name)
        policy = _policy(app.policy)
        slo = app.slo_micros / 1e6
        deadline = arrival + slo
        traced = self.tracer is not None and self._rng.random() < self.trace_sample
        t_us = now_us()
        first = self._next_id
        qids = range(first, first + len(inputs))
        self._next_id += len(inputs)
        awake = self.wake(app)
        if version is not None or (len(app.state.weights) == 1 and awake is app.state):
            names = list(app.state.weights)  # one linked model: the same for every query
            out = await self._predict_uniform(app, policy, names, inputs, qids, deadline,
                                              slo, traced, version)
        else:
            out = await self._predict_each(app, policy, awake, inputs, qids, deadline, slo,
                                           traced)
        self._account(app, out, arrival)
        if traced:  # concurrent queries overlap: each on a row where it nests
            t1 = now_us()
            self.tracer.complete(f"query {app_name} x{len(inputs)}", t_us, t1 - t_us,
                                 cat="query", tid=self.tracer.row_for("queries", t_us, t1),
                                 args={"query_ids": list(qids[:8])})
        return out

    async def _predict_uniform(self, app: Application, policy: SelectionPolicy,
                               names: list[str], inputs: list[Any], qids: range,
                               deadline: float, slo: float, traced: bool,
                               version: str | None = None) -> list[dict[str, Any]]:
        """Every query goes to the same model(s): one schedule call per model for the
        whole request, and the common case (one model answered) costs one dict."""
        futures = dict(zip(names, self.executor.schedule_all(
            [((n, version or self.current_version[n]), inputs, qids[0]) for n in names],
            deadline, slo, traced), strict=True))
        await wait_until([f for fs in futures.values() for f in fs], deadline)
        if len(names) != 1:
            return [self._answer(app, policy, q, {n: futures[n][i] for n in names})
                    for i, q in enumerate(qids)]
        name = names[0]
        out = []
        for q, f in zip(qids, futures[name], strict=True):
            try:
                out.append({"query_id": q, "output": json_output(f.result()),
                            "default": False})
            except (Exception, asyncio.CancelledError):  # not done in time, or failed
                out.append(self._answer(app, policy, q, {name: f}))
        return out

    async def _predict_each(self, app: Application, policy: SelectionPolicy,
                            awake: SelectionState, inputs: list[Any], qids: range,
                            deadline: float, slo: float, traced: bool,
                            ) -> list[dict[str, Any]]:
        """The policy selects per query (Exp3 draws a model for each) among the ``awake``
        models (:meth:`wake`)."""
        choices = [list(self._versions(policy.select(awake, app.rng))) for _ in inputs]
        per_model: dict[str, list[int]] = {}
        for i, names in enumerate(choices):
            for n in names:
                per_model.setdefault(n, []).append(i)
        futures: dict[tuple[int, str], asyncio.Future] = {}
        scheduled = self.executor.schedule_all(
            [((name, self.current_version[name]), [inputs[i] for i in idxs], qids[idxs[0]])
             for name, idxs in per_model.items()], deadline, slo, traced)
        for (name, idxs), fs in zip(per_model.items(), scheduled, strict=True):
            futures.update({(i, name): f for i, f in zip(idxs, fs, strict=True)})
        await wait_until(list(futures.values()), deadline)
        return [self._answer(app, policy, q, {n: futures[(i, n)] for n in names})
                for i, (q, names) in enumerate(zip(qids, choices, strict=True))]

    def _answer(self, app: Application, policy: SelectionPolicy, query_id: int,
                futures: dict[str, asyncio.Future]) -> dict[str, Any]:
        """Combine what arrived in time; the default output (and why) if nothing did.
        Outputs are combined as the client will see them (:func:`json_output`: a closure's
        "1" is the number 1), so "1" and 1 are one answer in Exp4's vote."""
        outputs, errors = {}, []
        for n, f in futures.items():
            if f.done() and f.exception() is None:
                outputs[n] = json_output(f.result())
            elif f.done() and not isinstance(f.exception(), TaskExpired):
                errors.append(str(f.exception()))  # expiry is the SLO's explanation
        combined = policy.combine(app.state, outputs)
        r: dict[str, Any] = {"query_id": query_id}
        if combined is None:
            why = NO_MODELS_EXPLANATION if not futures else "; ".join(
                dict.fromkeys(errors)) if errors else SLO_EXPLANATION
            r.update(output=json_output(app.default_output), default=True,
                     default_explanation=why)
        else:
            r.update(output=combined.output, default=False)
            if len(futures) > 1 or combined.models_missing:
                r.update(confidence=combined.confidence, models_used=combined.models_used,
                         models_missing=combined.models_missing)
        return r

    def _account(self, app: Application, out: list[dict[str, Any]], arrival: float) -> None:
        if self.apps.get(app.name) is not app:  # deleted (or replaced) while it ran: its
            return  # series and counts went with it (Metrics.forget_app), or are another's
        latency = time.monotonic() - arrival
        m = self.metrics
        m.app_latency.observe(app.name, latency, len(out))
        m.app_queries.inc(app.name, len(out))
        defaults = sum(r["default"] for r in out)
        if defaults:
            m.app_defaults.inc(app.name, defaults)
        counts = self.counts.setdefault(app.name, [0, 0])
        counts[0] += len(out)
        counts[1] += defaults

    async def update(self, app_name: str, x: Any, label: Any) -> dict[str, Any]:
        """Feedback: evaluate the policy's feedback models on ``x``, then observe ``label``."""
        app = self.app(app_name)
        policy = _policy(app.policy)
        # feedback may wait longer than a query (deadline), but its task carries the
        # app's SLO: a batch is sized for it, and a container that hangs on it is found
        # after 20x the SLO as for a query (a longer slo here made 20 s of that 0.4 s)
        slo = app.slo_micros / 1e6
        deadline = time.monotonic() + max(1.0, 10 * slo)
        awake = self.wake(app)
        drawn = frozenset(awake.weights)  # the draw's: another query may change it meanwhile
        models = self._versions(policy.feedback_models(awake, app.rng))
        # all or none, as a query's: a 429 must leave nothing queued for the others
        scheduled = self.executor.schedule_all([(mv, [x], 0) for mv in models.values()],
                                               deadline, slo)
        futures = {n: fs[0] for n, fs in zip(models, scheduled, strict=True)}
        await wait_until(list(futures.values()), deadline)
        # scored as the client saw them: its label is what the API answered (json_output)
        outputs = {n: json_output(f.result()) for n, f in futures.items()
                   if f.done() and f.exception() is None}
        if outputs:
            observe_sleeping(policy, app.state, drawn, label, outputs)
        return {"ok": bool(outputs), "models_evaluated": sorted(outputs),
                "selection_state": app.state.to_dict()}
