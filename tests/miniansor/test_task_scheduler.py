"""The gradient scheduler gives trials where they pay; round-robin spreads them evenly."""

import collections

import numpy as np
import pytest

from systems.miniansor.measure import MeasureInput, MeasureResult
from systems.miniansor.sketch import Sketch
from systems.miniansor.task_scheduler import TaskScheduler, similarity_tag
from systems.miniansor.workloads import gemm


class CurvePolicy:
    """A stand-in search policy whose best latency after r rounds follows a known curve
    (the oracle of the marginal gain): ``floor + (start - floor) * decay ** r``."""

    def __init__(self, task, start, floor, decay):
        self.task, self.start, self.floor, self.decay = task, start, floor, decay
        self.rounds, self.history = 0, []

    @property
    def best(self):
        return (None, self.history[-1][1]) if self.history else None

    def latency(self, r):
        return self.floor + (self.start - self.floor) * self.decay ** r

    def continue_search_one_round(self, n, measurer):
        self.rounds += 1
        t = self.latency(self.rounds)
        sk = Sketch("stub", "matmul")
        inputs = [MeasureInput(self.task, sk, {"i": len(self.history) + j}) for j in range(n)]
        results = [MeasureResult([t])] * n
        self.history += [((sk, i.ann), t) for i in inputs]
        return inputs, results

    def exhausted(self):
        return False


class NoModel:
    def update(self, inputs, results):
        pass


class NeverDead:
    def task_dead(self, task):
        return False


def _run(strategy, policies, weights, trials=160):
    tasks = [p.task for p in policies]
    s = TaskScheduler(tasks, weights, policies, NeverDead(), NoModel(), strategy=strategy,
                      eps=0.0, seed=0)
    log = s.tune(trials, per_round=8, progress=False)
    return s, collections.Counter(log.chosen)


def test_gradient_gives_more_trials_to_the_task_with_the_larger_marginal_gain():
    # same relative curve, 10x the latency: each round of A lowers the objective 10x more;
    # in both orders, so that "always tune the first task" cannot pass
    def curves():
        return (CurvePolicy(gemm(1024, 1024, 1024), 2e-3, 2e-4, 0.85),
                CurvePolicy(gemm(256, 256, 256), 2e-4, 2e-5, 0.85))

    big, small = curves()
    _, counts = _run("gradient", [big, small], [1, 1])
    assert counts[0] > 2 * counts[1]
    big, small = curves()
    _, counts = _run("gradient", [small, big], [1, 1])
    assert counts[1] > 2 * counts[0]
    _, rr = _run("round-robin", list(curves()), [1, 1])
    assert abs(rr[0] - rr[1]) <= 1


def test_the_forward_estimate_is_optimistic_about_a_plateaued_task():
    """Ansor's forward term assumes latency keeps falling like 1/t; with alpha = 0.2 on
    the measured (backward) term, a slow task that has stopped improving keeps getting
    rounds: the estimate trades accuracy for never starving a task. (Exercise 4 turns
    this assertion around; the plateaued task is first, so that a scheduler that always
    tunes the first task cannot pass the reversed bound.)"""
    plateau = CurvePolicy(gemm(2048, 2048, 2048), 1e-3, 9.5e-4, 0.5)
    improving = CurvePolicy(gemm(1024, 1024, 1024), 1e-3, 2e-4, 0.8)
    _, counts = _run("gradient", [plateau, improving], [1, 1])
    assert counts[0] > 0.3 * sum(counts.values())


def test_weights_steer_the_gradient():
    a = CurvePolicy(gemm(512, 512, 512), 1e-4, 5e-5, 0.8)
    b = CurvePolicy(gemm(512, 512, 513), 1e-4, 5e-5, 0.8)
    _, counts = _run("gradient", [a, b], [10, 1])
    assert counts[0] > 3 * counts[1]


def test_gradient_reaches_round_robins_final_objective_sooner():
    def policies():
        return [CurvePolicy(gemm(64 * (i + 1), 512, 512), 1e-3 * (i + 1), 1e-4 * (i + 1),
                            0.7) for i in range(4)]
    weights = [8, 1, 1, 1]
    rr, _ = _run("round-robin", policies(), weights, 320)
    gr, _ = _run("gradient", policies(), weights, 320)
    final = rr.log.objective[-1]
    reach = next(n for n, o in zip(gr.log.trials, gr.log.objective, strict=True) if o <= final)
    assert reach < 320


def test_warm_up_tunes_every_task_once_and_trials_are_counted():
    ps = [CurvePolicy(gemm(64, 64, 64 + i), 1e-4, 1e-5, 0.5) for i in range(3)]
    s, counts = _run("gradient", ps, [1, 1, 1], trials=40)
    assert s.log.chosen[:3] == [0, 1, 2] and s.trials == 40
    assert s.log.trials[-1] == 40 and len(s.log.objective) == len(s.log.chosen)


def test_bad_arguments_are_named():
    p = CurvePolicy(gemm(8, 8, 8), 1, 1, 1)
    with pytest.raises(ValueError, match="strategy must be"):
        TaskScheduler([p.task], [1], [p], NeverDead(), NoModel(), strategy="greedy")
    with pytest.raises(ValueError, match="one weight and one policy per task"):
        TaskScheduler([p.task], [1, 2], [p], NeverDead(), NoModel())


def test_similar_tasks_share_a_tag():
    assert similarity_tag(gemm(1024, 1024, 1024)) == similarity_tag(gemm(1024, 1024, 1100))
    assert similarity_tag(gemm(1024, 1024, 1024)) != similarity_tag(gemm(4096, 4096, 4096))


@pytest.mark.parametrize("strategy", ["round-robin", "gradient"])
def test_per_task_early_stopping_retires_a_task_that_stopped_improving(strategy):
    """TVM's per_task_early_stopping, under both strategies: no better latency in more than
    16 trials (three rounds after its last improvement, in the warm-up) and it is dead."""
    def policies():
        return [CurvePolicy(gemm(1024, 1024, 1024), 1e-3, 1e-4, 0.8),
                CurvePolicy(gemm(2048, 2048, 2048), 1e-3, 1e-3, 0.5)]  # flat from round 1
    tasks = [p.task for p in policies()]
    s = TaskScheduler(tasks, [1, 1], policies(), NeverDead(), NoModel(), strategy=strategy,
                      eps=0.0, early_stopping_task=16)
    counts = collections.Counter(s.tune(160, per_round=8, progress=False).chosen)
    assert counts[1] <= 4 and 1 in s.dead and counts[0] + counts[1] == 20
    if strategy == "round-robin":
        _, without = _run(strategy, policies(), [1, 1])
        assert counts[1] == 4 and without[1] == 10


@pytest.mark.parametrize("strategy", ["round-robin", "gradient"])
def test_a_task_without_a_valid_measurement_after_warm_up_is_dead(strategy):
    broken = CurvePolicy(gemm(64, 64, 64), float("inf"), float("inf"), 0.5)
    _, counts = _run(strategy, [broken, CurvePolicy(gemm(128, 128, 128), 1e-4, 1e-5, 0.8)],
                     [1, 1], trials=80)
    assert counts[0] == 1 and counts[1] == 9


def test_a_task_much_slower_than_its_similarity_group_leaves_it():
    ps = [CurvePolicy(gemm(1024, 1024, 1024 + i), 1e-4, 1e-5, 0.8) for i in range(3)]
    s = TaskScheduler([p.task for p in ps], [1, 1, 1], ps, NeverDead(), NoModel())
    assert s.groups[0] is s.groups[2] and len(s.groups[0]) == 3
    s.best_costs[:] = [1e-4, 1e-4, 2.5e-4]  # task 2 reaches < 1/beta of the group's FLOP/s
    s.task_cts = [2, 3, 8]
    s._adjust_similarity_group(2)  # only 5 rounds more than the others: it stays
    assert s.groups[2] == [0, 1, 2]
    s.task_cts[2] = 9
    s._adjust_similarity_group(2)
    assert s.groups[2] == [2] and s.groups[0] == s.groups[1] == [0, 1]


def test_the_cost_model_is_refit_on_everything_measured_before_each_round():
    """Ansor section 5.2 / TVM's ``update`` after every measured batch: while round r is
    measured, the model was last fit on exactly the 8 r earlier measurements, and each
    round after the warm-up (8 samples) sees a new fit."""
    from systems.miniansor.cost_model import GBTModel
    from systems.miniansor.measure import Measurer
    from systems.miniansor.search_policy import SketchPolicy
    from systems.miniansor.simulator import SimulatedGPU

    tasks = [gemm(1024, 1024, 1024), gemm(16, 4096, 4096)]
    model = GBTModel(seed=0)
    seen = []  # (measurements the model holds, the fitted estimator) at each measurement
    measurer = Measurer(SimulatedGPU(seed=0), verify="none",
                        callbacks=[lambda inp, res: seen.append((len(model.xs), model.model))])
    policies = [SketchPolicy(t, model, seed=i) for i, t in enumerate(tasks)]
    TaskScheduler(tasks, [1.0, 1.0], policies, measurer, model).tune(40, 8, progress=False)
    rounds = [seen[i:i + 8] for i in range(0, len(seen), 8)]
    assert len(rounds) == 5
    fits = []
    for r, batch in enumerate(rounds):
        assert {n for n, _ in batch} == {8 * r}  # everything before this round, no more
        assert len({id(m) for _, m in batch}) == 1  # one fit serves a whole round
        fits.append(batch[0][1])
    assert fits[0] is None  # the first round is measured before any training
    assert len({id(f) for f in fits[1:]}) == 4 and all(f is not None for f in fits[1:])


def test_eps_greedy_sends_some_rounds_to_a_task_the_gradient_never_picks():
    """With eps = 0 the gradient never returns to a task that has plateaued far below
    another's gain; with eps = 0.3 about that share of the rounds goes to a random live
    task, so the plateaued one gets some (the paper's epsilon-greedy)."""
    def policies():
        return [CurvePolicy(gemm(1024, 1024, 1024), 2e-3, 2e-4, 0.85),
                CurvePolicy(gemm(256, 256, 256), 2e-6, 2e-6, 1.0)]  # flat: no gain

    def run(eps):
        ps = policies()
        s = TaskScheduler([p.task for p in ps], [1, 1], ps, NeverDead(), NoModel(),
                          eps=eps, seed=0)
        return collections.Counter(s.tune(320, per_round=8, progress=False).chosen)

    greedy, mixed = run(0.0), run(0.3)
    assert greedy[1] == 1  # its warm-up round only
    assert 3 <= mixed[1] <= 12  # ~0.3 x 39 rounds x 1/2, the rest go to task 0 anyway


def test_the_forward_gradient_reaches_for_beta_times_the_best_similar_flops():
    """Ansor 6.2, by hand: task 0 (g = 2 ms, 10 rounds, flat history) has a similar task
    running the same FLOPs in 1 ms. forward = min(g - g/t, beta * C / V) - g
    = min(1.8, 2 * 1) - 2 = -0.2 ms; gradient = w * (1 - alpha) * forward."""
    from systems.miniansor.task_scheduler import TaskScheduler

    t = gemm(1024, 1024, 1024)
    ts = TaskScheduler([t, t], [1.0, 1.0], [None, None], None, None, alpha=0.2, beta=2.0)
    assert ts.groups[0] == [0, 1]
    ts.best_costs = np.array([2e-3, 1e-3])
    ts.task_cts = [10, 10]
    ts.costs_history = [[2e-3] * 10, [1e-3] * 10]
    assert ts._gradient(0) == pytest.approx(0.8 * (-0.2e-3))


class SucceedsThenFails:
    """The simulator for the first ``ok`` measurements, then a device whose every kernel
    dies (a GPU that fell off the bus in the middle of a run)."""

    kind = "flaky"
    name = "a GPU that breaks"

    def __init__(self, ok):
        from systems.miniansor.simulator import SimulatedGPU

        self.sim, self.ok, self.times = SimulatedGPU(seed=0), ok, []

    def measure(self, task, sketch, ann, repeats=3):
        from systems.miniansor.measure import DeviceFault

        if len(self.times) >= self.ok:
            raise DeviceFault("RUNTIME_ERROR", "the kernel's worker died")
        self.times.append(min(self.sim.measure(task, sketch, ann, repeats)))
        return [self.times[-1]] * repeats


def test_a_task_that_starts_failing_mid_run_is_stopped_after_32_consecutive_errors(capsys):
    """A task that had succeeded (so it survives its warm-up) and then fails
    max_consecutive_errors (32) measurements in a row is stopped there, four rounds of 8
    later, not run to its budget of 100; its best kernel is kept, and the run says why it
    stopped early."""
    from systems.miniansor.tune import tune_task

    task = gemm(96, 80, 200, "fp16", act="relu")
    dev = SucceedsThenFails(8)
    res = tune_task(task, 100, device=dev, progress=False, verify="none", model="random")
    assert res.trials == 40 and res.errors == {"RUNTIME_ERROR": 32}
    assert res.schedule.chosen == [0] * 5
    assert res.best[task.key].time == pytest.approx(min(dev.times))
    assert (f"{task.key}: stopped after 40 trials: a long run of consecutive errors"
            in capsys.readouterr().err)
