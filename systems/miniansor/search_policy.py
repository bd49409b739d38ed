"""The search policy of one task: sketches -> population -> evolution -> what to measure.

One round of TVM's ``SketchPolicyNode::ContinueSearchOneRound`` (``sketch_policy.cc``):

1. ``SearchOneRound``: sample an initial population by random annotation of every
   sketch; append the best programs measured so far (up to ``use_measured_ratio`` of the
   population, whatever the cost model: they are parents, never candidates); run the
   evolutionary search for ``2 x n`` candidates; also keep some purely random states;
2. ``PickStatesWithEpsGreedy``: take ``(1 - eps)`` of the batch from the evolved
   candidates and ``eps`` from the random states, skipping anything ever measured;
3. measure the batch and retrain the cost model on everything measured (TVM does this
   inside ``ContinueSearchOneRound``; here the caller does, e.g.
   ``TaskScheduler._tune_task``).

Two ablation switches, ours, in the spirit of the paper's Figure 7 (section 7.1, whose
"No fine-tuning" is random sampling only): ``RandomModel`` for "no cost model" (TVM's
``EvolutionarySearch`` then caps the GA at 2 iterations), and ``evolution=False`` for
"no evolution" (the cost model still ranks the random initial population, milder than
the paper's variant).

Resuming from a log (``preload``) marks its configs measured, so an interrupted run
never measures them again (TVM's ``PreloadMeasuredStates`` callback).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .annotation import H100_LIMITS, HardwareLimits, config_key, sample_annotation
from .cost_model import RandomModel
from .evolution import EvolutionParams, evolutionary_search
from .measure import MeasureInput, MeasureResult
from .sketch import Sketch, generate_sketches
from .workloads import Task

Config = tuple[Sketch, dict[str, int]]


@dataclass(frozen=True)
class SearchParams:
    """TVM's ``SketchPolicy.DEFAULT_PARAMS`` (``search_policy.py``): eps_greedy 0.05,
    sample_init_use_measured_ratio 0.2, evolutionary_search_num_iters 4 and
    mutation_prob 0.85 as there; the population is scaled down (``EvolutionParams``)."""

    evolution: EvolutionParams = field(default_factory=EvolutionParams)
    eps_greedy: float = 0.05
    use_measured_ratio: float = 0.2


def sample_init_population(task: Task, sketches: list[Sketch], n: int,
                           rng: np.random.Generator, limits: HardwareLimits = H100_LIMITS,
                           space: list[Config] | None = None) -> list[Config]:
    """``n`` distinct random annotations, the sketches taking turns. With ``space`` (a
    replayed device's recorded configs) the samples come from that list instead."""
    if space is not None:
        idx = rng.permutation(len(space))[:n]
        return [space[i] for i in idx]
    out, seen, misses = [], set(), 0
    while len(out) < n and misses < 4 * n:
        sk = sketches[len(out) % len(sketches)] if misses == 0 else \
            sketches[int(rng.integers(len(sketches)))]
        ann = sample_annotation(task, sk, rng, limits)
        key = None if ann is None else config_key(sk, ann)
        if key is None or key in seen:
            misses += 1
            continue
        seen.add(key)
        out.append((sk, ann))
    return out


class SketchPolicy:
    """Search one task with sketches, evolution and a (shared) cost model."""

    def __init__(self, task: Task, cost_model, *, params: SearchParams = SearchParams(),
                 seed: int = 0, limits: HardwareLimits = H100_LIMITS, evolution: bool = True,
                 space: list[Config] | None = None):
        self.task, self.cost_model, self.limits = task, cost_model, limits
        self.params = params
        if isinstance(cost_model, RandomModel):  # TVM's EvolutionarySearch: at most 2 GA
            ev = replace(params.evolution, num_iters=min(params.evolution.num_iters, 2))
            self.params = replace(params, evolution=ev)
        if not evolution:
            self.params = replace(self.params,
                                  evolution=replace(self.params.evolution, num_iters=0))
        self.rng = np.random.default_rng(seed)
        self.sketches = generate_sketches(task, limits.sm_count)
        self.space = space
        self._allowed = None if space is None else {config_key(s, a) for s, a in space}
        self.measured: set[str] = set()
        self.history: list[tuple[Config, float]] = []  # (config, seconds or inf)

    # ---- state --------------------------------------------------------------------
    @property
    def best(self) -> tuple[Config, float] | None:
        ok = [h for h in self.history if np.isfinite(h[1])]
        return min(ok, key=lambda h: h[1]) if ok else None

    def preload(self, inputs: list[MeasureInput], results: list[MeasureResult]) -> None:
        """Restore from records of this task: never measure these configs again."""
        for inp, res in zip(inputs, results, strict=True):
            if inp.task.key == self.task.key:
                self._record(inp, res)

    def _record(self, inp: MeasureInput, res: MeasureResult) -> None:
        self.measured.add(inp.key)
        self.history.append(((inp.sketch, inp.ann), res.time))

    def exhausted(self) -> bool:
        return self._allowed is not None and self.measured >= self._allowed

    # ---- one round ----------------------------------------------------------------
    def _allowed_fn(self) -> Callable[[Sketch, dict[str, int]], bool] | None:
        if self._allowed is None:
            return None
        return lambda sk, ann: config_key(sk, ann) in self._allowed

    def search_one_round(self, n: int) -> tuple[list[Config], list[Config]]:
        """(evolved candidates, best predicted first; random states for eps-greedy)."""
        ev = self.params.evolution
        init = sample_init_population(self.task, self.sketches, ev.population, self.rng,
                                      self.limits, self.space)
        # TVM's SearchOneRound appends the best measured states to the sampled population
        # (``num_use_measured``), trained model or not: the heap skips them, but they breed
        n_measured = int(self.params.use_measured_ratio * ev.population)
        ranked = sorted(self.history, key=lambda h: h[1])[:n_measured]
        init += [c for c, t in ranked if np.isfinite(t)]
        best = evolutionary_search(self.task, init, self.cost_model, 2 * n, self.rng,
                                   self.measured, ev, self.limits, self._allowed_fn())
        return best, init

    def pick_eps_greedy(self, best: list[Config], random: list[Config],
                        n: int) -> list[MeasureInput]:
        """``n`` unmeasured configs: mostly the evolved best, ``eps`` random ones."""
        # TVM takes int(eps * n) random states of a 64-program batch; our batches are
        # small, so each slot is random with probability eps (the same expectation).
        n_random = int((self.rng.random(n) < self.params.eps_greedy).sum())
        random = [random[i] for i in self.rng.permutation(len(random))]
        picked: list[MeasureInput] = []
        keys: set[str] = set()
        queues = [iter(best), iter(random)]
        while len(picked) < n:
            want_random = len(picked) >= n - n_random
            order = queues[::-1] if want_random else queues
            cfg = next(order[0], None) or next(order[1], None)
            if cfg is None:
                break
            inp = MeasureInput(self.task, cfg[0], cfg[1])
            if inp.key in self.measured or inp.key in keys:
                continue
            keys.add(inp.key)
            picked.append(inp)
        return picked

    def next_batch(self, n: int) -> list[MeasureInput]:
        best, random = self.search_one_round(n)
        batch = self.pick_eps_greedy(best, random, n)
        if not batch:  # the evolution found nothing new: fall back to fresh samples
            fresh = sample_init_population(self.task, self.sketches, 4 * n, self.rng,
                                           self.limits, self.space)
            batch = self.pick_eps_greedy([], fresh, n)
        if len(batch) < n and self.space is not None:
            # a listed space (a replay table): near its end the draws miss what is left,
            # and the task was stopped as measured in full with configs to spare
            have = self.measured | {i.key for i in batch}
            rest = [c for c in self.space if config_key(*c) not in have]
            batch += self.pick_eps_greedy([], rest, n - len(batch))
        return batch

    def continue_search_one_round(self, n: int, measurer) -> tuple[list[MeasureInput],
                                                                   list[MeasureResult]]:
        """Pick ``n`` configs, measure them, remember them. The caller updates the model."""
        inputs = self.next_batch(n)
        results = measurer.measure(inputs) if inputs else []
        for inp, res in zip(inputs, results, strict=True):
            self._record(inp, res)
        return inputs, results
