"""Graph passes run on a plan's copy of the graph before it is placed and executed.

Abadi et al. 2016, section 5: "we apply common subexpression elimination ... and
constant folding"; Grappler (tensorflow/core/grappler/) later grew these into a pass
pipeline. Ours: constant folding, CSE and dead-node pruning repeat until nothing changes
(folding can expose duplicates, CSE can expose dead nodes), then elementwise chains are
fused. Each pass can be switched off in ``ConfigProto`` and reports what it did.
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


def run_passes(pg: PlanGraph, *, constant_folding: bool = True, cse: bool = True,
               pruning: bool = True, fusion: bool = True,
               max_constant_bytes: int = 10 << 20, max_iterations: int = 10) -> PassStats:
    stats = PassStats(nodes_before=len(pg.nodes))
    attr_keys: dict = {}
    for _ in range(max_iterations):
        stats.iterations += 1
        changed = 0
        if constant_folding:
            n = fold_constants(pg, max_constant_bytes)
            stats.add("constant_folding", n)
            changed += n
        if cse:
            n = eliminate_common_subexpressions(pg, attr_keys)
            stats.add("cse", n)
            changed += n
        if pruning:
            n = pg.prune()
            stats.add("pruning", n)
            changed += n
        if not changed:
            break
    if fusion:
        stats.add("fusion", fuse_elementwise(pg))
        if pruning:
            stats.add("pruning", pg.prune())
    stats.nodes_after = len(pg.nodes)
    return stats
