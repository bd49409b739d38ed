"""The management REST API: what ``clipper_admin`` calls to change a running Clipper.

Clipper's management frontend (``src/management/src/management_frontend.hpp``) takes
JSON ``POST``s under ``/admin/``: ``add_app``, ``add_model``, ``add_model_links``,
``set_model_version``, ``get_all_applications``, ``get_all_models``,
``get_all_containers``, ... and writes the result to Redis, where the query frontend
picks it up. Ours runs in the same process as the query frontend, so it changes the
query processor and the supervisor directly (no Redis), one operation at a time.

Security, as the issue asks: the API binds loopback by default, and it never accepts
model bytes. ``add_model`` takes a ``model_data_path`` on the server's own disk, written
by a deployer (:mod:`.deployers`); the supervisor copies that directory into its store and
containers load only from the store. Every endpoint accepts exactly its documented
fields, so a stray ``"model_bytes"`` or ``"pickle"`` field is a 400, not ignored.
Names are DNS-1123 labels (``clipper_admin`` checks model names and versions against the
same pattern; we apply it, with the 63-character limit, to every name), which also keeps
them safe as URL and path components.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from common import rpc
from common.wire import pack, unpack

from .batching import BatchingConfig
from .container import SERVICE
from .datatypes import INPUT_DTYPES, InputError, loads_strict, same_input_type
from .frontend import ClipperServer, error_json, json_errors
from .query_processor import Application, UnknownApp
from .selection import POLICIES, make_policy

log = logging.getLogger("miniclipper.management")

NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")  # at most 63 characters
MAX_SLO_MICROS = 3600 * 10**6  # an hour: more is no latency objective (and 10**400 overflows)
MAX_INPUT_LENGTH = 1 << 26  # 64M numbers (256 MB of float32) per input: more is a typo
MAX_SLOWDOWN = 1000.0  # container_control: a slow-down factor past this is a hang


class BadRequest(ValueError):
    """A management request that does not fit its endpoint (HTTP 400)."""


def _fields(doc: Any, required: dict[str, type | tuple], optional: dict[str, type | tuple],
            where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise BadRequest(f"{where} takes a JSON object, got {type(doc).__name__}")
    unknown = set(doc) - set(required) - set(optional)
    if unknown:
        raise BadRequest(f"{where}: unexpected field(s) {sorted(unknown)}; it accepts "
                         f"{sorted(required)} and optionally {sorted(optional)} (models are "
                         f"deployed from a path on the server's disk, never as bytes)")
    for k, kind in {**required, **optional}.items():
        if k not in doc:
            if k in required:
                raise BadRequest(f"{where}: missing field {k!r}")
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        v = doc[k]
        if object not in kinds and (not isinstance(v, kinds)
                                    or isinstance(v, bool) and bool not in kinds):
            raise BadRequest(f"{where}: field {k!r} should be "
                             f"{' or '.join(t.__name__ for t in kinds)}, got {type(v).__name__}")
    return doc


def _name(value: str, what: str) -> str:
    if not NAME.match(value):
        raise BadRequest(f"{what} {value[:70]!r} must be a DNS-1123 label: at most 63 "
                         f"lower-case letters, digits and '-', starting and ending with a "
                         f"letter or digit")
    return value


class ReplicaFailure(RuntimeError):
    """A management operation that left the model with fewer replicas than asked."""


def _host_name(host: str) -> str:
    """The name in a Host header: ``name:port``, ``name``, ``[v6]:port``."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cross_site(request: web.Request, bind_host: str) -> tuple[int, str] | None:
    """(status, why) if a management call must be refused, else None. Binding loopback
    does not stop a web page in the user's own browser from POSTing here; a browser can
    send ``text/plain`` across sites without asking, but not ``application/json`` (that
    needs a CORS preflight, which we never answer), and it always names the Origin.

    Comparing the Origin with the Host is not enough by itself: a page's own domain
    can be re-bound to 127.0.0.1 (DNS rebinding), and then Origin and Host agree. So
    the Host must name this server the way no web page's domain can: an IP address,
    ``localhost``, or the name it was started with (``--host``)."""
    name = _host_name(request.host or "")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if name not in ("localhost", bind_host):
            return 403, (f"management call addressed to Host {request.host!r}; address "
                         f"this server by IP, as localhost or as {bind_host!r} (a web "
                         f"page's domain can be re-bound to this machine)")
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://")[-1] != request.host:
        return 403, f"cross-origin management call from Origin {origin!r}"
    if request.content_length and request.content_type != "application/json":
        return 415, (f"management calls take Content-Type application/json, got "
                     f"{request.content_type!r}")
    return None


def management_app(server: ClipperServer, bind_host: str = rpc.LOOPBACK) -> web.Application:
    qp, ex, sup = server.qp, server.executor, server.supervisor

    def model_of(doc: dict[str, Any]) -> tuple[str, str]:
        name = doc["model_name"]
        given = doc.get("model_version")  # version 0 is a version, not "unset"
        version = str(given if given is not None else qp.current_version.get(name, ""))
        if (name, version) not in server.models:
            raise KeyError(f"no model {name}:{version or '?'}; deployed: "
                           f"{sorted(f'{n}:{v}' for n, v in server.models)}")
        return name, version

    async def add_app(doc: dict[str, Any]) -> Any:
        d = _fields(doc, {"name": str, "input_type": str, "latency_slo_micros": int,
                          "default_output": object},
                    {"selection_policy": str, "input_length": int}, "add_app")
        name = _name(d["name"], "application name")
        if name in qp.apps:
            raise BadRequest(f"application {name!r} already exists")
        if d["input_type"] not in INPUT_DTYPES:
            raise BadRequest(f"input_type must be one of {sorted(INPUT_DTYPES)}")
        if d.get("selection_policy", "exp3") not in POLICIES:
            raise BadRequest(f"selection_policy must be one of {sorted(POLICIES)}")
        if not 0 < d["latency_slo_micros"] <= MAX_SLO_MICROS:
            raise BadRequest(f"latency_slo_micros must be in 1..{MAX_SLO_MICROS} "
                             f"(one hour), got {d['latency_slo_micros']}")
        if not 0 < d.get("input_length", 1) <= MAX_INPUT_LENGTH:
            raise BadRequest(f"input_length must be in 1..{MAX_INPUT_LENGTH} (or left out: "
                             f"any length), got {d.get('input_length')}")
        policy = d.get("selection_policy", "exp3")
        qp.apps[name] = Application(name, d["input_type"], d["default_output"],
                                    d["latency_slo_micros"], policy, d.get("input_length"),
                                    state=make_policy(policy).init_state([]))
        return {"ok": True}

    async def delete_app(doc: dict[str, Any]) -> Any:
        qp.app(_fields(doc, {"name": str}, {}, "delete_app")["name"])
        del qp.apps[doc["name"]]
        qp.counts.pop(doc["name"], None)  # a new app of that name starts its own ratio
        server.metrics.forget_app(doc["name"])  # no series outlives its app
        return {"ok": True}

    async def add_model(doc: dict[str, Any]) -> Any:
        d = _fields(doc, {"model_name": str, "model_version": (str, int), "input_type": str,
                          "model_data_path": str},
                    {"num_replicas": int, "batch_size": int, "batching": dict,
                     "max_queue": int, "labels": list}, "add_model")
        name, version = _name(d["model_name"], "model name"), str(d["model_version"])
        _name(version, "model version")
        if d["input_type"] not in INPUT_DTYPES:
            raise BadRequest(f"input_type must be one of {sorted(INPUT_DTYPES)}")
        for app in qp.apps.values():  # a new version must take what linked apps send
            if name in app.models and not same_input_type(d["input_type"], app.input_type):
                raise BadRequest(f"model {name!r} is linked to application {app.name!r}, "
                                 f"which sends {app.input_type!r}, not {d['input_type']!r}")
        bs = d.get("batch_size", -1)
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
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            raise BadRequest(str(e)) from None
        model = (name, version)
        ex.add_model(model, d["input_type"], batching, d.get("max_queue", 1024))
        server.models[model] = {"model_name": name, "model_version": version,
                                "input_type": d["input_type"], "labels": d.get("labels", []),
                                "batching": batching.to_dict(), "path": str(path),
                                "max_queue": d.get("max_queue", 1024)}
        try:
            await sup.set_num_replicas(model, n)
        except RuntimeError as e:  # the container died while loading the model
            await sup.set_num_replicas(model, 0)
            del server.models[model]
            ex.remove_model(model)
            await asyncio.to_thread(shutil.rmtree, path, True)
            raise BadRequest(f"model {name}:{version} failed to start: {e}") from None
        qp.current_version[name] = version
        return {"ok": True, "model": f"{name}:{version}", "replicas": n}

    async def add_model_links(doc: dict[str, Any]) -> Any:
        d = _fields(doc, {"app_name": str, "model_names": list}, {}, "add_model_links")
        app = qp.app(d["app_name"])
        if not all(isinstance(m, str) for m in d["model_names"]):
            raise BadRequest(f"add_model_links: model_names must be a list of strings, got "
                             f"{d['model_names']!r:.80}")
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

    async def set_model_version(doc: dict[str, Any]) -> Any:
        d = _fields(doc, {"model_name": str, "model_version": (str, int)}, {},
                    "set_model_version")
        model = model_of(d)
        qp.current_version[model[0]] = model[1]
        return {"ok": True, "model": f"{model[0]}:{model[1]}"}

    async def set_num_replicas(doc: dict[str, Any]) -> Any:
        d = _fields(doc, {"model_name": str, "num_replicas": int}, {"model_version": (str, int)},
                    "set_num_replicas")
        if not 0 <= d["num_replicas"] <= 64:
            raise BadRequest("num_replicas must be 0..64")
        model = model_of(d)
        try:
            await sup.set_num_replicas(model, d["num_replicas"])
        except (RuntimeError, OSError) as e:  # a new replica died while loading the model
            raise ReplicaFailure(f"{model[0]}:{model[1]}: a replica failed to start ({e}); "
                                 f"{len(sup.replicas_of(model))} replicas run now") from None
        return {"ok": True, "replicas": len(sup.replicas_of(model))}

    async def set_batching(doc: dict[str, Any]) -> Any:
        d = _fields(doc, {"model_name": str, "batching": dict}, {"model_version": (str, int)},
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
        verbose = _fields(doc or {}, {}, {"verbose": bool}, "get_all_applications")
        if verbose.get("verbose"):
            return [a.describe() for a in qp.apps.values()]
        return sorted(qp.apps)

    async def get_application(doc: dict[str, Any]) -> Any:
        return qp.app(_fields(doc, {"name": str}, {}, "get_application")["name"]).describe()

    def describe_model(model: tuple[str, str]) -> dict[str, Any]:
        return {**server.models[model], "is_current_version":
                qp.current_version.get(model[0]) == model[1],
                "replicas": len(sup.replicas_of(model)), "restarts": sup.restarts.get(model, 0),
                "abandoned_replicas": {str(r): why for r, why in
                                       sup.abandoned.get(model, {}).items()},
                "queue_length": len(ex.queues[model])}

    async def get_all_models(doc: dict[str, Any]) -> Any:
        verbose = _fields(doc or {}, {}, {"verbose": bool}, "get_all_models")
        if verbose.get("verbose"):
            return [describe_model(m) for m in server.models]
        return sorted(f"{n}:{v}" for n, v in server.models)

    async def get_model(doc: dict[str, Any]) -> Any:
        return describe_model(model_of(_fields(doc, {"model_name": str},
                                               {"model_version": (str, int)}, "get_model")))

    async def container_rpc(address: str, method: str, meta: dict[str, Any]) -> dict[str, Any]:
        async with rpc.aio_channel(address) as ch:
            reply = await rpc.method(ch, SERVICE, method)(pack(meta), timeout=5)
        return unpack(reply)[0]

    async def get_all_containers(doc: dict[str, Any]) -> Any:
        d = _fields(doc or {}, {}, {"verbose": bool}, "get_all_containers")
        out = []
        for model, reps in ex.replicas.items():
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
        d = _fields(doc, {"model_name": str, "slowdown": (int, float)},
                    {"model_version": (str, int)}, "container_control")
        if not 1 <= d["slowdown"] <= MAX_SLOWDOWN:
            raise BadRequest(f"slowdown is how many times slower the container runs, "
                             f"1..{MAX_SLOWDOWN:g}; got {d['slowdown']}")
        model = model_of(d)
        return [await container_rpc(rep.address, "Control", {"slowdown": d["slowdown"]})
                for rep in ex.replicas[model].values()]

    async def get_batch_log(doc: dict[str, Any]) -> Any:
        d = _fields(doc, {"model_name": str}, {"model_version": (str, int), "since": (int, float)},
                    "get_batch_log")
        model = model_of(d)
        since = d.get("since", 0.0)
        keys = ("t", "batch_size", "latency_s", "limit", "replica")
        return [dict(zip(keys, row, strict=True)) for row in ex.batch_log[model]
                if row[0] >= since]

    async def shutdown(doc: dict[str, Any]) -> Any:
        if doc is not None:  # a body, if any, must be the empty object
            _fields(doc, {}, {}, "shutdown")
        asyncio.get_running_loop().call_later(0.05, server.stopping.set)
        return {"ok": True}

    endpoints: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "add_app": add_app, "delete_app": delete_app, "add_model": add_model,
        "add_model_links": add_model_links, "set_model_version": set_model_version,
        "set_num_replicas": set_num_replicas, "set_batching": set_batching,
        "get_all_applications": get_all_applications, "get_application": get_application,
        "get_all_models": get_all_models, "get_model": get_model,
        "get_all_containers": get_all_containers, "container_control": container_control,
        "get_batch_log": get_batch_log, "shutdown": shutdown}

    def route(name: str, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        async def handler(request: web.Request) -> web.Response:
            refused = _cross_site(request, bind_host)
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
                    return web.json_response(await fn(doc))
            except BadRequest as e:
                return error_json(400, "Bad request", str(e))
            except (KeyError, UnknownApp) as e:
                return error_json(404, "Not found", e.args[0] if e.args else str(e))
            except ReplicaFailure as e:
                return error_json(500, "Replica failure", str(e))
            except Exception as e:  # noqa: BLE001 - a bug here must not become a bare 500
                log.exception("/admin/%s failed", name)
                return error_json(500, "Internal error", f"/admin/{name}: "
                                                         f"{type(e).__name__}: {e}")
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
    app.add_routes([web.get("/admin/ping", ping), web.get("/admin/trace", trace)])
    return app
