"""The learned cost model and how we judge it (Ansor section 5.2).

Ansor trains gradient-boosted trees (XGBoost) to predict a program's *normalised
throughput*: within each task, throughput divided by the best throughput measured so
far for that task, so that one model serves every task and its scores are comparable
within a task (``python/tvm/auto_scheduler/cost_model/xgb_model.py``: labels from
``get_per_store_features_from_measure_pairs``, normalised per task). The loss is a
squared error *weighted by the throughput itself* (``pack_sum_square_error`` with
``weight = normalized_throughputs``): the model should be most accurate on fast
programs, the ones the search must rank correctly. Failed programs stay in the data
with throughput 0. Since XGBoost cannot train incrementally, TVM retrains from scratch
on everything measured, every round; so do we.

We use scikit-learn's ``GradientBoostingRegressor`` with ``sample_weight`` (TVM's
XGBoost settings in spirit: learning rate 0.2, deep trees, no minimum leaf weight; on the
few hundred samples of a tuning run it trains in a fraction of a second, faster than the
histogram variant, which pays for binning). One deviation, said plainly: TVM's weight
of exactly ``y`` gives failed programs weight 0, so "keeping them" changes nothing; we
floor the weight at ``min_weight`` (0.05) so that failures do pull predictions for their
neighbourhood down a little. (Also "deep trees": depth 5 here, TVM's ``max_depth`` 10.)

Ranking metrics (the model exists only to rank): pairwise accuracy and Kendall's tau,
recall@k (how many of the true top k are in the predicted top k), and TVM's
average-peak@k (``pack_sum_average_peak_score``: measure the predicted top k in order;
the mean, over those k trials, of best-so-far over the true best).
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor

from .annotation import H100_LIMITS, HardwareLimits
from .feature import feature_matrix
from .measure import MeasureInput, MeasureResult
from .sketch import Sketch
from .workloads import Task

log = logging.getLogger(__name__)

Config = tuple[Sketch, dict[str, int]]


class RandomModel:
    """TVM's ``RandomModel``: uniform random scores (the "no cost model" ablation)."""

    trained = False

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def update(self, inputs: list[MeasureInput], results: list[MeasureResult]) -> None:
        return None

    def predict(self, task: Task, configs: list[Config]) -> np.ndarray:
        return self.rng.uniform(0.0, 1.0, len(configs))


class GBTModel:
    """Gradient-boosted trees on ``feature.py``'s features, retrained on every update.

    Until ``num_warmup_sample`` measurements exist it predicts at random, as TVM's
    ``XGBModel`` does (a model of a handful of points ranks worse than chance)."""

    def __init__(self, seed: int = 0, num_warmup_sample: int = 8, min_weight: float = 0.05,
                 limits: HardwareLimits = H100_LIMITS, n_estimators: int = 80):
        self.seed, self.num_warmup_sample, self.min_weight = seed, num_warmup_sample, min_weight
        self.limits, self.n_estimators = limits, n_estimators
        self.rng = np.random.default_rng(seed)
        self.xs: list[np.ndarray] = []  # one feature row per measurement
        self.times: list[float] = []
        self.task_keys: list[str] = []
        self.model: GradientBoostingRegressor | None = None
        self.skipped = 0  # measurements left out: their features could not be computed
        self._warned: set[str] = set()  # templates said so of

    def _features(self, task: Task, configs: list[Config]) -> tuple[np.ndarray, np.ndarray]:
        """The feature rows of the configs whose features can be computed (a knob
        missing, a zero, and they cannot), and a mask of which those are: one
        vectorised call when all can, as on the search's hot path."""
        try:
            return feature_matrix(task, configs, self.limits), np.ones(len(configs), bool)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            rows, ok = [], []
            for c in configs:
                try:
                    rows.append(feature_matrix(task, [c], self.limits)[0])
                    ok.append(True)
                except (KeyError, TypeError, ValueError, ZeroDivisionError):
                    ok.append(False)
            return (np.stack(rows) if rows else np.zeros((0, 0))), np.array(ok, bool)

    @property
    def trained(self) -> bool:
        return self.model is not None

    def update(self, inputs: list[MeasureInput], results: list[MeasureResult]) -> None:
        """Add measurements and retrain on all of them. A record whose features cannot
        be computed (a failed config of a student's template that lacks a knob, or with
        ``num_warps`` 0: the log keeps such failures on purpose) is left out: it cost
        its trial, and must not end the tuning run, or every run resumed from the log.
        A *successful* one is left out too, and said once per template: the model cannot
        learn from a kernel its features do not describe."""
        for inp, res in zip(inputs, results, strict=True):
            x, ok = self._features(inp.task, [(inp.sketch, inp.ann)])
            if not ok[0]:
                self.skipped += 1
                if res.ok and inp.sketch.template not in self._warned:
                    self._warned.add(inp.sketch.template)
                    log.warning("cost model: %s ran, but its config %s has none of the "
                                "features the model reads: it learns nothing from it",
                                inp.sketch.template, inp.ann)
                continue
            self.xs.append(x[0])
            self.times.append(res.time)
            self.task_keys.append(inp.task.key)
        if len(self.xs) < self.num_warmup_sample:
            return
        y = normalized_throughput(np.array(self.times), np.array(self.task_keys))
        self.fit(np.stack(self.xs), y)

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        """Train on features ``x`` and normalised throughputs ``y`` (weighted by y)."""
        self.model = GradientBoostingRegressor(
            learning_rate=0.2, n_estimators=self.n_estimators, max_depth=5,
            min_samples_leaf=2, random_state=self.seed)
        self.model.fit(x, y, sample_weight=np.maximum(y, self.min_weight))

    def predict(self, task: Task, configs: list[Config]) -> np.ndarray:
        """Predicted normalised throughput (higher is better) of each config."""
        if self.model is None:
            return self.rng.uniform(0.0, 1.0, len(configs))
        if not configs:
            return np.zeros(0)
        x, ok = self._features(task, configs)
        if ok.all():
            return self.model.predict(x)
        out = np.zeros(len(configs))
        if ok.any():
            out[ok] = self.model.predict(x)
            out[~ok] = out[ok].min() - 1.0  # no features: predicted worst (GBT may go < 0)
        return out


def make_model(name: str, seed: int = 0, limits: HardwareLimits = H100_LIMITS,
               ) -> GBTModel | RandomModel:
    """The cost model called ``name``: "gbt" (Ansor's learned model) or "random" (the
    ablation). Anything else is refused: a typo ("GBT", "xgb") used to run the
    ablation silently, its numbers read as the learned model's."""
    if name == "gbt":
        return GBTModel(seed=seed, limits=limits)
    if name == "random":
        return RandomModel(seed)
    raise ValueError(f"cost model must be 'gbt' or 'random', got {name!r}")


def normalized_throughput(times: np.ndarray, task_keys: np.ndarray) -> np.ndarray:
    """Per task: best time / time (1 for the best, 0 for a failure, i.e. time = inf)."""
    y = np.zeros(len(times))
    for key in np.unique(task_keys):
        sel = task_keys == key
        t = times[sel]
        ok = np.isfinite(t)
        if ok.any():
            y[sel] = np.where(ok, t[ok].min() / np.where(ok, t, 1.0), 0.0)
    return y


# ---- ranking metrics: ``pred`` are scores (higher = faster), ``true`` throughputs -------

def pairwise_accuracy(pred: np.ndarray, true: np.ndarray, max_pairs: int = 2_000_000,
                      seed: int = 0) -> float:
    """Fraction of pairs with different true throughput that ``pred`` orders correctly
    (ties in ``pred`` count half). Large sets use a random sample of pairs."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    n = len(true)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
    dt, dp = true[i] - true[j], pred[i] - pred[j]
    keep = dt != 0
    if not keep.any():
        return float("nan")
    agree = np.sign(dt[keep]) == np.sign(dp[keep])
    tie = dp[keep] == 0
    return float((agree.sum() + 0.5 * tie.sum()) / keep.sum())


def kendall_tau(pred: np.ndarray, true: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(pred, true).statistic)


def recall_at_k(pred: np.ndarray, true: np.ndarray, k: int = 10) -> float:
    """|predicted top k  intersect  true top k| / k. Configs tied with the true k-th
    best may fill the true top k's places left after those strictly better (with ties,
    which of them is "the" top k is arbitrary; an index order would call a right
    prediction wrong), but no more of them than there are places: counting every tie
    as a hit gave 1.0 to a prediction that missed the best. When fewer than k configs
    ran, recall is over those that did: failures (all 0) tied with the k-th had made
    any prediction score (k - successes) / k or more."""
    true = np.asarray(true, float)
    k = min(k, len(true))
    top_pred = np.argsort(-np.asarray(pred), kind="stable")[:k]
    kth = np.sort(true)[::-1][k - 1]
    if kth <= 0:  # fewer than k configs ran: the true top k is those that did (a tie
        ran = true > 0  # of failures is no hit), NaN when none did (nothing to find)
        return float(ran[top_pred].sum()) / ran.sum() if ran.any() else float("nan")
    above = true > kth
    tied = int((true[top_pred] == kth).sum())
    return float(above[top_pred].sum() + min(tied, k - int(above.sum()))) / k


def average_peak_at_k(pred: np.ndarray, true: np.ndarray, k: int = 32) -> float:
    """TVM's a-peak@k: measure the predicted top k in order; mean of best-so-far / best.
    NaN when nothing has a throughput (every config failed): there is no peak."""
    true = np.asarray(true, float)
    if not true.max() > 0:
        return float("nan")
    order = np.argsort(-np.asarray(pred), kind="stable")[:k]
    curve = np.maximum.accumulate(true[order]) / true.max()
    return float(curve.mean())


def ranking_report(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {"pairwise_accuracy": pairwise_accuracy(pred, true),
            "kendall_tau": kendall_tau(pred, true),
            "recall_at_10": recall_at_k(pred, true, 10),
            "average_peak_at_32": average_peak_at_k(pred, true, 32)}
