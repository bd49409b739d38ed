"""The learned cost model ranks better than chance; the metrics are what they say."""

import itertools

import numpy as np
import pytest

from systems.miniansor.cost_model import (
    GBTModel,
    average_peak_at_k,
    normalized_throughput,
    pairwise_accuracy,
    ranking_report,
    recall_at_k,
)
from systems.miniansor.measure import ErrorNo, MeasureInput, MeasureResult
from systems.miniansor.simulator import SimulatedGPU
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.study import ranking_study
from systems.miniansor.workloads import gemm


def test_model_beats_a_random_ranker_on_the_simulated_device():
    out = ranking_study([gemm(4096, 4096, 4096), gemm(16, 4096, 14336)],
                        SimulatedGPU(seed=0), 400, seed=0)
    ours, rand = out["ours"], out["random"]
    assert ours["pairwise_accuracy"] > 0.75 > rand["pairwise_accuracy"] + 0.1
    assert ours["kendall_tau"] > rand["kendall_tau"] + 0.3
    assert ours["average_peak_at_32"] > rand["average_peak_at_32"]


def test_throughput_is_normalised_per_task_and_failures_are_zero():
    t = np.array([2.0, 1.0, np.inf, 10.0, 5.0])
    k = np.array(["a", "a", "a", "b", "b"])
    assert np.allclose(normalized_throughput(t, k), [0.5, 1.0, 0.0, 0.5, 1.0])


def test_failed_measurements_stay_in_the_training_set():
    task = gemm(256, 256, 256)
    sk = generate_sketches(task)[0]
    model = GBTModel(num_warmup_sample=2)
    inputs, results = [], []
    for stages in (1, 2, 3, 4):
        ok = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4,
              "num_stages": stages}
        inputs += [MeasureInput(task, sk, ok), MeasureInput(task, sk, {**ok, "BLOCK_M": 128})]
        results += [MeasureResult([1e-5 * stages]), MeasureResult([], ErrorNo.WRONG_ANSWER)]
    model.update(inputs, results)
    assert model.trained and len(model.xs) == 8 and np.isinf(model.times[1])
    p = model.predict(task, [(sk, i.ann) for i in inputs])
    assert (p[0::2] > p[1::2] + 0.1).all()  # configs like the failures score low


def test_a_failure_without_features_costs_its_trial_not_the_tuning_run():
    """A failed config of a student's template that lacks BLOCK_M (the measurer records
    it, the log keeps it as a throughput of 0), or one with num_warps 0, made the model's
    update raise: in a session it ended the run, resumed from the log every later run."""
    from systems.miniansor.sketch import Sketch

    task = gemm(256, 256, 256)
    sk = generate_sketches(task)[0]
    student = Sketch("student", "tests.miniansor.faulty:launch_wrong", (("num_warps", (4,)),))
    model = GBTModel(num_warmup_sample=2)
    good = [{"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": s}
            for s in (1, 2, 3, 4)]
    inputs = [MeasureInput(task, student, {"num_warps": 4}),
              MeasureInput(task, sk, {**good[0], "num_warps": 0})]
    inputs += [MeasureInput(task, sk, c) for c in good]
    results = [MeasureResult([], ErrorNo.INSTANTIATION_ERROR)] * 2
    results += [MeasureResult([1e-5 * (i + 1)]) for i in range(4)]
    model.update(inputs, results)
    assert model.trained and model.skipped == 2 and len(model.xs) == 4
    p = model.predict(task, [(student, {"num_warps": 4}), *[(sk, c) for c in good]])
    assert p[0] < p[1:].min() and p[1] > p[4]  # the featureless one predicted worst


class _Scores:
    """A stand-in for the trained regressor: fixed scores, some below zero (a GBT fit
    goes below 0 around failed configs)."""

    def __init__(self, scores):
        self.scores = np.array(scores)

    def predict(self, x):
        assert len(x) == len(self.scores)
        return self.scores


def test_a_config_without_features_is_predicted_below_configs_scored_below_zero():
    """A config the model cannot describe is predicted worse than every config it can,
    whatever they score; a fixed 0.0 for it ranked it above every config the model
    scores below zero (the neighbourhood of failures), and the search then measured it
    first."""
    from systems.miniansor.sketch import Sketch

    task = gemm(256, 256, 256)
    sk = generate_sketches(task)[0]
    student = Sketch("student", "tests.miniansor.faulty:launch_wrong", (("num_warps", (4,)),))
    configs = [(sk, {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4,
                     "num_stages": s}) for s in (1, 2, 3)]
    model = GBTModel()
    model.model = _Scores([-0.4, 0.7, -0.1])
    p = model.predict(task, [configs[0], (student, {"num_warps": 4}), *configs[1:]])
    np.testing.assert_array_equal(p[[0, 2, 3]], [-0.4, 0.7, -0.1])
    assert p[1] < -0.4


def test_the_loss_is_weighted_by_throughput():
    """TVM weights each sample's squared error by its normalised throughput (ours floored
    at min_weight), so where samples cannot be told apart (the same config measured twice,
    noisily) the model predicts their weighted mean sum(w y) / sum(w), leaning to the
    fast one, not the plain mean: it is most accurate where the search must be."""
    x = np.array([[0.0], [0.0], [1.0], [1.0]])
    y = np.array([1.0, 0.2, 0.8, 0.0])  # the last one failed: weight 0.05, not 0
    model = GBTModel(min_weight=0.05)
    model.fit(x, y)
    w = np.maximum(y, 0.05)
    want = [np.average(y[:2], weights=w[:2]), np.average(y[2:], weights=w[2:])]
    assert np.allclose(model.model.predict(np.array([[0.0], [1.0]])), want, atol=1e-3)
    assert not np.allclose(want, [0.6, 0.4], atol=0.1)  # what an unweighted fit gives


def test_pairwise_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    pred, true = rng.random(30), rng.random(30)
    good = total = 0
    for i, j in itertools.combinations(range(30), 2):
        total += 1
        good += (pred[i] - pred[j]) * (true[i] - true[j]) > 0
    assert np.isclose(pairwise_accuracy(pred, true), good / total)
    assert pairwise_accuracy(true, true) == 1.0


def test_recall_and_average_peak_on_a_hand_example():
    true = np.array([1.0, 0.9, 0.5, 0.2, 0.1])
    pred = np.array([0.1, 0.9, 0.8, 0.2, 0.0])  # ranks: 1, 2, 3, 0, 4
    assert recall_at_k(pred, true, 2) == 0.5  # {1, 2} vs {0, 1}
    # measured in order 1, 2, 3: best-so-far 0.9, 0.9, 0.9 of a peak of 1.0
    assert np.isclose(average_peak_at_k(pred, true, 3), 0.9)


def test_recall_counts_ties_with_the_kth_best_as_hits_and_no_peak_is_nan():
    """With the true values tied, any top k is a true top k (an index order would call
    the right prediction wrong); with every config failed there is no peak to reach."""
    true = np.array([0.5, 0.5, 0.5, 0.5, 0.1])
    assert recall_at_k(np.array([0.0, 0.1, 0.2, 0.9, 0.8]), true, 2) == 0.5  # 3 yes, 4 no
    assert recall_at_k(np.array([0.0, 0.1, 0.9, 0.8, 0.0]), true, 2) == 1.0
    assert np.isnan(average_peak_at_k(np.arange(4.0), np.zeros(4), 2))


def test_recall_gives_ties_only_the_places_left_in_the_true_top_k():
    """Every tie with the k-th counted as a hit: the best config ranked last still gave
    recall 1.0, and so did any prediction of a task with fewer than k successes (its
    failures, all 0, tie with the k-th). Oracle: the best intersection over every way
    of breaking the ties in the true ranking, by brute force."""
    assert recall_at_k(np.array([0.0, 3, 2, 1]), np.array([10.0, 1, 1, 1]), 2) == 0.5
    true = np.zeros(100)
    true[:5] = [1.0, 0.9, 0.8, 0.7, 0.6]  # 5 ran, 95 failed: the top 10 is those 5
    assert recall_at_k(np.arange(100.0), true, 10) == 0.0  # all 5 ranked last
    assert recall_at_k(-np.arange(100.0), true, 10) == 1.0
    assert np.isnan(recall_at_k(np.arange(4.0), np.zeros(4), 2))  # none ran
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, k = int(rng.integers(2, 8)), int(rng.integers(1, 6))
        true, pred = rng.integers(0, 3, n).astype(float), rng.random(n)
        top_pred = set(np.argsort(-pred, kind="stable")[:min(k, n)])
        ran = set(np.flatnonzero(true > 0))
        if len(ran) < min(k, n):  # failures are no hits: over the configs that ran
            expect = len(top_pred & ran) / len(ran) if ran else None
        else:
            expect = max(len(top_pred & set(order[:min(k, n)]))
                         for order in itertools.permutations(range(n))
                         if all(true[order[i]] >= true[order[i + 1]]
                                for i in range(n - 1))) / min(k, n)
        got = recall_at_k(pred, true, k)
        assert np.isnan(got) if expect is None else got == expect


def test_ranking_report_agrees_with_each_metric_and_with_scipy():
    """Twelve configs, no ties: Kendall's tau is then (concordant - discordant) / pairs,
    i.e. 2 x pairwise accuracy - 1, counted here by brute force and by scipy."""
    from scipy.stats import kendalltau

    rng = np.random.default_rng(7)
    true = rng.permutation(12) / 11.0
    pred = true + rng.normal(0, 0.3, 12)
    rep = ranking_report(pred, true)
    assert set(rep) == {"pairwise_accuracy", "kendall_tau", "recall_at_10",
                        "average_peak_at_32"}
    pairs = list(itertools.combinations(range(12), 2))
    concordant = sum((pred[i] - pred[j]) * (true[i] - true[j]) > 0 for i, j in pairs)
    assert np.isclose(rep["pairwise_accuracy"], concordant / len(pairs))
    assert 0.5 < rep["pairwise_accuracy"] < 1  # the noise swaps some pairs, not most
    assert np.isclose(rep["kendall_tau"], kendalltau(pred, true).statistic)
    assert np.isclose(rep["kendall_tau"], (2 * concordant - len(pairs)) / len(pairs))
    top = lambda v, k: set(np.argsort(-v)[:k])  # noqa: E731
    assert rep["recall_at_10"] == len(top(pred, 10) & top(true, 10)) / 10
    order = np.argsort(-pred)  # k = 32 > 12: every config, in predicted order
    assert np.isclose(rep["average_peak_at_32"],
                      np.mean([true[order[:n]].max() for n in range(1, 13)]) / true.max())
    assert rep["recall_at_10"] == recall_at_k(pred, true, 10)
    assert rep["average_peak_at_32"] == average_peak_at_k(pred, true, 32)


def test_pairwise_accuracy_counts_tied_predictions_half():
    """A tree model predicts many equal scores: ties must count half (brute force)."""
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, 40).astype(float)  # many ties
    true = rng.standard_normal(40)
    assert pairwise_accuracy(pred, true) == pytest.approx(_brute_pairwise(pred, true))
    assert pairwise_accuracy(np.ones(5), np.arange(5.0)) == 0.5


def _brute_pairwise(pred, true):
    num = den = 0.0
    for i, j in itertools.combinations(range(len(true)), 2):
        if true[i] == true[j]:
            continue
        den += 1
        if pred[i] == pred[j]:
            num += 0.5
        elif (pred[i] > pred[j]) == (true[i] > true[j]):
            num += 1
    return num / den
