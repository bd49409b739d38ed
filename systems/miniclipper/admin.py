"""``ClipperConnection``: the admin client, mirroring ``clipper_admin.ClipperConnection``.

Clipper's quickstart, unchanged in spirit::

    conn = ClipperConnection(LocalContainerManager())
    conn.start_clipper()
    conn.register_application("hello", "doubles", "-1.0", 100000)
    deploy_python_closure(conn, "sum-model", 1, "doubles", lambda xs: [sum(x) for x in xs])
    conn.link_model_to_app("hello", "sum-model")
    # POST http://127.0.0.1:1337/hello/predict {"input": [1.1, 2.2, 3.3]}
    conn.stop_all()

Each method is a JSON ``POST`` to the management API (``clipper_admin.py`` does the same
with ``requests``; we use the standard library's ``urllib``), and a non-200 answer
raises :class:`ClipperException` carrying the server's ``{"error", "cause"}``.
"""

from __future__ import annotations

import http.client
import json
import numbers
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .batching import BatchingConfig


class ClipperException(RuntimeError):
    """A management or query call that Clipper refused; ``status`` is the HTTP code."""

    def __init__(self, msg: str, status: int = 0):
        super().__init__(msg)
        self.status = status


class UnconnectedException(ClipperException):
    def __init__(self) -> None:
        super().__init__("not connected: call start_clipper() or connect() first")


def http_json(url: str, doc: Any = None, method: str = "POST", timeout: float = 120.0) -> Any:
    """POST ``doc`` as JSON (or GET) and return the decoded answer; raise
    :class:`ClipperException` with the server's error body on any non-2xx status."""
    data = None if method == "GET" else json.dumps(doc if doc is not None else {}).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        raise ClipperException(f"{method} {url} -> {e.code}: {e.read().decode(errors='replace')}",
                               e.code) from None
    except urllib.error.URLError as e:
        hint = ("; nothing listens there: is Clipper running on these ports? (start_clipper(), "
                "or `casebook clipper start`)" if isinstance(e.reason, ConnectionRefusedError)
                else "")
        raise ClipperException(f"{method} {url}: {e.reason}{hint}") from None
    except TimeoutError:  # a read that timed out is not a URLError
        raise ClipperException(f"{method} {url}: no answer in {timeout:g} s") from None
    except (http.client.HTTPException, ConnectionError) as e:  # e.g. a gRPC port
        raise ClipperException(f"{method} {url}: the service on that port does not answer "
                               f"HTTP ({type(e).__name__}); is it Clipper's gRPC port? "
                               f"(the REST ports are --query-port and --mgmt-port)") from None
    ctype = r.headers.get("Content-Type", "")
    return json.loads(body) if "json" in ctype else body.decode()


class ClipperConnection:
    """Administer a Clipper through its container manager and management API."""

    def __init__(self, container_manager: Any):
        self.cm = container_manager
        self.connected = False

    def start_clipper(self, query_port: int | None = None, mgmt_port: int | None = None,
                      grpc_port: int | None = None, cache_size: int = 32 << 20,
                      trace_sample: float = 0.0) -> None:
        """Start the Clipper process (query + management frontends) and connect. Ports
        left out are the container manager's (``LocalContainerManager(query_port=...)``,
        1337/1338/1339 by default), as in ``clipper_admin`` where the manager owns them."""
        ports = self.cm.ports
        self.cm.start_clipper(ports["query_port"] if query_port is None else query_port,
                              ports["mgmt_port"] if mgmt_port is None else mgmt_port,
                              ports["grpc_port"] if grpc_port is None else grpc_port,
                              cache_size, trace_sample)
        self.connected = True

    def connect(self) -> None:
        """Connect to a running Clipper (the manager knows its ports)."""
        self.cm.connect()
        self.connected = True

    def _admin(self, endpoint: str, doc: Any = None) -> Any:
        if not self.connected:
            raise UnconnectedException()
        return http_json(f"http://{self.cm.get_admin_addr()}/admin/{endpoint}", doc)

    def register_application(self, name: str, input_type: str, default_output: Any,
                             slo_micros: int, *, selection_policy: str = "exp3",
                             input_length: int | None = None) -> None:
        """A new REST endpoint ``/<name>/predict`` (Clipper's four arguments, plus the
        selection policy, "default", "exp3" or "exp4", and an optional fixed input
        length)."""
        # a whole number goes as an int (numpy's too); anything else as given, for the
        # API to refuse by name (int() made True a 1 us SLO, and 2.9 one of 2 us)
        slo = int(slo_micros) if isinstance(slo_micros, numbers.Integral) and \
            not isinstance(slo_micros, bool) else slo_micros
        doc = {"name": name, "input_type": input_type, "default_output": default_output,
               "latency_slo_micros": slo, "selection_policy": selection_policy}
        if input_length is not None:
            doc["input_length"] = input_length
        self._admin("add_app", doc)

    def unregister_application(self, name: str) -> None:
        self._admin("delete_app", {"name": name})

    def deploy_model(self, name: str, version: str | int, input_type: str,
                     model_data_path: str | Path, labels: list[str] | None = None,
                     num_replicas: int = 1, batch_size: int = -1, *,
                     batching: BatchingConfig | dict | None = None,
                     max_queue: int = 1024) -> None:
        """Deploy the model directory at ``model_data_path`` (written by a deployer) as
        ``name:version`` with ``num_replicas`` containers; it becomes the current version.
        The positional order is Clipper's (``image``, then ``labels``, ``num_replicas``,
        ``batch_size``), with a directory where Clipper names a Docker image.
        ``batch_size=-1`` means adaptive, as in Clipper (ours defaults to AIMD; the C++
        Clipper sizes batches from the earliest deadline with a fitted latency model,
        ``containers.cpp`` ``get_batch_size``); ``batching`` picks any controller
        explicitly."""
        doc: dict[str, Any] = {"model_name": name, "model_version": str(version),
                               "input_type": input_type,
                               "model_data_path": str(Path(model_data_path).resolve()),
                               "num_replicas": num_replicas, "batch_size": batch_size,
                               "max_queue": max_queue, "labels": labels or []}
        if batching is not None:
            doc["batching"] = batching.to_dict() if isinstance(batching, BatchingConfig) \
                else batching
        self._admin("add_model", doc)

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        self._admin("add_model_links", {"app_name": app_name, "model_names": [model_name]})

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        """Stop routing the app's queries to the model (its selection state forgets it)."""
        self._admin("delete_model_links", {"app_name": app_name, "model_names": [model_name]})

    def get_linked_models(self, app_name: str) -> list[str]:
        """The names linked to the application ([] for no application, as Clipper)."""
        return self._or_none("get_linked_models", {"app_name": app_name}) or []

    def set_model_version(self, name: str, version: str | int,
                          num_replicas: int | None = None) -> None:
        """Roll back or forward to an already deployed version."""
        self._admin("set_model_version", {"model_name": name, "model_version": str(version)})
        if num_replicas is not None:
            self.set_num_replicas(name, num_replicas, version)

    def set_num_replicas(self, name: str, num_replicas: int,
                         version: str | int | None = None) -> None:
        doc: dict[str, Any] = {"model_name": name, "num_replicas": num_replicas}
        if version is not None:
            doc["model_version"] = str(version)
        self._admin("set_num_replicas", doc)

    def get_num_replicas(self, name: str, version: str | int | None = None) -> int:
        """Replicas running now, of ``version`` or of the current version."""
        doc: dict[str, Any] = {"model_name": name}
        if version is not None:
            doc["model_version"] = str(version)
        return self._admin("get_model", doc)["replicas"]

    def stop_versioned_models(self, model_versions_dict: dict[str, list[str | int]]) -> None:
        """Stop these versions' containers and delete the versions (``{name: [versions]}``).
        As in Clipper, this stops a current version too: its apps then answer with their
        default output until ``set_model_version`` picks another."""
        for name, versions in model_versions_dict.items():
            if isinstance(versions, (str, int)):
                raise TypeError(f"stop_versioned_models takes {{name: [versions]}}; the "
                                f"versions of {name!r} are {versions!r}, not a list")
            for v in versions:
                self._admin("delete_versioned_model",
                            {"model_name": name, "model_version": str(v)})

    def stop_models(self, model_names: list[str]) -> None:
        """Stop every version of each named model."""
        self.stop_versioned_models(self._versions_of(model_names, inactive_only=False))

    def stop_inactive_model_versions(self, model_names: list[str]) -> None:
        """Stop every version but the current one of each named model (after a rollout)."""
        self.stop_versioned_models(self._versions_of(model_names, inactive_only=True))

    def stop_all_model_containers(self) -> None:
        """Stop every version of every model; Clipper itself keeps running."""
        names = sorted({m["model_name"] for m in self.get_all_models(verbose=True)})
        self.stop_models(names)

    def _versions_of(self, model_names: list[str], inactive_only: bool) -> dict[str, list]:
        if isinstance(model_names, str):  # "abc" would read as the names "a", "b", "c"
            raise TypeError(f"model_names is a list of model names, got the string "
                            f"{model_names!r}; write [{model_names!r}]")
        deployed = self.get_all_models(verbose=True)
        unknown = sorted(set(model_names) - {m["model_name"] for m in deployed})
        if unknown:  # (Clipper skips them without a word: a typo would stop nothing)
            raise ClipperException(f"no deployed model named {unknown}", 404)
        out: dict[str, list] = {}
        for m in deployed:
            if m["model_name"] in model_names and not (inactive_only and
                                                       m["is_current_version"]):
                out.setdefault(m["model_name"], []).append(m["model_version"])
        return out

    def set_batching(self, name: str, batching: BatchingConfig | dict,
                     version: str | int | None = None) -> None:
        """Change a model's batch-size controller while it serves (our extension)."""
        doc: dict[str, Any] = {"model_name": name, "batching": batching.to_dict()
                               if isinstance(batching, BatchingConfig) else batching}
        if version is not None:
            doc["model_version"] = str(version)
        self._admin("set_batching", doc)

    def get_all_apps(self, verbose: bool = False) -> list:
        return self._admin("get_all_applications", {"verbose": verbose})

    def _or_none(self, endpoint: str, doc: dict) -> Any:
        """clipper_admin's lookups answer None for a name nobody registered (its REST
        API answers ``{}``; ours a 404 with the reason, which the admin call turns back
        into None), so code such as ``if get_app_info(a) is None: register...`` runs."""
        try:
            return self._admin(endpoint, doc)
        except ClipperException as e:
            if e.status == 404:
                return None
            raise

    def get_app_info(self, name: str) -> dict[str, Any] | None:
        """The application's registration, or None if no application has that name."""
        return self._or_none("get_application", {"name": name})

    def get_all_models(self, verbose: bool = False) -> list:
        return self._admin("get_all_models", {"verbose": verbose})

    def get_model_info(self, name: str, version: str | int) -> dict[str, Any] | None:
        """The model version's deployment, or None if it was never deployed."""
        return self._or_none("get_model", {"model_name": name,
                                           "model_version": str(version)})

    def get_current_model_version(self, name: str) -> str:
        return self._admin("get_model", {"model_name": name})["model_version"]

    def get_all_model_replicas(self, verbose: bool = False) -> list[dict[str, Any]]:
        return self._admin("get_all_containers", {"verbose": verbose})

    def get_query_addr(self) -> str:
        return self.cm.get_query_addr()

    def get_metrics(self) -> str:
        """The Prometheus text of ``GET /metrics`` (Clipper's ``inspect_instance`` reads the
        same endpoint, which there returns JSON; its Prometheus text comes from the
        frontend-exporter)."""
        return http_json(f"http://{self.cm.get_query_addr()}/metrics", method="GET")

    def get_trace(self, path: str | Path) -> Path:
        """Save the Chrome trace of the sampled queries to ``path``."""
        doc = http_json(f"http://{self.cm.get_admin_addr()}/admin/trace", method="GET")
        path = Path(path)
        path.write_text(json.dumps(doc))
        return path

    def predict(self, app: str, x: Any = None, batch: list | None = None) -> Any:
        """Convenience (not in clipper_admin): one REST query, or a batch."""
        doc = {"input_batch": batch} if batch is not None else {"input": x}
        return http_json(f"http://{self.cm.get_query_addr()}/{app}/predict", doc)

    def stop_all(self, graceful: bool = True) -> None:
        """Stop the Clipper process and every model container it started."""
        self.cm.stop_all(graceful)
        self.connected = False
