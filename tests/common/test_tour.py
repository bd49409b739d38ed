"""``casebook tour`` (what ``make demo`` runs): every step runs, in a fresh process, and
shows what it claims to show."""

import json
import math
import subprocess
import sys

import pytest

from common.tour import STEPS


@pytest.fixture(scope="module")
def tour():
    out = subprocess.run([sys.executable, "-m", "common.cli", "tour", "--json"],
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["steps"]


def test_every_step_runs_and_reports_a_row(tour):
    assert list(tour) == list(STEPS)
    assert all(step["result"] and step["seconds"] > 0 for step in tour.values())


def test_the_measuring_step_places_a_matmul_under_the_roofline(tour):
    assert 0 < tour["measuring layer"]["roofline_fraction"] <= 1.5  # a probe can be low
    assert tour["measuring layer"]["ab_ratio"] > 0


def test_miniclipper_batching_and_cache_show_their_effects(tour):
    step = tour["miniclipper"]
    qps, cache = step["throughput_qps"], step["cache_ms"]
    assert qps["rf-aimd"] > 2 * qps["rf-unbatched"]
    assert cache["hit_calls"] == cache["miss_calls"]  # the repeat pass never reached it
    assert cache["hit"] < cache["miss"]


def test_miniflow_trains_to_97_percent_and_the_checkpoint_restores_it(tour):
    step = tour["miniflow"]
    assert step["test_accuracy"] >= 0.97
    assert step["restored_accuracy"] == step["test_accuracy"]


def test_miniansor_beats_the_tutorial_list_where_it_was_not_written_for(tour):
    tasks = tour["miniansor"]["tasks"]
    decode = tasks["gemm:16x4096x14336:fp16:none"]
    square = tasks["gemm:2048x2048x2048:fp16:bias+relu"]
    assert decode["tuned_us"] < 0.8 * decode["tutorial_us"]  # split-K, not in the list
    assert square["tuned_us"] < 1.25 * square["tutorial_us"]  # near a good hand-picked list


def test_minips_trains_and_moves_less_than_a_dense_all_reduce(tour):
    step = tour["minips"]
    first, last = step["objective"]
    assert math.isclose(first, math.log(2)) and last < 0.95 * first
    assert step["worker_mb"] < step["dense_allreduce_mb"]
