"""The model selection layer: which models answer a query, and how their answers combine.

Clipper §5 frames selection as a bandit problem, with one small API per policy that
Clipper's C++ keeps too (``src/libclipper/src/selection_policies.cpp``: Exp3/Exp4 written
in 5f1098d0, working from 37ae719e/b356ea36 in Nov 2016, removed in the March 2017 rewrite
c69e93bb): *select* the models for a query, *combine* their outputs, *observe* feedback
and update a per-application state. Three policies:

* :class:`DefaultPolicy` (Clipper's ``DefaultOutputSelectionPolicy``): the first linked
  model, no learning;
* :class:`Exp3Policy` (§5.1; Auer et al., "The nonstochastic multiarmed bandit
  problem", 2002): one model per query, drawn with probability
  ``p_i = (1 - gamma) w_i / sum(w) + gamma / K``; feedback evaluates one drawn model and,
  since only that arm's loss was seen, updates it with the importance-weighted loss
  ``w_i *= exp(-eta * loss / p_i)``;
* :class:`Exp4Policy` (§5.2): every model answers; outputs are combined by a weighted
  vote (Clipper's ``combine_predictions`` takes a weighted average, which is undefined
  for string labels and invents classes for numbered ones), and every model's weight
  is updated from its own loss (full information, so no importance weights; Clipper's
  C++ divides by ``p_i`` here too, which over-punishes unlikely models). Its *straggler
  mitigation* (§5.2.2) lives in the query processor: the ensemble waits until the SLO
  and combines what arrived; the confidence it reports counts missing models as
  disagreeing.

Loss is 0-1 (the output equals the label or it does not), as for the classifiers the
paper evaluates. State is per application (the paper also keys it by user/context).

A linked model with no version serving (every version stopped) is *asleep*, as an arm
of a "sleeping bandit": the query processor lets the policy select among the awake
models only; Exp3's probabilities, and so the importance weights of its feedback, are
those of the draw that was made (:func:`observe_sleeping`); and the asleep models keep
their share of the total weight until a version serves again, so that feedback, which
only the awake ones get, does not drive their weights apart. Exp4 still counts an asleep
model in the vote's total, so an ensemble reports it as missing.
"""

from __future__ import annotations

import abc
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SelectionState:
    """Per-application bandit state: one weight per linked model name, and ``extra`` for
    whatever else a policy keeps per application (UCB1's pull counts, say: JSON values,
    shown by ``get_app_info``). A policy object is shared by every application that uses
    it, so it keeps nothing on itself; the state is the only place that is per app."""

    weights: dict[str, float] = field(default_factory=dict)
    feedback_count: int = 0
    asleep: frozenset[str] = frozenset()  # linked, but no version serves (set per query)
    extra: dict[str, Any] = field(default_factory=dict)

    def awake(self) -> list[str]:
        return [m for m in self.weights if m not in self.asleep]

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "feedback_count": self.feedback_count,
                "asleep": sorted(m for m in self.asleep if m in self.weights),
                "extra": dict(self.extra)}


@dataclass
class Combined:
    """A policy's answer: the output, how sure it is, and which models it used."""

    output: Any
    confidence: float
    models_used: list[str]
    models_missing: list[str]


def zero_one_loss(output: Any, label: Any) -> float:
    return 0.0 if output == label else 1.0


def ballot(output: Any) -> str:
    """The key under which an output is counted in a vote. Numbers that are equal
    count as one answer (an sklearn model's class 1 and a closure's 1.0), as
    :func:`zero_one_loss` scores them in feedback; a JSON text alone would split them."""
    def canon(x: Any) -> Any:
        if isinstance(x, float) and x.is_integer():
            return int(x)
        if isinstance(x, list):
            return [canon(v) for v in x]
        if isinstance(x, dict):
            return {k: canon(v) for k, v in x.items()}
        return x
    return json.dumps(canon(output), sort_keys=True)


class SelectionPolicy(abc.ABC):
    """The select / combine / observe seam (Clipper ``SelectionPolicy``)."""

    name = "base"
    # weights matter only relative to each other (Exp3, Exp4): an asleep model's share
    # is then kept through feedback it cannot get (observe_sleeping). A policy that keeps
    # other numbers in the weights (a mean reward, a count) leaves this False.
    relative_weights = False

    def __init__(self, eta: float = 0.2, gamma: float = 0.1):
        self.eta, self.gamma = eta, gamma

    def init_state(self, models: list[str]) -> SelectionState:
        return SelectionState({m: 1.0 for m in models})

    def sync_models(self, state: SelectionState, models: list[str]) -> None:
        """Follow the app's links: a newly linked model starts at the average weight
        (Clipper ``add_models``); an unlinked one is forgotten."""
        avg = sum(state.weights.values()) / len(state.weights) if state.weights else 1.0
        state.weights = {m: state.weights.get(m, avg) for m in models}

    def probabilities(self, state: SelectionState) -> dict[str, float]:
        """Exp3's draw over the awake models (an asleep one has probability 0)."""
        awake = {m: state.weights[m] for m in state.awake()}
        k, total = len(awake), sum(awake.values())
        return {m: (1 - self.gamma) * w / total + self.gamma / k
                for m, w in awake.items()} if k else {}

    def draw(self, state: SelectionState, rng: random.Random) -> str:
        probs = self.probabilities(state)
        return rng.choices(list(probs), weights=list(probs.values()))[0]

    @abc.abstractmethod
    def select(self, state: SelectionState, rng: random.Random) -> list[str]:
        """The models that should answer this query, from ``state``'s weights: the query
        processor hands it the awake models only (``QueryProcessor.wake``)."""

    @abc.abstractmethod
    def combine(self, state: SelectionState, outputs: dict[str, Any]) -> Combined | None:
        """One answer from the outputs that arrived in time (None: use the default)."""

    def feedback_models(self, state: SelectionState, rng: random.Random) -> list[str]:
        """The models to evaluate on a feedback input."""
        return self.select(state, rng)

    @abc.abstractmethod
    def observe(self, state: SelectionState, label: Any, outputs: dict[str, Any]) -> None:
        """Update ``state`` from the feedback ``label`` and the models' outputs on it."""

    def _normalise(self, state: SelectionState) -> None:
        """Rescale weights to sum to K: the probabilities are unchanged, and repeated
        multiplicative updates can no longer underflow to zero."""
        total = sum(state.weights.values())
        k = len(state.weights)
        if total > 0:
            state.weights = {m: max(w * k / total, 1e-300) for m, w in state.weights.items()}


class DefaultPolicy(SelectionPolicy):
    """The first linked model; no feedback (Clipper ``DefaultOutputSelectionPolicy``)."""

    name = "default"

    def select(self, state: SelectionState, rng: random.Random) -> list[str]:
        return list(state.weights)[:1]

    def combine(self, state: SelectionState, outputs: dict[str, Any]) -> Combined | None:
        if not outputs:
            return None
        m, out = next(iter(outputs.items()))
        return Combined(out, 1.0, [m], [])

    def observe(self, state: SelectionState, label: Any, outputs: dict[str, Any]) -> None:
        state.feedback_count += 1


class Exp3Policy(SelectionPolicy):
    """One model per query, chosen by Exp3 (Clipper §5.1)."""

    name = "exp3"
    relative_weights = True

    def select(self, state: SelectionState, rng: random.Random) -> list[str]:
        if len(state.weights) <= 1:  # one arm: nothing to draw
            return list(state.weights)
        return [self.draw(state, rng)]

    def combine(self, state: SelectionState, outputs: dict[str, Any]) -> Combined | None:
        if not outputs:
            return None
        m, out = next(iter(outputs.items()))  # (m may have been unlinked meanwhile)
        return Combined(out, self.probabilities(state).get(m, 0.0), [m], [])

    def observe(self, state: SelectionState, label: Any, outputs: dict[str, Any]) -> None:
        probs = self.probabilities(state)
        for m, out in outputs.items():
            if m in probs:  # (not a model unlinked, or put to sleep, meanwhile)
                loss = zero_one_loss(out, label)
                state.weights[m] *= math.exp(-self.eta * loss / probs[m])
        state.feedback_count += 1
        self._normalise(state)


class Exp4Policy(SelectionPolicy):
    """Every model answers; a weighted vote combines them (Clipper §5.2)."""

    name = "exp4"
    relative_weights = True

    def select(self, state: SelectionState, rng: random.Random) -> list[str]:
        return list(state.weights)

    def combine(self, state: SelectionState, outputs: dict[str, Any]) -> Combined | None:
        if not outputs:
            return None
        votes: dict[str, float] = {}
        value: dict[str, Any] = {}
        for m, out in outputs.items():
            key = ballot(out)
            votes[key] = votes.get(key, 0.0) + state.weights.get(m, 0.0)
            value[key] = out
        best = max(votes, key=votes.get)
        total = sum(state.weights.values())
        return Combined(value[best], votes[best] / total if total else 0.0, list(outputs),
                        [m for m in state.weights if m not in outputs])

    def observe(self, state: SelectionState, label: Any, outputs: dict[str, Any]) -> None:
        for m, out in outputs.items():
            if m in state.weights:
                state.weights[m] *= math.exp(-self.eta * zero_one_loss(out, label))
        state.feedback_count += 1
        self._normalise(state)


def observe_sleeping(policy: SelectionPolicy, state: SelectionState,
                     awake: frozenset[str], label: Any, outputs: dict[str, Any]) -> None:
    """``policy.observe`` for a feedback drawn when only the ``awake`` models could be
    chosen: every other linked model (stopped, or linked since the draw) counts as
    asleep while it observes, so Exp3 divides by the probability of the draw actually
    made, whatever a later query set. Then, for a policy whose weights only matter
    relative to each other (``relative_weights``: Exp3, Exp4), the asleep models are
    scaled so that their share of the total weight is what it was: only awake models
    get feedback, and Exp3's and Exp4's losses only lower weights, so without this a
    lone awake model fell to 1e-17 against an asleep one in 400 feedbacks, and the
    asleep model's new version then took 98% of the traffic untested."""
    asleep = frozenset(m for m in state.weights if m not in awake)
    current, state.asleep = state.asleep, asleep
    try:
        before = _sums(state, asleep)
        policy.observe(state, label, outputs)
        now = _sums(state, asleep)
        if asleep and policy.relative_weights and before[0] > 0 and now[1] > 0:
            # asleep / awake as before; as a ratio, so a weight at _normalise's floor
            # (1e-300) keeps its share too, which 1 - share would round away
            scale = now[0] / before[0] * before[1] / now[1]
            state.weights = {m: w * scale if m in asleep else w
                             for m, w in state.weights.items()}
    finally:
        state.asleep = current


def _sums(state: SelectionState, asleep: frozenset[str]) -> tuple[float, float]:
    """(total weight of the awake models, of the asleep ones)."""
    total = sum(w for m, w in state.weights.items() if m in asleep)
    return sum(state.weights.values()) - total, total


POLICIES: dict[str, type[SelectionPolicy]] = {
    "default": DefaultPolicy, "exp3": Exp3Policy, "exp4": Exp4Policy}


def make_policy(name: str) -> SelectionPolicy:
    if name not in POLICIES:
        raise ValueError(f"selection policy must be one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name]()
