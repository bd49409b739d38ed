"""The task scheduler: which task gets the next round of measurements (Ansor section 6).

A model has many tasks, and they matter unequally: a GEMM that runs 24 times per
forward pass, or takes 80% of the time, deserves more tuning than a small layernorm.
Ansor minimises an objective over the tasks' best latencies g_i, by default the
weighted sum f = sum_i w_i * g_i, where w_i is how often task i occurs. Each step it
tunes the task with the most negative estimated gradient of f with respect to the
rounds t_i spent on it (the paper's time units; section 6.2;
``python/tvm/auto_scheduler/task_scheduler.py``):

    df/dt_i ~ df/dg_i * ( alpha * (g_i(t_i) - g_i(t_i - dt)) / dt
                          + (1 - alpha) * min(-g_i(t_i) / t_i,
                                              beta * C_i / max_k V_k - g_i(t_i)) )

The first term looks back (how much the last ``backward_window`` rounds improved); the
second looks forward, optimistically: either latency keeps falling like 1/t, or the
task reaches the best FLOP/s ``V_k`` of a *similar* task (same kind, same order of
FLOPs ``C_i``), within a factor ``beta``. With probability ``eps`` a random task is
chosen instead (the paper's epsilon-greedy; TVM's code has no such term). It starts
with one round of round-robin, so every task has a latency; a task still without one
after it is dead (TVM v0.16+). Tasks whose search has nothing left to measure, which
keep failing, or (with ``early_stopping_task``) which found nothing better in that many
trials are *dead* and skipped, under either strategy. A task that has had more than 5
rounds more than any other task of its similarity group, and is still ``beta`` times
slower (in FLOP/s) than the group's best, leaves the group: it was not similar after
all. These follow TVM's ``TaskScheduler.tune`` / ``_tune_task`` /
``_adjust_similarity_group``.

``strategy="round-robin"`` is the baseline the paper compares against.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from .search_policy import SketchPolicy
from .workloads import Task

NO_LATENCY = 1e10  # TVM's placeholder for a task with no valid measurement yet


def similarity_tag(task: Task) -> str:
    """Tasks with the same tag are "similar" (TVM ``derive_similarity_tag``: the op kinds
    plus log_1.618 of the FLOPs)."""
    return f"{task.kind}:{task.dtype}:{int(math.log(task.flops + 1, 1.618))}"


@dataclass
class ScheduleLog:
    trials: list[int] = field(default_factory=list)  # after each round
    objective: list[float] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)  # task index tuned in each round


class TaskScheduler:
    """Allocate measurement rounds across tasks with per-task search policies."""

    def __init__(self, tasks: list[Task], weights: list[float], policies: list[SketchPolicy],
                 measurer, cost_model, *, strategy: str = "gradient", alpha: float = 0.2,
                 beta: float = 2.0, backward_window: int = 3, eps: float = 0.05,
                 early_stopping_task: int | None = None, seed: int = 0):
        if strategy not in ("gradient", "round-robin"):
            raise ValueError(f"strategy must be 'gradient' or 'round-robin', got {strategy!r}")
        if not (len(tasks) == len(weights) == len(policies)) or not tasks:
            raise ValueError(f"need one weight and one policy per task; got {len(tasks)} "
                             f"tasks, {len(weights)} weights, {len(policies)} policies")
        self.tasks, self.weights, self.policies = tasks, list(weights), policies
        self.measurer, self.cost_model, self.strategy = measurer, cost_model, strategy
        self.alpha, self.beta, self.window, self.eps = alpha, beta, backward_window, eps
        # TVM's per_task_early_stopping: None = never (its default)
        self.early_stopping_task = early_stopping_task
        self.rng = np.random.default_rng(seed)
        n = len(tasks)
        self.task_cts = [0] * n  # rounds spent per task
        self.task_best_cts = [0] * n  # the round in which each task last improved
        self.costs_history: list[list[float]] = [[] for _ in range(n)]
        self.best_costs = np.full(n, NO_LATENCY)
        self.dead: set[int] = set()
        self.why_dead: dict[int, str] = {}  # said when the budget is left unspent
        self.trials = 0
        self.log = ScheduleLog()
        tags = [similarity_tag(t) for t in tasks]
        by_tag: dict[str, list[int]] = {}
        for i, tag in enumerate(tags):
            by_tag.setdefault(tag, []).append(i)
        self.groups = {i: by_tag[tags[i]] for i in range(n)}  # one shared list per group

    def objective(self, costs: np.ndarray | None = None) -> float:
        c = self.best_costs if costs is None else costs
        return float(sum(w * x for w, x in zip(self.weights, c, strict=True)))

    def restore(self, per_round: int) -> None:
        """After policies were preloaded from a log: rebuild counts and best latencies.

        A task counts its rounds up (TVM's ``_restore_status`` rounds to the nearest),
        except one with no successful measurement: it gets the warm-up again instead of
        being judged dead on the earlier run's failures (which a fix made since, or an
        interruption, may have ended; judging by its count of rounds would make the
        verdict depend on the round size). Only a task stopped for a long run of
        consecutive errors stays stopped. (The round size may differ from the earlier
        run's, which sized its rounds by its own total; a task that has a kernel keeps
        its rounds.)"""
        for i, pol in enumerate(self.policies):
            n = len(pol.history)
            self.trials += n
            if pol.best is not None:
                self.best_costs[i] = pol.best[1]
            self.task_cts[i] = self.task_best_cts[i] = 0 if pol.best is None else \
                math.ceil(n / per_round)
            self.costs_history[i] = [self.best_costs[i]] * self.task_cts[i]
            if self.measurer.task_dead(self.tasks[i]):  # it kept failing before
                self._kill(i, "a long run of consecutive errors (in the log)")

    def _kill(self, i: int, why: str) -> None:
        self.dead.add(i)
        self.why_dead.setdefault(i, why)

    def _gradient(self, i: int) -> float:
        chain = self.weights[i]  # d f / d g_i of a weighted sum
        hist, ct = self.costs_history[i], self.task_cts[i]
        backward = 0.0
        if ct - 1 - self.window >= 0 and ct - 1 < len(hist):
            backward = (hist[ct - 1] - hist[ct - 1 - self.window]) / self.window
        g = self.best_costs[i]
        g_next_1 = g - g / max(ct, 1)
        g_next_2 = self.beta * 1e30
        group = self.groups[i]
        if len(group) > 1:
            best_flops = max(self.tasks[j].flops / self.best_costs[j] for j in group)
            g_next_2 = self.beta * self.tasks[i].flops / best_flops
        forward = min(g_next_1, g_next_2) - g
        return chain * (self.alpha * backward + (1 - self.alpha) * forward)

    def _adjust_similarity_group(self, i: int) -> None:
        group = self.groups[i]
        if len(group) <= 1:
            return
        best_flops = max(self.tasks[j].flops / self.best_costs[j] for j in group)
        rounds_of_others = max(self.task_cts[j] for j in group if j != i)
        if self.tasks[i].flops / self.best_costs[i] < best_flops / self.beta and \
                self.task_cts[i] > 5 + rounds_of_others:
            group.remove(i)  # the list is shared by the group's members
            self.groups[i] = [i]

    def _pick(self, last: int) -> int:
        alive = [i for i in range(len(self.tasks)) if i not in self.dead]
        if self.strategy == "round-robin":
            nxt = (last + 1) % len(self.tasks)
            while nxt in self.dead:
                nxt = (nxt + 1) % len(self.tasks)
            return nxt
        if self.rng.random() < self.eps:
            return int(self.rng.choice(alive))
        grads = {i: self._gradient(i) for i in alive}
        if max(grads.values()) == min(grads.values()):
            return int(self.rng.choice(alive))
        return min(grads, key=grads.get)

    def _tune_task(self, i: int, per_round: int) -> None:
        pol = self.policies[i]
        inputs, results = pol.continue_search_one_round(per_round, self.measurer)
        self.trials += len(inputs)
        self.task_cts[i] += 1
        if inputs:
            self.cost_model.update(inputs, results)
        if pol.best is not None and pol.best[1] < self.best_costs[i]:
            self.best_costs[i] = pol.best[1]
            self.task_best_cts[i] = self.task_cts[i]
        self.costs_history[i].append(self.best_costs[i])
        stalled = (self.early_stopping_task is not None and
                   (self.task_cts[i] - self.task_best_cts[i]) * per_round >
                   self.early_stopping_task)
        if pol.exhausted():
            self._kill(i, "nothing left to measure: every config its replay table holds "
                          "is measured")
        elif not inputs:
            self._kill(i, "nothing left to measure: a round's search and random draws "
                          "found no config not measured yet")
        elif stalled:
            self._kill(i, f"no better kernel in {self.early_stopping_task} trials "
                          f"(early_stopping_task)")
        elif self.measurer.task_dead(self.tasks[i]):
            self._kill(i, "a long run of consecutive errors")
        self.log.trials.append(self.trials)
        self.log.objective.append(self.objective())
        self.log.chosen.append(i)

    def round_size(self, total_trials: int, per_round: int) -> int:
        """Trials per round: at most ``total_trials // len(tasks)``, as TVM, so that the
        warm-up reaches every task."""
        if per_round <= 0:
            raise ValueError(f"per_round must be at least 1, got {per_round}")
        size = min(per_round, total_trials // len(self.tasks))
        if size <= 0:
            raise ValueError(f"total_trials={total_trials} is too small: need at least one "
                             f"per task ({len(self.tasks)} tasks)")
        return size

    def tune(self, total_trials: int, per_round: int = 8, progress: bool = True) -> ScheduleLog:
        """Spend up to ``total_trials`` measurements (counting any restored from a log).
        As TVM, a round is at most ``total_trials // len(tasks)`` trials, so that the
        warm-up reaches every task."""
        per_round = self.round_size(total_trials, per_round)
        bar = tqdm(total=total_trials, initial=min(self.trials, total_trials),
                   desc=f"tune {len(self.tasks)} tasks [{self.strategy}]", unit="trial",
                   disable=not progress, leave=False)
        for i in range(len(self.tasks)):  # warm-up: one round each
            if self.trials >= total_trials:
                break
            if self.task_cts[i] == 0 and i not in self.dead:
                before = self.trials
                self._tune_task(i, min(per_round, total_trials - self.trials))
                bar.update(self.trials - before)
        for i, c in enumerate(self.best_costs):
            if c >= NO_LATENCY:
                self._kill(i, "no successful measurement in its warm-up round")
        last = -1
        while self.trials < total_trials and len(self.dead) < len(self.tasks):
            i = self._pick(last)
            before = self.trials
            self._tune_task(i, min(per_round, total_trials - self.trials))
            bar.update(self.trials - before)
            self._adjust_similarity_group(i)
            last = i
        bar.close()
        if self.trials < total_trials:  # every task stopped: say why, not just a count
            for i in sorted(self.dead):
                n = len(self.policies[i].history)
                print(f"miniansor: {self.tasks[i].key}: stopped after {n} trials: "
                      f"{self.why_dead.get(i, '?')}", file=sys.stderr)
        return self.log
