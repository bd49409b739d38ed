"""The management REST API: what ``clipper_admin`` calls to change a running Clipper.

Clipper's management frontend (``src/management/src/management_frontend.hpp``) takes
JSON ``POST``s under ``/admin/``: ``add_app``, ``add_model``, ``add_model_links``,
``delete_model_links``, ``get_linked_models``, ``set_model_version``,
``delete_versioned_model``, ``get_all_applications``, ``get_all_models``,
``get_all_containers``, ... and writes the result to Redis, where the query frontend
picks it up. Ours runs in the same process as the query frontend, so it changes the
query processor and the supervisor directly (no Redis), one operation at a time.

Security, as the issue asks: the API binds loopback by default, and it never accepts
model bytes. ``add_model`` takes a ``model_data_path`` on the server's own disk, written
by a deployer (:mod:`.deployers`); the supervisor copies that directory into its store and
containers load only from the store. What a request must be (exactly its documented
fields, names that are DNS-1123 labels, no cross-site caller) is checked by
:mod:`.management_checks`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from common import rpc
from common.wire import pack, unpack

from .batching import BatchingConfig
from .container import SERVICE
from .datatypes import INPUT_DTYPES, InputError, dumps_strict, loads_strict, same_input_type
from .frontend import ClipperServer, error_json, json_errors
from .management_checks import (
    MAX_INPUT_LENGTH,
    MAX_SLO_MICROS,
    MAX_SLOWDOWN,
    BadRequest,
    ReplicaFailure,
    check_fields,
    check_name,
    cross_site,
)
from .query_processor import Application, UnknownApp
from .selection import POLICIES, make_policy

log = logging.getLogger("miniclipper.management")


class UnknownModel(KeyError):
    """No deployed model by that name and version (HTTP 404). A class of its own, as
    :class:`.query_processor.UnknownApp`: only these two mean "not found"; any other
    KeyError in an endpoint is a bug, answered 500 and logged with its traceback."""


def management_app(server: ClipperServer, bind_host: str = rpc.LOOPBACK) -> web.Application:
    qp, ex, sup = server.qp, server.executor, server.supervisor

    def model_of(doc: dict[str, Any]) -> tuple[str, str]:
        name = doc["model_name"]
        given = doc.get("model_version")  # version 0 is a version, not "unset"
        version = str(given if given is not None else qp.current_version.get(name, ""))
        if (name, version) not in server.models:
            deployed = sorted(f"{n}:{v}" for n, v in server.models)
            if (name, version) in server.retired:
                raise UnknownModel(f"model {name}:{version} was stopped; deployed: {deployed}")
            if not version and any(n == name for n, _ in server.retired):
                raise UnknownModel(f"model {name} has no current version (it was stopped); "
                               f"deployed: {deployed}")
            raise UnknownModel(f"no model {name}:{version or '?'}; deployed: {deployed}")
        return name, version

    async def add_app(doc: dict[str, Any]) -> Any:
        d = check_fields(doc, {"name": str, "input_type": str, "latency_slo_micros": int,
                               "default_output": object},
                         {"selection_policy": str, "input_length": int}, "add_app")
        name = check_name(d["name"], "application name")
        if name in qp.apps:
            raise BadRequest(f"application {name!r} already exists")
        if d["input_type"] not in INPUT_DTYPES:
            raise BadRequest(f"input_type must be one of {sorted(INPUT_DTYPES)}")
        if d.get("selection_policy", "exp3") not in POLICIES:
            raise BadRequest(f"selection_policy must be one of {sorted(POLICIES)}")
        if not 0 < d["latency_slo_micros"] <= MAX_SLO_MICROS:
            raise BadRequest(f"latency_slo_micros must be in 1..{MAX_SLO_MICROS} "
                             f"(one hour), got {d['latency_slo_micros']}")
        if "input_length" in d and d["input_type"] in ("strings", "bytes"):
            raise BadRequest(f"input_length is the number of values of a numeric input; "
                             f"an application of {d['input_type']} takes any length")
        if not 0 < d.get("input_length", 1) <= MAX_INPUT_LENGTH:
            raise BadRequest(f"input_length must be in 1..{MAX_INPUT_LENGTH} (or left out: "
                             f"any length), got {d.get('input_length')}")
        policy = d.get("selection_policy", "exp3")
        qp.apps[name] = Application(name, d["input_type"], d["default_output"],
                                    d["latency_slo_micros"], policy, d.get("input_length"),
                                    state=make_policy(policy).init_state([]))
        return {"ok": True}

    async def delete_app(doc: dict[str, Any]) -> Any:
        qp.app(check_fields(doc, {"name": str}, {}, "delete_app")["name"])
        del qp.apps[doc["name"]]
        qp.counts.pop(doc["name"], None)  # a new app of that name starts its own ratio
        server.metrics.forget_app(doc["name"])  # no series outlives its app
        return {"ok": True}

    async def add_model(doc: dict[str, Any]) -> Any:
        d = check_fields(doc, {"model_name": str, "model_version": (str, int), "input_type": str,
                               "model_data_path": str},
                         {"num_replicas": int, "batch_size": int, "batching": dict,
                          "max_queue": int, "labels": list}, "add_model")
        name, version = check_name(d["model_name"], "model name"), str(d["model_version"])
        check_name(version, "model version")
        if (name, version) in server.models:
            raise BadRequest(f"model {name}:{version} is already deployed")
        if (name, version) in server.retired:  # Clipper keeps it, marked deleted
            raise BadRequest(f"model {name}:{version} was deployed and stopped, and a "
                             f"version is never reused (cached outputs are keyed by name "
                             f"and version): deploy it as a new version")
        if d["input_type"] not in INPUT_DTYPES:
            raise BadRequest(f"input_type must be one of {sorted(INPUT_DTYPES)}")
        for app in qp.apps.values():  # a new version must take what linked apps send
            if name in app.models and not same_input_type(d["input_type"], app.input_type):
                raise BadRequest(f"model {name!r} is linked to application {app.name!r}, "
                                 f"which sends {app.input_type!r}, not {d['input_type']!r}")
        bs = d.get("batch_size", -1)
        if bs != -1 and bs < 1:
            raise BadRequest(f"batch_size must be -1 (adaptive) or a static size of at "
                             f"least 1, got {bs}")
        if not all(isinstance(label, str) for label in d.get("labels", [])):
            raise BadRequest("labels must be a list of strings")
        try:
            batching = BatchingConfig.from_dict(d["batching"]) if "batching" in d else \
                BatchingConfig() if bs == -1 else BatchingConfig("static", size=bs,
                                                                 max_size=max(bs, 1))
        except (ValueError, TypeError) as e:
            raise BadRequest(str(e)) from None
        n = d.get("num_replicas", 1)
        if not (0 <= n <= 64) or not (1 <= d.get("max_queue", 1024) <= 1 << 20):
            raise BadRequest("num_replicas must be 0..64 and max_queue 1..2^20")
        try:
            path = await asyncio.to_thread(sup.install, name, version, d["model_data_path"])
        except (ValueError, OSError) as e:  # (an unreadable entry, a name too long...)
            raise BadRequest(str(e)) from None
        model = (name, version)
        ex.add_model(model, d["input_type"], batching, d.get("max_queue", 1024))
        server.models[model] = {"model_name": name, "model_version": version,
                                "input_type": d["input_type"], "labels": d.get("labels", []),
                                "batching": batching.to_dict(), "path": str(path),
                                "model_data_path": d["model_data_path"],  # as given
                                "max_queue": d.get("max_queue", 1024)}
        try:
            await sup.set_num_replicas(model, n)
        except Exception as e:  # the container died while loading the model, or worse:
            await sup.retire(model)  # either way no half-added model stays behind
            del server.models[model]
            ex.remove_model(model)
            server.forget_model(model)
            if isinstance(e, (RuntimeError, OSError)):
                raise BadRequest(f"model {name}:{version} failed to start: {e}") from None
            raise
        if n == 0:
            _none_running(model)
        qp.current_version[name] = version
        return {"ok": True, "model": f"{name}:{version}", "replicas": n}

    async def add_model_links(doc: dict[str, Any]) -> Any:
        d = check_fields(doc, {"app_name": str, "model_names": list}, {}, "add_model_links")
        app = qp.app(d["app_name"])
        if not all(isinstance(m, str) for m in d["model_names"]):
            raise BadRequest(f"add_model_links: model_names must be a list of strings, got "
                             f"{d['model_names']!r:.80}")
        if not d["model_names"]:  # as Clipper: a call that links nothing is a mistake
            raise BadRequest("add_model_links: model_names is empty; name the model(s) to "
                             "link")
        known = {n for n, _ in server.models}
        missing = [m for m in d["model_names"] if m not in known]
        if missing:
            raise BadRequest(f"no deployed model named {missing}; deployed: {sorted(known)}")
        for m in d["model_names"]:  # Clipper refuses a link across input types
            types = {info["input_type"] for (n, _), info in server.models.items() if n == m}
            if any(not same_input_type(t, app.input_type) for t in types):
                raise BadRequest(f"model {m!r} takes input_type {sorted(types)}, application "
                                 f"{app.name!r} sends {app.input_type!r}")
        qp.link(app, d["model_names"])
        return {"ok": True, "linked_models": app.models}

    async def delete_model_links(doc: dict[str, Any]) -> Any:
        d = check_fields(doc, {"app_name": str, "model_names": list}, {}, "delete_model_links")
        app = qp.app(d["app_name"])
        absent = [m for m in d["model_names"] if m not in app.models]
        if absent:  # as Clipper: only an existing link can be removed
            raise BadRequest(f"application {app.name!r} has no link to {absent!r:.80}; "
                             f"linked: {app.models}")
        qp.unlink(app, d["model_names"])
        return {"ok": True, "linked_models": app.models}

    async def get_linked_models(doc: dict[str, Any]) -> Any:
        """The names of the app's linked models, in link order (as Clipper's)."""
        return list(qp.app(check_fields(doc, {"app_name": str}, {}, "get_linked_models")
                           ["app_name"]).models)

    async def delete_versioned_model(doc: dict[str, Any]) -> Any:
        """Stop a version and forget it; ``clipper_admin``'s ``stop_models``,
        ``stop_versioned_models`` and ``stop_inactive_model_versions`` end here. Links
        are by model name, so they stay: with its current version stopped a model has
        none until ``set_model_version`` or a new deployment, and its apps answer with
        their default output meanwhile, saying why."""
        model = model_of(check_fields(doc, {"model_name": str, "model_version": (str, int)}, {},
                                      "delete_versioned_model"))
        label = f"{model[0]}:{model[1]}"
        if qp.current_version.get(model[0]) == model[1]:
            del qp.current_version[model[0]]  # no new query goes to it from here on
        server.retired.add(model)
        ex.stop_model(model, f"model {label} was stopped (delete_versioned_model)")
        await sup.retire(model)
        ex.remove_model(model)
        del server.models[model]
        server.forget_model(model)
        return {"ok": True, "model": label}

    async def set_model_version(doc: dict[str, Any]) -> Any:
        d = check_fields(doc, {"model_name": str, "model_version": (str, int)}, {},
                         "set_model_version")
        model = model_of(d)
        qp.current_version[model[0]] = model[1]
        return {"ok": True, "model": f"{model[0]}:{model[1]}"}

    async def set_num_replicas(doc: dict[str, Any]) -> Any:
        d = check_fields(doc, {"model_name": str, "num_replicas": int},
                         {"model_version": (str, int)}, "set_num_replicas")
        if not 0 <= d["num_replicas"] <= 64:
            raise BadRequest("num_replicas must be 0..64")
        model = model_of(d)
        try:
            await sup.set_num_replicas(model, d["num_replicas"])
        except (RuntimeError, OSError) as e:  # a new replica died while loading the model
            raise ReplicaFailure(f"{model[0]}:{model[1]}: a replica failed to start ({e}); "
                                 f"{len(sup.replicas_of(model))} replicas run now") from None
        if d["num_replicas"] == 0:
            _none_running(model)
        return {"ok": True, "replicas": len(sup.replicas_of(model))}

    def _none_running(model: tuple[str, str]) -> None:
        """Scaled to 0 on purpose: its queries are answered at once with that reason, as
        when the supervisor gives up a model's last replica (Clipper lets them wait out
        their SLO, then blames the SLO)."""
        ex.no_replicas(model, f"model {model[0]}:{model[1]} runs 0 replicas "
                              f"(set_num_replicas); none serves it")

    async def set_batching(doc: dict[str, Any]) -> Any:
        d = check_fields(doc, {"model_name": str, "batching": dict}, {"model_version": (str, int)},
                         "set_batching")
        model = model_of(d)
        try:
            cfg = BatchingConfig.from_dict(d["batching"])
        except (ValueError, TypeError) as e:
            raise BadRequest(str(e)) from None
        ex.set_batching(model, cfg)
        server.models[model]["batching"] = cfg.to_dict()
        return {"ok": True, "batching": cfg.to_dict()}

    async def get_all_applications(doc: dict[str, Any]) -> Any:
        verbose = check_fields(doc or {}, {}, {"verbose": bool}, "get_all_applications")
        if verbose.get("verbose"):
            return [describe_app(a) for a in qp.apps.values()]
        return sorted(qp.apps)

    def describe_app(app: Application) -> dict[str, Any]:
        qp.wake(app)  # which linked models are asleep now, not at the last query
        return app.describe()

    async def get_application(doc: dict[str, Any]) -> Any:
        return describe_app(qp.app(check_fields(doc, {"name": str}, {},
                                                "get_application")["name"]))

    def describe_model(model: tuple[str, str]) -> dict[str, Any]:
        return {**server.models[model], "is_current_version":
                qp.current_version.get(model[0]) == model[1],
                "replicas": len(sup.replicas_of(model)), "restarts": sup.restarts.get(model, 0),
                "abandoned_replicas": {str(r): why for r, why in
                                       sup.abandoned.get(model, {}).items()},
                "queue_length": len(ex.queues[model])}

    async def get_all_models(doc: dict[str, Any]) -> Any:
        verbose = check_fields(doc or {}, {}, {"verbose": bool}, "get_all_models")
        if verbose.get("verbose"):
            return [describe_model(m) for m in server.models]
        return sorted(f"{n}:{v}" for n, v in server.models)

    async def get_model(doc: dict[str, Any]) -> Any:
        return describe_model(model_of(check_fields(doc, {"model_name": str},
                                                    {"model_version": (str, int)}, "get_model")))

    async def container_rpc(address: str, method: str, meta: dict[str, Any]) -> dict[str, Any]:
        async with rpc.aio_channel(address) as ch:
            reply = await rpc.method(ch, SERVICE, method)(pack(meta), timeout=5)
        return unpack(reply)[0]

    async def get_all_containers(doc: dict[str, Any]) -> Any:
        d = check_fields(doc or {}, {}, {"verbose": bool}, "get_all_containers")
        out = []  # (snapshots: a restart may change the replicas while we await)
        for model, reps in list(ex.replicas.items()):
            for rid, rep in sorted(reps.items()):
                row = {"model": f"{model[0]}:{model[1]}", "replica_id": rid, "pid": rep.pid,
                       "address": rep.address, "batches": rep.batches,
                       "controller": rep.controller.name, **rep.controller.state()}
                if d.get("verbose"):
                    try:
                        row["health"] = await container_rpc(rep.address, "Health", {})
                    except Exception as e:  # a dead container is reported, not fatal
                        row["health"] = {"error": str(e)}
                out.append(row)
        return out

    async def container_control(doc: dict[str, Any]) -> Any:
        d = check_fields(doc, {"model_name": str, "slowdown": (int, float)},
                         {"model_version": (str, int)}, "container_control")
        if not 1 <= d["slowdown"] <= MAX_SLOWDOWN:
            raise BadRequest(f"slowdown is how many times slower the container runs, "
                             f"1..{MAX_SLOWDOWN:g}; got {d['slowdown']}")
        model = model_of(d)
        out = []  # per replica, a dead one's error among them (it is being restarted)
        for rid, rep in sorted(ex.replicas[model].items()):
            try:
                out.append({"replica_id": rid, **await container_rpc(
                    rep.address, "Control", {"slowdown": d["slowdown"]})})
            except Exception as e:  # noqa: BLE001 - reported, and the others still told
                out.append({"replica_id": rid, "error": str(e)})
        return out

    async def get_batch_log(doc: dict[str, Any]) -> Any:
        d = check_fields(doc, {"model_name": str},
                         {"model_version": (str, int), "since": (int, float)}, "get_batch_log")
        model = model_of(d)
        since = d.get("since", 0.0)
        keys = ("t", "batch_size", "latency_s", "limit", "replica")
        return [dict(zip(keys, row, strict=True)) for row in ex.batch_log[model]
                if row[0] >= since]

    async def shutdown(doc: dict[str, Any]) -> Any:
        if doc is not None:  # a body, if any, must be the empty object
            check_fields(doc, {}, {}, "shutdown")
        asyncio.get_running_loop().call_later(0.05, server.stopping.set)
        return {"ok": True}

    endpoints: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "add_app": add_app, "delete_app": delete_app, "add_model": add_model,
        "add_model_links": add_model_links, "delete_model_links": delete_model_links,
        "get_linked_models": get_linked_models,
        "delete_versioned_model": delete_versioned_model,
        "set_model_version": set_model_version,
        "set_num_replicas": set_num_replicas, "set_batching": set_batching,
        "get_all_applications": get_all_applications, "get_application": get_application,
        "get_all_models": get_all_models, "get_model": get_model,
        "get_all_containers": get_all_containers, "container_control": container_control,
        "get_batch_log": get_batch_log, "shutdown": shutdown}

    def route(name: str, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        async def handler(request: web.Request) -> web.Response:
            refused = cross_site(request, bind_host)
            if refused:
                return error_json(refused[0], "Refused", refused[1])
            body = await request.read()
            try:
                doc = loads_strict(body) if body.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return error_json(400, "Json error", f"/admin/{name}: body is not JSON: {e}")
            except InputError as e:  # NaN, or past the parser's nesting or digit limits
                return error_json(400, "Json error", f"/admin/{name}: {e}")
            try:
                async with server.lock:
                    # strict: a controller's unfitted state is NaN, which is not JSON
                    return web.json_response(await fn(doc), dumps=dumps_strict)
            except BadRequest as e:
                return error_json(400, "Bad request", str(e))
            except (UnknownModel, UnknownApp) as e:
                return error_json(404, "Not found", e.args[0] if e.args else str(e))
            except ReplicaFailure as e:
                return error_json(500, "Replica failure", str(e))
            except Exception as e:  # noqa: BLE001 - a bug here must not become a bare 500
                log.exception("/admin/%s failed", name)
                return error_json(500, "Internal error", f"/admin/{name}: "
                                                         f"{type(e).__name__}: {e}")
        return handler

    def guarded(fn: Callable[[web.Request], Awaitable[web.Response]]) -> Any:
        """A GET route behind the same Host/Origin check as the POST routes: a page
        whose domain is re-bound to this machine could otherwise read the trace (every
        app and model name, timings, pids)."""
        async def handler(request: web.Request) -> web.Response:
            refused = cross_site(request, bind_host)
            return error_json(refused[0], "Refused", refused[1]) if refused else \
                await fn(request)
        return handler

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def trace(request: web.Request) -> web.Response:
        if server.tracer is None:
            return error_json(404, "Not found", "tracing is off; start Clipper with "
                              "trace_sample > 0 (casebook clipper start --trace-sample)")
        return web.json_response(server.tracer.to_json())

    app = web.Application(middlewares=[json_errors], client_max_size=1 << 20)
    app.add_routes([web.post(f"/admin/{n}", route(n, fn)) for n, fn in endpoints.items()])
    app.add_routes([web.get("/admin/ping", guarded(ping)),
                    web.get("/admin/trace", guarded(trace))])
    return app
