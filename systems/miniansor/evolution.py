"""Evolutionary search over annotated sketches, guided by the cost model (Ansor 5.1).

TVM's ``SketchPolicyNode::EvolutionarySearch`` (``sketch_policy.cc``) keeps a
population, scores it with the cost model, keeps a heap of the best *unmeasured*
programs, and breeds the next generation by picking parents with probability
proportional to their scores and mutating them (``mutation_prob`` = 0.85) with rules
chosen by weight (``sketch_policy_rules.cc``: ``MutateTileSize``, ``MutateAutoUnroll``,
``MutateComputeLocation``, ``MutateParallel``: the CPU set; on GPU only the first two).
The paper (section 5.1) also describes *crossover*, which TVM's code leaves as
``TODO(merrymercy, comaniac): add crossover``; we implement it.

Our genes are the annotation's knobs, grouped into the sketch's "nodes" the way
Ansor's rewriting steps belong to DAG nodes:

* ``tile``: BLOCK_M, BLOCK_N, BLOCK_K, ROWS (the multi-level tiling);
* ``pipeline``: num_warps, num_stages (how the block is executed);
* ``order``: GROUP_M, SPLIT_K (which programs exist and when they run).

Mutation rules (each returns a *valid* new annotation or None):

* ``mutate_tile_size``: pick one tiled loop, divide one of its split levels by a factor
  and multiply another level of *the same loop* by it, so the loop's extent is
  unchanged (``MutateTileSize::Apply``). A loop's levels are its block sizes plus an
  implicit outer level, the grid (or the K loop's trip count): M = grid x BLOCK_M,
  K = trips x SPLIT_K x BLOCK_K. Moving a factor to or from the outer level is what
  grows or shrinks a block;
* ``mutate_warps`` and ``mutate_stages``: double/halve the warps, add/remove a stage;
* ``mutate_order``: double/halve the group size or the split factor.

Crossover takes each node's genes from one of two parents of the same sketch, choosing
the parent with probability proportional to its whole program's predicted score, clipped
at 0 (the paper picks each node's rewriting steps from a randomly chosen parent, section
5.1), then checks that the child is valid (the paper's dependency check), since genes
from two valid parents can break a joint limit (e.g. the tile of one and the stages of
the other exceed shared memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .annotation import H100_LIMITS, HardwareLimits, clamped_domain, config_key, is_valid
from .sketch import Sketch
from .workloads import Task, next_pow2

Config = tuple[Sketch, dict[str, int]]
GENE_GROUPS = {"tile": ("BLOCK_M", "BLOCK_N", "BLOCK_K", "ROWS"),
               "pipeline": ("num_warps", "num_stages"),
               "order": ("GROUP_M", "SPLIT_K")}


def _valid_or_none(task: Task, sketch: Sketch, ann: dict[str, int],
                   limits: HardwareLimits) -> dict[str, int] | None:
    return ann if is_valid(task, sketch, ann, limits) else None


def tiled_loops(task: Task, ann: dict[str, int]) -> list[tuple[int, tuple[str, ...]]]:
    """Each tiled loop's extent (rounded up to a power of two, as block sizes are) and
    its split levels in ``ann``, outermost first; loops without a level are left out."""
    if task.is_matmul:
        m, n, k = task.mnk
        loops = [(m, ("BLOCK_M",)), (n, ("BLOCK_N",)), (k, ("SPLIT_K", "BLOCK_K"))]
    else:
        rows, cols = task.rows_cols
        loops = [(rows, ("ROWS",)), (cols, ("BLOCK_N",))]
    out = []
    for extent, levels in loops:
        present = tuple(p for p in levels if p in ann)
        if present:
            out.append((next_pow2(extent), present))
    return out


def mutate_tile_size(task: Task, sketch: Sketch, ann: dict[str, int],
                     rng: np.random.Generator, limits: HardwareLimits = H100_LIMITS):
    """Move a factor between two split levels of one loop (TVM's ``MutateTileSize``:
    a random loop, a random order of its levels, the first level longer than 1 gives a
    random divisor of its length to the next level in that order; a factor moved into
    the innermost level is drawn among those that keep it within its largest candidate,
    TVM's ``max_innermost_split_factor``, and if none does the next level in the order
    is tried)."""
    loops = [lp for lp in tiled_loops(task, ann) if lp[0] > 1]
    if not loops:
        return None
    extent, levels = loops[int(rng.integers(len(loops)))]
    inner = [ann[p] for p in levels]
    lengths = [max(1, extent // math.prod(inner)), *inner]  # [outer, ...levels]
    perm = rng.permutation(len(lengths))
    for i, src in enumerate(perm):
        if lengths[src] <= 1:
            continue
        dst = perm[(i + 1) % len(perm)]
        # our lengths are powers of two, so their divisors > 1 are 2, 4, ..., length
        max_log = int(math.log2(lengths[src]))
        if dst == len(lengths) - 1:
            cap = max(clamped_domain(task, sketch, levels[-1]), default=1)
            max_log = min(max_log, int(math.log2(max(1, cap // lengths[dst]))))
            if max_log < 1:
                continue
        f = 2 ** int(rng.integers(1, max_log + 1))
        lengths[src] //= f
        lengths[dst] *= f
        new = dict(ann)
        new.update(zip(levels, lengths[1:], strict=True))
        return _valid_or_none(task, sketch, new, limits)
    return None


def _step(task: Task, sketch: Sketch, ann: dict[str, int], param: str, rng,
          limits: HardwareLimits, mul: bool):
    if param not in ann:
        return None
    new = dict(ann)
    up = bool(rng.integers(2))
    if mul:
        new[param] = ann[param] * 2 if up else ann[param] // 2
    else:
        new[param] = ann[param] + (1 if up else -1)
    return _valid_or_none(task, sketch, new, limits)


def mutate_warps(task, sketch, ann, rng, limits=H100_LIMITS):
    return _step(task, sketch, ann, "num_warps", rng, limits, mul=True)


def mutate_stages(task, sketch, ann, rng, limits=H100_LIMITS):
    return _step(task, sketch, ann, "num_stages", rng, limits, mul=False)


def mutate_order(task, sketch, ann, rng, limits=H100_LIMITS):
    knobs = [p for p in GENE_GROUPS["order"] if p in ann]
    if not knobs:
        return None
    return _step(task, sketch, ann, str(rng.choice(knobs)), rng, limits, mul=True)


Mutation = Callable[..., "dict[str, int] | None"]
MUTATIONS: list[tuple[Mutation, float]] = [
    (mutate_tile_size, 0.5), (mutate_warps, 0.2), (mutate_stages, 0.2), (mutate_order, 0.1)]


def crossover(task: Task, sketch: Sketch, a: dict[str, int], b: dict[str, int],
              score_a: float, score_b: float, rng: np.random.Generator,
              limits: HardwareLimits = H100_LIMITS) -> dict[str, int] | None:
    """A child taking each gene group whole from one parent, chosen with probability
    proportional to the parents' scores clipped at 0 (as parent selection clips them:
    a tree model can predict below 0), so a parent scored <= 0 gives no genes when the
    other scores > 0; when neither does, each group comes from either with p = 0.5."""
    wa, wb = (float(s) if s > 0 else 0.0 for s in (score_a, score_b))  # NaN counts as 0
    pa = 0.5 if wa + wb == 0 else wa / (wa + wb)
    child = dict(a)
    for genes in GENE_GROUPS.values():
        if rng.random() >= pa:
            for g in genes:
                if g in b:
                    child[g] = b[g]
    return _valid_or_none(task, sketch, child, limits)


@dataclass(frozen=True)
class EvolutionParams:
    """TVM's defaults (``evolutionary_search_num_iters`` 4, ``mutation_prob`` 0.85) but a
    population of 256 instead of 2048: our spaces hold 10^3-10^4 configs, where 2048
    random samples are a third of a space or all of it (the model would rank the space
    rather than evolve in it), and a tuning run would take about 9x longer."""

    population: int = 256
    num_iters: int = 4
    mutation_prob: float = 0.85
    crossover_ratio: float = 0.2  # share of each new generation bred by crossover


def _selection_probs(scores: np.ndarray) -> np.ndarray:
    w = np.maximum(np.nan_to_num(scores, nan=0.0), 0.0) + 1e-9
    return w / w.sum()


def evolutionary_search(task: Task, init: list[Config], model, out_size: int,
                        rng: np.random.Generator, measured: set[str],
                        params: EvolutionParams = EvolutionParams(),
                        limits: HardwareLimits = H100_LIMITS,
                        allowed: Callable[[Sketch, dict[str, int]], bool] | None = None,
                        ) -> list[Config]:
    """The best ``out_size`` unmeasured configs found, best predicted first."""
    best: dict[str, tuple[float, Config]] = {}
    pop = list(init)
    weights = np.array([w for _, w in MUTATIONS])
    weights = weights / weights.sum()
    for it in range(params.num_iters + 1):
        if not pop:
            break
        scores = np.asarray(model.predict(task, pop), dtype=float)
        for (sk, ann), s in zip(pop, scores, strict=True):
            key = config_key(sk, ann)
            if key in measured or key in best:
                continue
            if len(best) < out_size:
                best[key] = (s, (sk, ann))
            else:
                worst = min(best, key=lambda k: best[k][0])
                if s > best[worst][0]:
                    del best[worst]
                    best[key] = (s, (sk, ann))
        if it == params.num_iters:
            break
        pop = _next_generation(task, pop, scores, rng, params, limits, weights, allowed)
    return [c for _, c in sorted(best.values(), key=lambda t: -t[0])]


def _next_generation(task, pop, scores, rng, params, limits, weights, allowed):
    probs = _selection_probs(scores)
    by_sketch: dict[str, list[int]] = {}
    for i, (sk, _) in enumerate(pop):
        by_sketch.setdefault(sk.name, []).append(i)
    n_cross = int(params.crossover_ratio * params.population)
    nxt: list[Config] = []
    attempts = 0
    while len(nxt) < params.population and attempts < 8 * params.population:
        attempts += 1
        i = int(rng.choice(len(pop), p=probs))
        sk, ann = pop[i]
        if len(nxt) < n_cross:
            mates = by_sketch[sk.name]
            mp = probs[mates] / probs[mates].sum()
            j = mates[int(rng.choice(len(mates), p=mp))]
            child = crossover(task, sk, ann, pop[j][1], scores[i], scores[j], rng, limits)
        elif rng.random() < params.mutation_prob:
            rule = MUTATIONS[int(rng.choice(len(MUTATIONS), p=weights))][0]
            child = rule(task, sk, ann, rng, limits)
        else:
            child = ann
        if child is not None and (allowed is None or allowed(sk, child)):
            nxt.append((sk, child))
    return nxt
