"""One task's search: eps-greedy batches, no repeats, ablation switches, replay spaces."""

import numpy as np

from systems.miniansor.annotation import config_key, enumerate_space
from systems.miniansor.cost_model import GBTModel, RandomModel
from systems.miniansor.measure import Measurer
from systems.miniansor.search_policy import SearchParams, SketchPolicy, sample_init_population
from systems.miniansor.simulator import SimulatedGPU
from systems.miniansor.sketch import generate_sketches
from systems.miniansor.workloads import gemm

TASK = gemm(1024, 2048, 512, bias=True)


def test_rounds_never_measure_a_config_twice():
    model = GBTModel(seed=0)
    pol = SketchPolicy(TASK, model, seed=0)
    m = Measurer(SimulatedGPU(), verify="none")
    seen = []
    for _ in range(5):
        inputs, results = pol.continue_search_one_round(8, m)
        model.update(inputs, results)
        seen += [i.key for i in inputs]
    assert len(seen) == 40 == len(set(seen))
    assert pol.best is not None and pol.best[1] == min(t for _, t in pol.history)


def test_preloaded_configs_are_never_measured_again():
    m = Measurer(SimulatedGPU(), verify="none")
    first = SketchPolicy(TASK, GBTModel(), seed=1)
    inputs, results = first.continue_search_one_round(16, m)
    again = SketchPolicy(TASK, GBTModel(), seed=1)  # same seed: would pick the same
    again.preload(inputs, results)
    nxt = again.next_batch(16)
    assert not ({i.key for i in nxt} & {i.key for i in inputs})


def test_eps_greedy_mixes_in_random_states():
    pol = SketchPolicy(TASK, RandomModel(), params=SearchParams(eps_greedy=0.5), seed=2)
    best = sample_init_population(TASK, pol.sketches, 40, np.random.default_rng(0))
    rand = sample_init_population(TASK, pol.sketches, 40, np.random.default_rng(9))
    picked = pol.pick_eps_greedy(best, rand, 20)
    keys_best = {config_key(s, a) for s, a in best}
    from_best = sum(i.key in keys_best for i in picked)
    assert len(picked) == 20 and 3 <= from_best <= 17


def test_ablation_switches():
    assert SketchPolicy(TASK, GBTModel()).params.evolution.num_iters == 4  # TVM's default
    assert SketchPolicy(TASK, RandomModel()).params.evolution.num_iters == 2  # TVM's cap
    assert SketchPolicy(TASK, GBTModel(), evolution=False).params.evolution.num_iters == 0


def test_the_best_measured_states_join_the_sampled_population():
    """TVM's SearchOneRound: init population = random samples + the measured best."""
    pol = SketchPolicy(TASK, RandomModel(), seed=4)
    m = Measurer(SimulatedGPU(), verify="none")
    for _ in range(3):
        pol.continue_search_one_round(8, m)
    _, init = pol.search_one_round(8)
    keys = [config_key(s, a) for s, a in init]
    measured_ok = [config_key(*c) for c, t in pol.history if np.isfinite(t)]
    population = pol.params.evolution.population
    assert len(keys) == population + len(measured_ok)
    assert set(measured_ok) <= set(keys[population:])


def test_a_restricted_space_is_respected_and_exhausted():
    sks = generate_sketches(TASK)
    space = sample_init_population(TASK, sks, 12, np.random.default_rng(3))
    pol = SketchPolicy(TASK, GBTModel(num_warmup_sample=4), space=space, seed=3)
    m = Measurer(SimulatedGPU(), verify="none")
    keys = set()
    for _ in range(4):
        inputs, results = pol.continue_search_one_round(5, m)
        pol.cost_model.update(inputs, results)
        keys |= {i.key for i in inputs}
    assert keys == {config_key(s, a) for s, a in space} and pol.exhausted()


def test_the_initial_population_is_distinct_and_takes_every_sketch():
    """Ansor's SampleInitPopulation keeps only new states: ``n`` distinct configs, the
    sketches taking turns, even from a small space where random draws repeat often."""
    for task in (TASK, gemm(32, 32, 32)):  # 50 configs: 40 raw draws hold 16 repeats
        sketches = generate_sketches(task)
        pop = sample_init_population(task, sketches, 40, np.random.default_rng(0))
        keys = [config_key(sk, ann) for sk, ann in pop]
        assert len(keys) == 40 and len(set(keys)) == 40
        assert {sk.name for sk, _ in pop} == {sk.name for sk in sketches}


def test_one_batch_never_holds_the_same_config_twice():
    """The evolved list and the random states overlap (both come from the same space):
    eps-greedy must still pick distinct configs (a duplicate wastes a measurement)."""
    from systems.miniansor.cost_model import RandomModel
    from systems.miniansor.search_policy import SearchParams, SketchPolicy

    task = gemm(256, 256, 256)
    pol = SketchPolicy(task, RandomModel(), params=SearchParams(eps_greedy=0.5))
    sk = pol.sketches[0]
    cfgs = [(sk, a) for a in enumerate_space(task, sk)[:10]]
    picked = pol.pick_eps_greedy(cfgs, list(cfgs), 10)
    keys = [p.key for p in picked]
    assert len(keys) == len(set(keys)) == 10


def test_the_last_configs_of_a_listed_space_are_found_whatever_the_draws():
    """Near the end of a replay table a round's evolution and its one random draw of
    4n configs could all be measured already: the task was stopped as "every config the
    table holds is measured" with configs and budget left (798 of 800 in the review)."""
    space = [(sk, a) for sk in generate_sketches(TASK) for a in enumerate_space(TASK, sk)]
    assert len(space) > 500
    left = [space[17], space[-40]]
    for seed in range(5):
        pol = SketchPolicy(TASK, RandomModel(seed), space=space, seed=seed)
        pol.measured = {config_key(*c) for c in space} - {config_key(*c) for c in left}
        batch = pol.next_batch(8)
        assert {i.key for i in batch} == {config_key(*c) for c in left}
        assert not pol.exhausted()


def test_the_measured_states_that_join_the_population_are_the_fastest():
    """With a population of 20 and use_measured_ratio 0.2, the 4 fastest configs
    measured (failures never) are appended to the sampled population, as TVM's
    num_use_measured: they are the parents evolution should breed from. Taking the
    slowest instead (or failures, which then drop out) bred from the worst."""
    from systems.miniansor.evolution import EvolutionParams
    from systems.miniansor.measure import ErrorNo, MeasureInput, MeasureResult

    params = SearchParams(evolution=EvolutionParams(population=20, num_iters=0))
    pol = SketchPolicy(TASK, RandomModel(), params=params, seed=5)
    cfgs = sample_init_population(TASK, pol.sketches, 12, np.random.default_rng(6))
    times = [7e-5, 3e-5, None, 9e-5, 1e-5, None, 5e-5, 2e-5, 8e-5, None, 6e-5, 4e-5]
    results = [MeasureResult([t]) if t else MeasureResult([], ErrorNo.RUNTIME_ERROR)
               for t in times]
    pol.preload([MeasureInput(TASK, s, a) for s, a in cfgs], results)
    _, init = pol.search_one_round(8)
    fastest = [cfgs[i] for i in (4, 7, 1, 11)]  # 1e-5, 2e-5, 3e-5, 4e-5
    assert len(init) == 20 + 4
    assert [config_key(*c) for c in init[20:]] == [config_key(*c) for c in fastest]
