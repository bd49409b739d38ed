"""Graph passes run on a plan's copy of the graph before it is placed and executed.

Abadi et al. 2016, section 5: before a graph runs, TensorFlow applies standard
optimisations such as common subexpression elimination and constant folding; Grappler
(tensorflow/core/grappler/) later grew these into a pass pipeline. Ours: constant
folding, CSE and dead-node pruning repeat until nothing changes (folding can expose
duplicates, CSE can expose dead nodes; see ``ENABLES``), then elementwise chains are
fused. Each pass can be switched off in ``ConfigProto`` and
reports what it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import PlanGraph
from .cse import eliminate_common_subexpressions
from .folding import fold_constants
from .fusion import fuse_elementwise


@dataclass
class PassStats:
    nodes_before: int = 0
    nodes_after: int = 0
    iterations: int = 0
    changes: dict[str, int] = field(default_factory=dict)  # pass name -> nodes changed

    def add(self, name: str, n: int) -> None:
        self.changes[name] = self.changes.get(name, 0) + n


# Which passes a change by each pass can give new work to. Each pass reaches its own
# fixed point in one sweep in topological order (a folded node's consumers see the new
# constant, a merged node's consumers are keyed by the survivor), so a pass needs to run
# again only if another pass may have enabled it: folding makes constants that can be
# duplicates and leaves dead nodes; CSE leaves dead nodes; pruning only removes (it can
# make nothing foldable or equal). TF's Grappler instead repeats its whole pipeline a
# fixed number of times (``meta_optimizer_iterations``, 2 by default).
ENABLES = {"constant_folding": ("cse", "pruning"), "cse": ("pruning",), "pruning": ()}


def run_passes(pg: PlanGraph, *, constant_folding: bool = True, cse: bool = True,
               pruning: bool = True, fusion: bool = True,
               max_constant_bytes: int = 10 << 20, max_iterations: int = 10) -> PassStats:
    stats = PassStats(nodes_before=len(pg.nodes))
    attr_keys: dict = {}
    passes = {"constant_folding": lambda: fold_constants(pg, max_constant_bytes),
              "cse": lambda: eliminate_common_subexpressions(pg, attr_keys),
              "pruning": pg.prune}
    on = {"constant_folding": constant_folding, "cse": cse, "pruning": pruning}
    dirty = {name for name in passes if on[name]}  # every pass runs at least once
    while dirty and stats.iterations < max_iterations:
        stats.iterations += 1
        for name, run in passes.items():  # in pipeline order; ENABLES points forward
            if name in dirty:
                dirty.discard(name)
                n = run()
                stats.add(name, n)
                if n:
                    dirty.update(p for p in ENABLES[name] if on[p])
    if fusion:
        stats.add("fusion", fuse_elementwise(pg))
        if pruning:
            stats.add("pruning", pg.prune())
    stats.nodes_after = len(pg.nodes)
    return stats
