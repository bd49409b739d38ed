"""The Clipper process: the query REST API, the gRPC query API, and the wiring.

Clipper's query frontend (``src/frontends/src/query_frontend.hpp``) serves, for every
registered application, ``POST /<app>/predict`` with ``{"input": [...]}`` or
``{"input_batch": [[...], ...]}`` and ``POST /<app>/update`` with feedback, answering
``{"query_id", "output", "default"}`` (``"default_explanation"`` when the default was
used; ``{"batch_predictions": [...]}`` for a batch), and ``GET /metrics``. Errors are
``{"error", "cause"}`` with status 400. We add 404 for an unknown application and 429 when
a model's queue is full. A gRPC query API answers the same queries with
:mod:`common.wire` messages (meta ``{"app"}``, the input as a 1-D or 2-D array) and
reports errors as INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED.

Run as ``python -m systems.miniclipper.frontend``; :class:`.manager.LocalContainerManager`
starts it. One asyncio loop serves the query REST port, the management REST port
(:mod:`.management`) and the gRPC port; every port binds 127.0.0.1 unless ``--host`` says
otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from aiohttp import web

from common import rpc
from common.procs import announce_ready, remove_orphans
from common.trace import LONG_RUN_MAX_EVENTS, TraceWriter
from common.wire import WireError, pack, unpack

from .cache import PredictionCache
from .datatypes import (
    INPUT_DTYPES,
    NUMERIC_TYPES,
    InputError,
    check_finite,
    dumps_strict,
    finite_json,
    loads_strict,
)
from .metrics import Metrics
from .query_processor import QueryProcessor, UnknownApp
from .queues import QueueFull
from .supervisor import ReplicaSupervisor
from .task_executor import TaskExecutor

QUERY_SERVICE = "clipper.Query"
log = logging.getLogger("miniclipper.frontend")


class ClipperServer:
    """Everything one Clipper process holds, wired together (the paper's Figure 1)."""

    def __init__(self, store: str, cache_bytes: int = 32 << 20, trace_sample: float = 0.0,
                 log_dir: str | None = None):
        self.metrics = Metrics()
        self.cache = PredictionCache(cache_bytes)
        self.tracer = (TraceWriter("clipper frontend", max_events=LONG_RUN_MAX_EVENTS)
                       if trace_sample > 0 else None)  # bounded: hours of sampled queries
        self.executor = TaskExecutor(self.cache, self.metrics, self._on_failure, self.tracer)
        self.supervisor = ReplicaSupervisor(store, self.executor, self.metrics, log_dir)
        self.qp = QueryProcessor(self.executor, self.metrics, self.tracer, trace_sample)
        self.models: dict[tuple[str, str], dict[str, Any]] = {}
        self.retired: set[tuple[str, str]] = set()  # stopped versions, never deployed again
        self.lock = asyncio.Lock()  # one management operation at a time
        self.stopping = asyncio.Event()
        self._synced: dict[str, float] = {}

    def _on_failure(self, rep: Any, reason: str) -> None:
        self.supervisor.on_replica_failure(rep, reason)

    def forget_model(self, model: tuple[str, str]) -> None:
        """A stopped version leaves no series behind (nor their scrape-time bookkeeping)."""
        label = f"{model[0]}:{model[1]}"
        self.metrics.forget_model(label)
        self._synced.pop(f"dropped:{label}", None)

    def sync_metrics(self) -> bytes:
        """Bring the scrape-time series up to date, then render the text format."""
        m, st = self.metrics, self.cache.stats
        for name, value, counter in (("lookups", st.lookups, m.cache_lookups),
                                     ("hits", st.hits, m.cache_hits)):
            counter.inc(value - self._synced.get(name, 0))
            self._synced[name] = value
        m.cache_hit_ratio.set(self.cache.hit_ratio())
        m.cache_bytes.set(self.cache.size_bytes)
        for model, q in self.executor.queues.items():
            label = f"{model[0]}:{model[1]}"
            m.queue_length.labels(label).set(len(q))
            key = f"dropped:{label}"
            m.dropped.labels(label).inc(q.dropped - self._synced.get(key, 0))
            self._synced[key] = q.dropped
        # gauges of things that come and go (replicas scaled away or given up, deleted
        # apps) are rebuilt from what exists now, so no series outlives its subject
        m.controller.clear()
        for model in self.executor.queues:
            for rid, rep in self.executor.replicas.get(model, {}).items():
                for field, v in rep.controller.state().items():
                    m.controller.labels(f"{model[0]}:{model[1]}", str(rid), field).set(v)
        m.app_default_ratio.clear()
        for app, (total, defaults) in self.qp.counts.items():
            if app in self.qp.apps:
                m.app_default_ratio.labels(app).set(defaults / total if total else 0.0)
        return m.text()


def error_json(status: int, error: str, cause: str) -> web.Response:
    return web.json_response({"error": error, "cause": cause}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Unknown paths and methods answer in the same ``{"error", "cause"}`` shape."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_json(e.status, e.reason, f"{request.method} {request.path}: {e.text}")


def _inputs_of(doc: Any) -> tuple[list[Any], bool]:
    if not isinstance(doc, dict) or ("input" in doc) == ("input_batch" in doc):
        raise InputError('the body must be a JSON object with exactly one of "input" '
                         '(one query) or "input_batch" (a list of queries)')
    if "input" in doc:
        return [doc["input"]], False
    batch = doc["input_batch"]
    if not isinstance(batch, list) or not batch:
        raise InputError('"input_batch" must be a non-empty JSON array of inputs')
    return batch, True


def _pinned(server: ClipperServer, app: Any, doc: dict) -> str | None:
    """Clipper's optional ``"version"`` (query_frontend.hpp ``decode_and_handle_predict``):
    the query goes to that version of the app's one linked model, not the current one; a
    version that was never deployed, or an app with several models, is refused."""
    if "version" not in doc:
        return None
    v = doc["version"]
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise InputError(f'"version" must be a string, got {v!r:.40}')
    if len(app.models) != 1:
        raise InputError(f'"version" names a version of the app\'s one linked model; '
                         f'{app.name!r} links {len(app.models)}')
    model = (app.models[0], str(v))
    if model not in server.models:
        have = sorted(ver for n, ver in server.models if n == model[0])
        raise InputError(f"model {model[0]!r} has no version {model[1]!r}; deployed: {have}")
    return model[1]


def rows_of(x: Any, input_type: str, input_length: int | None) -> list[Any]:
    """The inputs of a gRPC query sent as one array (a row per query): no JSON, no copy
    per row, which keeps the amortised per-query cost of a batch small."""
    if input_type not in NUMERIC_TYPES or x.dtype.kind not in "iuf" or x.ndim not in (1, 2):
        raise InputError(f"an array input needs a numeric application and a 1-D or 2-D "
                         f"numeric array; got {x.dtype} of shape {x.shape} for "
                         f"input_type {input_type!r}")
    target = np.dtype(INPUT_DTYPES[input_type])
    if target.kind == "i" and x.size:  # never truncate or wrap what REST would refuse
        if x.dtype.kind == "f":
            raise InputError(f"input_type {input_type!r} needs whole numbers, got a "
                             f"{x.dtype} array")
        info = np.iinfo(target)
        if x.min() < info.min or x.max() > info.max:
            raise InputError(f"input_type {input_type!r}: a value does not fit in "
                             f"{target.name}")
    with np.errstate(over="ignore"):  # a float32 overflow becomes inf: refused below
        x = np.ascontiguousarray(x if x.ndim == 2 else x[None], dtype=target)
    check_finite(x, input_type)
    if input_length is not None and x.shape[1] != input_length:
        raise InputError(f"input has length {x.shape[1]}, this application expects "
                         f"{input_length}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"empty input of shape {x.shape}")
    return list(x)


# The ``app`` label of a query refused because its application does not exist: the
# name asked for would let any client add series without bound. Never a valid app name.
UNKNOWN_APP = "(unknown)"


def refuse(server: ClipperServer, app: str, e: Exception) -> web.Response:
    """The answer to a refused query (404, 400 or 429, as ``{"error", "cause"}``), counted
    in ``clipper_rejected_total`` by reason, whichever REST route refused it."""
    if isinstance(e, UnknownApp):
        status, error, reason, cause, app = (404, "Unknown application", "unknown_app",
                                             e.args[0], UNKNOWN_APP)
    elif isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
        status, error, reason, cause = 400, "Json error", "json", \
            f"the body is not valid JSON: {e}"
    elif isinstance(e, InputError):
        status, error, reason, cause = 400, "Json error", "input", str(e)
    else:
        status, error, reason, cause = 429, "Overloaded", "overload", str(e)
    server.metrics.rejected.labels(app, reason).inc()
    return error_json(status, error, cause)


REFUSED = (UnknownApp, json.JSONDecodeError, UnicodeDecodeError, InputError, QueueFull)


def query_app(server: ClipperServer) -> web.Application:
    qp = server.qp

    async def predict(request: web.Request) -> web.Response:
        arrival = time.monotonic()
        name = request.match_info["app"]
        try:
            app = qp.app(name)
            doc = loads_strict(await request.read())
            values, batched = _inputs_of(doc)
            xs = qp.parse(app, values)
            out = await qp.predict(name, xs, arrival, version=_pinned(server, app, doc))
        except REFUSED as e:
            return refuse(server, name, e)
        body = {"batch_predictions": out} if batched else out[0]
        return web.Response(body=dumps_strict(body), content_type="application/json")

    async def update(request: web.Request) -> web.Response:
        name = request.match_info["app"]
        try:
            app = qp.app(name)
            doc = loads_strict(await request.read())
            # Clipper's body also names the user ({"uid", "input", "label"}); our
            # selection state is per application, so a uid is taken and not used
            if not isinstance(doc, dict) or not {"input", "label"} <= set(doc) <= \
                    {"input", "label", "uid"}:
                raise InputError('feedback must be a JSON object {"input": ..., "label": '
                                 '...} (and optionally Clipper\'s "uid")')
            if "uid" in doc and (type(doc["uid"]) is not int):
                raise InputError(f'"uid" must be an integer, got {doc["uid"]!r:.40}')
            (x,) = qp.parse(app, [doc["input"]])
            return web.json_response(await qp.update(name, x, doc["label"]), dumps=dumps_strict)
        except REFUSED as e:
            return refuse(server, name, e)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=server.sync_metrics(),
                            content_type="text/plain", charset="utf-8")

    web_app = web.Application(middlewares=[json_errors], client_max_size=64 << 20)
    web_app.add_routes([web.post("/{app}/predict", predict), web.post("/{app}/update", update),
                        web.get("/metrics", metrics)])
    return web_app


def grpc_handlers(server: ClipperServer) -> dict[str, Any]:
    """The gRPC query API: the same queries as REST, as wire messages."""
    qp = server.qp

    async def Predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        arrival = time.monotonic()
        name = UNKNOWN_APP  # until the message parses and names an application
        try:
            meta, arrays = unpack(request)
            if not isinstance(meta.get("app"), str):
                raise WireError('the message header needs an "app" string')
            if len(arrays) > 1 or arrays and ("input" in meta or "input_batch" in meta):
                raise WireError('a query carries exactly one of: one array (a row per '
                                'query), "input" or "input_batch"')
            app = qp.app(meta["app"])
            name = app.name
            if arrays:
                xs, batched = rows_of(arrays[0], app.input_type, app.input_length), \
                    arrays[0].ndim == 2
            else:
                values, batched = _inputs_of(meta)
                xs = qp.parse(app, values)
            out = await qp.predict(app.name, xs, arrival, version=_pinned(server, app, meta))
        except UnknownApp as e:
            server.metrics.rejected.labels(UNKNOWN_APP, "unknown_app").inc()
            await context.abort(grpc.StatusCode.NOT_FOUND, json.dumps(
                {"error": "Unknown application", "cause": e.args[0]}))
        except (WireError, InputError) as e:
            server.metrics.rejected.labels(name, "wire" if isinstance(e, WireError)
                                           else "input").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, json.dumps(
                {"error": "Invalid query", "cause": str(e)}))
        except QueueFull as e:
            server.metrics.rejected.labels(name, "overload").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, json.dumps(
                {"error": "Overloaded", "cause": str(e)}))
        reply = {"predictions": out, "batch": batched}
        try:  # valid JSON for any client, as REST answers: NaN and inf as strings
            return pack(reply, allow_nan=False)
        except ValueError:
            return pack(finite_json(reply))

    return {"Predict": Predict}


async def run(args: argparse.Namespace) -> None:
    from .management import management_app

    server = ClipperServer(args.store, args.cache_bytes, args.trace_sample, args.log_dir)
    server.supervisor.start()
    runners = []
    ports = {}
    for key, app, port in (("query_port", query_app(server), args.query_port),
                           ("mgmt_port", management_app(server, args.host), args.mgmt_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.host, port)
        await site.start()
        ports[key] = site._server.sockets[0].getsockname()[1]
        runners.append(runner)
    grpc_server, ports["grpc_port"] = await rpc.serve_aio(
        QUERY_SERVICE, grpc_handlers(server), host=args.host, port=args.grpc_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stopping.set)
    gc.collect()
    gc.freeze()  # start-up objects never die: keep them out of every later collection
    announce_ready(pid=os.getpid(), host=args.host, store=args.store, **ports)
    await server.stopping.wait()
    await server.supervisor.stop_all()
    await grpc_server.stop(0.5)
    for r in runners:
        await r.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the miniclipper query + management frontend")
    p.add_argument("--host", default=rpc.LOOPBACK)
    p.add_argument("--query-port", type=int, default=1337)
    p.add_argument("--mgmt-port", type=int, default=1338)
    p.add_argument("--grpc-port", type=int, default=1339)
    p.add_argument("--store", default=None, help="model store (default: a new temp dir)")
    p.add_argument("--cache-bytes", type=int, default=32 << 20)
    p.add_argument("--trace-sample", type=float, default=0.0,
                   help="share of queries traced (GET /admin/trace on the management port)")
    p.add_argument("--log-dir", default=None)
    a = p.parse_args(argv)
    own_store = a.store is None  # a store of our own making goes with us, and those of
    if own_store:                # frontends killed before they could remove theirs too
        remove_orphans(Path(tempfile.gettempdir()).glob("miniclipper-store-*"))
        a.store = tempfile.mkdtemp(prefix="miniclipper-store-")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(run(a))
    finally:
        if own_store:
            shutil.rmtree(a.store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
