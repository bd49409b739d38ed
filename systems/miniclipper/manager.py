"""``LocalContainerManager``: Clipper on this machine, as OS processes instead of Docker.

``clipper_admin``'s container managers (``docker/docker_container_manager.py``,
``kubernetes/...``) start the query frontend, the management frontend and Redis as
containers, and model containers on ``deploy_model``. Ours starts one process,
``python -m systems.miniclipper.frontend`` (query REST, management REST and gRPC query
API in one asyncio loop), and that process starts and supervises the model containers
itself (:mod:`.supervisor`), so they outlive the admin client that asked for them.

``detach=True`` leaves the Clipper process running after this Python process exits (what
``casebook clipper start`` does); ``stop_all`` on any manager connected to those ports
asks it to shut down through the management API.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from common.net import address, check_host
from common.procs import ProcessGroup

from .admin import ClipperException, http_json


class LocalContainerManager:
    """Starts, finds and stops a Clipper process on loopback."""

    def __init__(self, host: str = "127.0.0.1", query_port: int = 1337,
                 mgmt_port: int = 1338, grpc_port: int = 1339, store: str | None = None,
                 log_dir: str | Path | None = None, detach: bool = False):
        self.host, self.store, self.detach = host, store, detach
        self.ports = {"query_port": query_port, "mgmt_port": mgmt_port,
                      "grpc_port": grpc_port}
        self.group = ProcessGroup(log_dir)
        self.info: dict[str, Any] = {}
        self.cluster_identifier = "local"

    def start_clipper(self, query_port: int = 1337, mgmt_port: int = 1338,
                      grpc_port: int = 1339, cache_size: int = 32 << 20,
                      trace_sample: float = 0.0) -> dict[str, Any]:
        """Start the Clipper process; port 0 lets the OS choose (read them from
        :meth:`get_query_addr` and friends afterwards)."""
        args = ["--host", self.host, "--query-port", str(query_port), "--mgmt-port",
                str(mgmt_port), "--grpc-port", str(grpc_port), "--cache-bytes",
                str(cache_size), "--trace-sample", str(trace_sample),
                "--log-dir", str(self.group.log_dir)]
        if self.store:
            args += ["--store", self.store]
        check_host(self.host, "host")  # one line here, not the child's traceback
        given = {"query_port": query_port, "mgmt_port": mgmt_port, "grpc_port": grpc_port}
        for a, b in itertools.combinations(given, 2):
            if given[a] and given[a] == given[b]:  # the child would blame a running Clipper
                raise ValueError(f"{a} and {b} are both {given[a]}: give three different "
                                 f"ports (or 0, for one the OS chooses)")
        try:
            child = self.group.spawn("clipper", "systems.miniclipper.frontend", args,
                                     ready_timeout=60, exit_with_parent=not self.detach)
        except RuntimeError as e:  # say the usual cause in one line; the log has the rest
            self.group.keep_logs()  # the log named here must outlive the group
            if "address already in use" in str(e).lower():
                raise RuntimeError("Clipper did not start: a port is already in use (is a "
                                   "Clipper running? casebook clipper stop); its log: "
                                   f"{self.group.log_dir}/clipper.log") from None
            raise
        self.info = dict(child.info, log=str(child.log_path))
        self.ports = {k: child.info[k] for k in self.ports}
        if self.detach:  # forget the child, so leaving this process does not stop it
            self.group.detach("clipper")
        return self.info

    def connect(self) -> None:
        """Check that a Clipper answers on the configured management port."""
        http_json(f"http://{self.get_admin_addr()}/admin/ping", method="GET", timeout=5)

    def get_query_addr(self) -> str:
        return address(self.host, self.ports["query_port"])

    def get_admin_addr(self) -> str:
        return address(self.host, self.ports["mgmt_port"])

    def get_grpc_addr(self) -> str:
        return address(self.host, self.ports["grpc_port"])

    def stop_all(self, graceful: bool = True) -> None:
        """Shut Clipper down (it stops its containers first), then reap the process.
        ``graceful=False`` skips the wait for the one we started; a Clipper we only
        connected to is asked to shut down either way (Clipper's forced stop is the
        harder one: it used to leave it running and say nothing)."""
        child = self.group.children.get("clipper")
        if graceful or child is None:
            try:
                http_json(f"http://{self.get_admin_addr()}/admin/shutdown", timeout=5)
            except ClipperException:
                pass  # already gone, or unreachable: the signal below still stops ours
            deadline = time.monotonic() + 10
            while child is not None and child.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.group.stop_all()
