"""Mutation and crossover keep configs valid; the evolutionary search finds better ones."""

import math

import numpy as np
import pytest

from systems.miniansor.annotation import H100_LIMITS, config_key, enumerate_space, is_valid
from systems.miniansor.evolution import (
    GENE_GROUPS,
    MUTATIONS,
    EvolutionParams,
    _next_generation,
    crossover,
    evolutionary_search,
    mutate_stages,
    mutate_tile_size,
    tiled_loops,
)
from systems.miniansor.search_policy import sample_init_population
from systems.miniansor.simulator import SimulatedGPU
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.workloads import gemm, layernorm

TASKS = [gemm(4096, 4096, 4096), gemm(16, 4096, 14336, bias=True), layernorm(4096, 1024)]


def _population(task, n=60, seed=0):
    return sample_init_population(task, generate_sketches(task), n,
                                  np.random.default_rng(seed))


# The knobs each built-in rule may change. A rule not listed here (a student's, say) is
# held to the knobs it is seen to change, and counted against every parent that has one.
OWNS = {"mutate_tile_size": set(GENE_GROUPS["tile"] + ("SPLIT_K",)),
        "mutate_warps": {"num_warps"}, "mutate_stages": {"num_stages"},
        "mutate_order": set(GENE_GROUPS["order"])}


def _check_mutation_rules(rules) -> None:
    rng = np.random.default_rng(0)
    parents = [(task, sk, ann) for task in TASKS for sk, ann in _population(task)]
    for rule in rules:
        name = rule.__name__
        changed_by_child = []
        for task, sk, ann in parents:
            child = rule(task, sk, ann, rng, H100_LIMITS)  # as the search calls it
            assert child is None or is_valid(task, sk, child, H100_LIMITS), (name, ann, child)
            if child is not None:
                changed = {p for p in ann if child[p] != ann[p]}
                assert changed, (name, "returned its parent unchanged", ann)
                changed_by_child.append(changed)
        owns = OWNS.get(name, set().union(*changed_by_child))
        assert all(c <= owns for c in changed_by_child), (name, changed_by_child)
        tried = sum(not owns or any(p in ann for p in owns) for _, _, ann in parents)
        assert len(changed_by_child) >= tried // 5, (name, len(changed_by_child), tried)


def test_every_mutation_returns_a_valid_config_or_none():
    """Valid or None, and never a no-op dressed as a child: each rule changes only the
    knobs it owns, and gives a child for at least a fifth of the parents that have them
    (so a rule that always gave up would fail here; TVM's rules fail often too)."""
    _check_mutation_rules([rule for rule, _ in MUTATIONS])


def test_the_mutation_check_holds_a_rule_it_does_not_know_to_the_same_standard():
    """Exercise 3 promises that a new rule in MUTATIONS is checked without editing OWNS."""

    def mutate_double_k(task, sketch, ann, rng, limits=None):
        new = {**ann, "BLOCK_K": 2 * ann["BLOCK_K"]} if "BLOCK_K" in ann else None
        return new if new and is_valid(task, sketch, new) else None

    def mutate_never(task, sketch, ann, rng, limits=None):
        return None

    def mutate_to_invalid(task, sketch, ann, rng, limits=None):
        return {**ann, "num_warps": 3}

    _check_mutation_rules([mutate_double_k])
    for bad in (mutate_never, mutate_to_invalid):
        with pytest.raises(AssertionError):
            _check_mutation_rules([bad])


def test_tile_size_mutation_moves_a_factor_within_one_loop():
    """TVM's MutateTileSize: the levels of one loop change, by powers of two, and two
    changed levels keep their product (the factor moved between them)."""
    rng = np.random.default_rng(1)
    changed_volume = 0
    for task in TASKS:
        every_level = dict.fromkeys(GENE_GROUPS["tile"] + ("SPLIT_K",), 1)
        loop_of = {p: levels for _, levels in tiled_loops(task, every_level) for p in levels}
        for sk, ann in _population(task, 80):
            child = mutate_tile_size(task, sk, ann, rng)
            if child is None:
                continue
            changed = {p for p in ann if child[p] != ann[p]}
            assert len(changed) == 1 or (len(changed) == 2 and len(
                {loop_of[p] for p in changed}) == 1), (ann, child)
            for p in changed:
                r = max(child[p], ann[p]) // min(child[p], ann[p])
                assert r > 1 and r & (r - 1) == 0, (p, ann[p], child[p])
            if len(changed) == 2:
                assert math.prod(child[p] for p in changed) == math.prod(ann[p] for p in changed)
            tiles = [p for p in GENE_GROUPS["tile"] if p in ann]
            changed_volume += math.prod(child[p] for p in tiles) != math.prod(ann[p] for p in tiles)
    # a factor moved to or from the grid grows or shrinks the block, which a rule that
    # only trades factors between BLOCK_M, BLOCK_N and BLOCK_K could never do
    assert changed_volume > 20


def test_repeated_tile_mutation_walks_a_loop_both_ways():
    task, rng = TASKS[0], np.random.default_rng(5)
    sk = generate_sketches(task)[0]
    ann = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    seen = {ann["BLOCK_M"]}
    for _ in range(300):
        child = mutate_tile_size(task, sk, ann, rng)
        if child is not None:
            seen.add(child["BLOCK_M"])
    assert {16, 32, 128, 256} <= seen


class _Draws:
    """An rng stub for ``mutate_tile_size``: the last loop, its levels in ``order``
    (default: outer first), and the largest (or smallest) factor on offer."""

    def __init__(self, largest: bool = True, order=None):
        self.largest, self.order = largest, order

    def integers(self, low, high=None):
        if high is None:
            return low - 1
        return high - 1 if self.largest else low

    def permutation(self, n):
        return np.arange(n) if self.order is None else np.array(self.order)


def test_tile_mutation_into_the_innermost_level_stays_within_its_candidates():
    """TVM's MutateTileSize draws a factor moved into the innermost level only among those
    that keep it <= max_innermost_split_factor (ours: the level's largest candidate) and,
    if none fits, lets the next level in the order give instead; such a move never fails
    for overshooting. decode's K loop, 16384 = outer x [SPLIT_K x] BLOCK_K."""
    task = gemm(16, 4096, 14336)
    sketches = {s.name: s for s in generate_sketches(task)}
    ann = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "num_warps": 2, "num_stages": 3}
    assert tiled_loops(task, ann)[-1] == (16384, ("BLOCK_K",))
    # [256, 64]: outer -> BLOCK_K by the largest factor that fits, 2 (not 256)
    assert mutate_tile_size(task, sketches["tiled"], ann, _Draws()) == {**ann, "BLOCK_K": 128}
    # [128, 128]: BLOCK_K is at its largest candidate, so BLOCK_K gives to the outer level
    at_cap = {**ann, "BLOCK_K": 128}
    assert mutate_tile_size(task, sketches["tiled"], at_cap, _Draws(largest=False)) == ann
    # [64, 4, 64]: SPLIT_K -> BLOCK_K by 2 (not 4)
    split = {**ann, "SPLIT_K": 4}
    assert mutate_tile_size(task, sketches["tiled.splitk"], split, _Draws(order=[1, 2, 0])) \
        == {**split, "SPLIT_K": 2, "BLOCK_K": 128}


def test_crossover_child_is_valid_and_takes_whole_gene_groups_from_parents():
    rng = np.random.default_rng(2)
    task = TASKS[0]
    pop = [c for c in _population(task, 80) if c[0].name == "tiled.grouped"]
    made = 0
    for (sk, a), (_, b) in zip(pop[::2], pop[1::2], strict=False):
        child = crossover(task, sk, a, b, 1.0, 1.0, rng)
        if child is None:
            continue
        made += 1
        assert is_valid(task, sk, child)
        for genes in GENE_GROUPS.values():
            part = {g: child[g] for g in genes if g in child}
            assert part in ({g: a[g] for g in part}, {g: b[g] for g in part})
    assert made > 5


def test_crossover_prefers_the_better_parent():
    rng = np.random.default_rng(3)
    task = TASKS[0]
    sk = generate_sketches(task)[0]
    a = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}
    b = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8, "num_stages": 2}
    kids = [crossover(task, sk, a, b, 9.0, 1.0, rng) for _ in range(200)]
    from_a = sum(k["BLOCK_M"] == 64 for k in kids if k)
    assert from_a > 150  # p = 0.9 per gene group


def test_a_parent_scored_at_or_below_zero_gives_no_genes():
    """Tree models predict below 0 too. Scores are clipped at 0, as in parent selection,
    so a parent scored > 0 is copied whole against one scored <= 0 (the raw sum 0.3 - 0.5
    once made each gene group a coin flip); two parents scored <= 0 mix evenly."""
    rng = np.random.default_rng(6)
    task = TASKS[0]
    sk = generate_sketches(task)[0]
    a = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}
    b = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8, "num_stages": 2}
    assert all(crossover(task, sk, a, b, 0.3, -0.5, rng) == a for _ in range(200))
    assert all(crossover(task, sk, a, b, 0.0, 0.3, rng) == b for _ in range(200))
    kids = [crossover(task, sk, a, b, -0.2, -0.5, rng) for _ in range(200)]
    assert all(kids)  # every mix of these two parents is valid
    tile_from_a = sum(k["BLOCK_M"] == 64 for k in kids)
    warps_from_a = sum(k["num_warps"] == 4 for k in kids)
    assert 70 < tile_from_a < 130 and 70 < warps_from_a < 130  # p = 0.5 per gene group


class SimThroughput:
    """A perfect cost model: the simulator's own throughput (the oracle)."""

    trained = True

    def __init__(self):
        self.sim = SimulatedGPU()

    def predict(self, task, configs):
        return np.array([1.0 / self.sim.true_time(task, s, a) for s, a in configs])


def test_evolution_with_an_oracle_model_improves_on_its_initial_population():
    task = TASKS[0]
    model, rng = SimThroughput(), np.random.default_rng(4)
    init = _population(task, 64, seed=5)
    top_init = np.sort(model.predict(task, init))[-8:]
    out = evolutionary_search(task, init, model, 8, rng, set(),
                              EvolutionParams(population=64, num_iters=4))
    scores = model.predict(task, out)
    assert len({config_key(s, a) for s, a in out}) == len(out) == 8
    assert list(scores) == sorted(scores, reverse=True)
    assert scores.mean() > top_init.mean()  # the 8 best found beat the 8 best sampled
    space = [(s, a) for s in generate_sketches(task) for a in enumerate_space(task, s)]
    assert scores[0] >= np.quantile(model.predict(task, space), 0.99)


def test_evolution_never_returns_measured_configs():
    task = TASKS[0]
    init = _population(task, 40)
    measured = {config_key(s, a) for s, a in init}
    out = evolutionary_search(task, init, SimThroughput(), 10, np.random.default_rng(0),
                              measured, EvolutionParams(population=40, num_iters=2))
    assert out and not ({config_key(s, a) for s, a in out} & measured)


def test_parents_are_selected_in_proportion_to_their_scores():
    """Without mutation or crossover a generation copies its parents, so the copies count
    the selection: scores [0, 0, 1, 3] -> only the last two, about 1:3 (Ansor 5.1)."""
    task = gemm(256, 256, 256)
    sk = generate_sketches(task)[0]
    anns = enumerate_space(task, sk)[:4]
    pop = [(sk, a) for a in anns]
    scores = np.array([0.0, 0.0, 1.0, 3.0])
    params = EvolutionParams(population=2000, mutation_prob=0.0, crossover_ratio=0.0)
    nxt = _next_generation(task, pop, scores, np.random.default_rng(0), params, None,
                           None, None)
    counts = [sum(c[1] == a for c in nxt) for a in anns]
    assert counts[0] + counts[1] <= 2  # weight 1e-9 each
    assert 0.2 < counts[2] / (counts[2] + counts[3]) < 0.3, counts


def test_the_stage_mutation_adds_or_removes_a_stage():
    """MutateStages steps num_stages both ways (a config with 3 stages can become 2 or 4)."""
    task = gemm(1024, 1024, 1024)
    sk = generate_sketches(task)[0]
    ann = next(a for a in enumerate_space(task, sk) if a["num_stages"] == 3
               and a["BLOCK_M"] == 64 and a["BLOCK_N"] == 64 and a["BLOCK_K"] == 32)
    rng = np.random.default_rng(0)
    seen = {c["num_stages"] for c in (mutate_stages(task, sk, ann, rng) for _ in range(40))
            if c is not None}
    assert seen == {2, 4}
