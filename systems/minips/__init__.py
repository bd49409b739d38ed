"""minips: the Parameter Server (Li et al., "Scaling Distributed Machine Learning with the
Parameter Server", OSDI 2014; code: dmlc/ps-lite), as real processes talking gRPC.

The map, following the paper's sections:

| paper | module |
| --- | --- |
| 3.1 (key, value) vectors | `store` (sorted keys, values, optimiser state) |
| 3.2 push / pull, ranges | `kv` (`KVWorker`, ps-lite `kv_app.h`); `message` (ps-lite `message.h`) |
| 3.3 user-defined updates | `updaters` (SGD, AdaGrad, L1 proximal, sum) |
| 3.4-3.5 tasks, consistency | `consistency` (BSP / SSP(tau) / ASP as dependencies) |
| 3.6, 4.2 filters | `filters` (significantly-modified, KKT, compression, key caching) |
| 4.1 range vector clocks | `clock` |
| 4.3 consistent hashing | `ring` (key ranges, virtual nodes, replica chains) |
| 4.3, 4.5 server manager | `scheduler` (membership, heartbeats, ring epochs) |
| 4.4-4.5 replication | `replication` (forward, copy, pre-copy join); `membership` (heartbeats) |
| 4 server node | `server` (`KVServer`: push, pull, control) |
| 4.6 worker node | `worker` (the training loop, shard reassignment) |
| snapshots (ours) | `checkpoint` (atomic files, restore into any ring) |
| 5 applications | `apps` (sparse L1-LR, torch MLP, counting audit); `data` (Zipf dataset) |

Around them: `cluster` (start a cluster's processes, talk to its scheduler), `launcher`
(run a job on it: progress, faults, the monitor, the summary), `metrics` (counters,
Prometheus text, Chrome traces), `cli` (`casebook ps launch`), and `bench` with
`bench_runs` and `baselines` (`casebook bench minips`).

Run a job:

    from systems.minips import ClusterSpec, launch
    out = launch(ClusterSpec(servers=2, workers=2, consistency="ssp:4", replication=2,
                             app={"name": "sparse_lr", "features": 1 << 20}))

or talk to a cluster directly:

    import numpy as np
    from systems.minips import Cluster, ClusterSpec
    keys = np.arange(0, 1 << 20, 4096, dtype=np.uint64)   # sorted, unique
    vals = np.ones((keys.size, 1), np.float32)             # val_len numbers per key
    with Cluster(ClusterSpec(servers=3, replication=2, key_max=1 << 20)) as cl:
        kv = cl.start(workers=False).client("me")
        ts = kv.push(keys, vals)       # returns at once
        kv.wait(ts)                    # acknowledged by every replica
        vals = kv.wait(kv.pull(keys))  # the servers' values (the count app's rule sums)
"""

from .cluster import Cluster, ClusterSpec
from .consistency import Consistency
from .filters import KKT, Compress, KeyCaching, SignificantlyModified
from .kv import KVWorker
from .launcher import launch
from .message import PSError
from .ring import Ring
from .updaters import SGD, AdaGrad, L1Proximal, Sum

__all__ = ["AdaGrad", "Cluster", "ClusterSpec", "Compress", "Consistency", "KKT",
           "KVWorker", "KeyCaching", "L1Proximal", "PSError", "Ring", "SGD",
           "SignificantlyModified", "Sum", "launch"]
