"""miniclipper: Clipper (Crankshaw et al., NSDI 2017) as real processes on one machine.

A query's path, as in the paper's Figure 1, with the module behind each box::

    client --REST /<app>/predict--> frontend.py  (aiohttp; gRPC query API too)
                                      |
                  query_processor.py  selection policy picks models (selection.py:
                                      |   Exp3 one model, Exp4 an ensemble)
                    task_executor.py  prediction cache (cache.py: CLOCK, coalescing)
                                      |   miss -> a task in the model's queue
                           queues.py  one EDF queue per model version, bounded (429)
                                      |   an idle replica pulls a batch whose size its
                         batching.py  controller chose (static / AIMD / quantile regr.)
                                      |
                     --grpc.aio-->  container.py  one OS process per replica
                                      |
                  query_processor.py  combine what arrived by the SLO, else the default

Around it: ``supervisor.py`` starts, watches and restarts containers from its model
store; ``management.py`` is the management REST API; ``admin.py`` (ClipperConnection),
``manager.py`` (LocalContainerManager) and ``deployers.py`` are the ``clipper_admin``
side; ``metrics.py`` exports Prometheus metrics; ``loadgen.py`` is the open-loop load
generator; ``bench.py``/``bench_load.py``, ``cli.py`` and ``tour.py`` plug into
``casebook``.

Quickstart (Clipper's, unchanged in spirit)::

    from systems.miniclipper import ClipperConnection, LocalContainerManager, \\
        deploy_python_closure
    conn = ClipperConnection(LocalContainerManager())
    conn.start_clipper()                      # REST :1337, management :1338, gRPC :1339
    conn.register_application("hello", "doubles", -1.0, 100000)
    deploy_python_closure(conn, "sum", 1, "doubles", lambda xs: [sum(x) for x in xs])
    conn.link_model_to_app("hello", "sum")
    conn.predict("hello", [1.0, 2.0])         # or POST /hello/predict {"input": [1, 2]}
    conn.stop_all()
"""

from .admin import ClipperConnection, ClipperException, UnconnectedException
from .batching import (
    AIMDBatcher,
    BatchController,
    BatchingConfig,
    QuantileRegressionBatcher,
    StaticBatcher,
)
from .cache import PredictionCache
from .deployers import (
    create_endpoint,
    deploy_python_closure,
    deploy_pytorch_model,
    deploy_sklearn_model,
)
from .manager import LocalContainerManager
from .selection import DefaultPolicy, Exp3Policy, Exp4Policy, SelectionPolicy

__all__ = [
    "AIMDBatcher", "BatchController", "BatchingConfig", "ClipperConnection",
    "ClipperException", "DefaultPolicy", "Exp3Policy", "Exp4Policy",
    "LocalContainerManager", "PredictionCache", "QuantileRegressionBatcher",
    "SelectionPolicy", "StaticBatcher", "UnconnectedException", "create_endpoint",
    "deploy_python_closure", "deploy_pytorch_model", "deploy_sklearn_model",
]
