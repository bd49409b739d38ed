"""Replica supervision inside the Clipper process: the model store, spawn, watch, restart.

In Clipper the container manager
(``clipper_admin/clipper_admin/docker/docker_container_manager.py``) starts model
containers; it sets no Docker restart policy, so a dead container stays dead (only the
Kubernetes manager's Deployments restart pods). The query frontend learns of a
container when it connects to its RPC port (``src/libclipper/src/rpc_service.cpp``). Here
the supervisor lives in the frontend process, so it outlives the admin client that asked
for the replicas, and it plays both parts:

* **the model store**: a deployed model directory is *copied* from the path the admin
  named into ``<store>/<name>/<version>/``; containers load only from there (see
  :func:`.container.model_dir_in_store`), so what runs is what the manager wrote, and
  changing the source directory afterwards changes nothing;
* **spawn**: each replica is ``python -m systems.miniclipper.container`` started with
  :class:`common.procs.ProcessGroup` (exec, never fork; READY line with its port);
* **watch and restart**: a replica whose process has exited, or whose RPC failed (the
  task executor reports it), is stopped, started again, and reconnected; its in-flight
  queries were already put back in the queue by the executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import weakref
from pathlib import Path

from common.procs import Child, ProcessGroup, hold_lock
from common.rpc import background

from .deployers import MODEL_META
from .metrics import Metrics
from .task_executor import Replica, TaskExecutor

log = logging.getLogger("miniclipper.supervisor")
# A replica that dies is restarted; one that then fails to start is retried with a
# doubling back-off (0.5 s, 1 s, ... 8 s) and given up after RESTART_ATTEMPTS, after
# which get_model reports it and, if it was the last, queries get a default saying why.
# (Kubernetes, under Clipper's Kubernetes manager, restarts crashed pods with a doubling
# back-off too; Clipper's Docker manager does not restart containers at all.)
RESTART_ATTEMPTS = int(os.environ.get("CLIPPER_RESTART_ATTEMPTS", "5"))
RESTART_BACKOFF_S = float(os.environ.get("CLIPPER_RESTART_BACKOFF_S", "0.5"))


def _check_tree(src: Path, store: Path) -> None:
    """Refuse a model directory holding anything but plain files and folders: a link is
    followed out of the directory (to ~/.ssh, or to /dev/zero, read for ever under the
    management lock, with the disk filling), and a directory that holds the store would be
    copied into itself."""
    if store.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"{src} holds the model store {store}: give a model directory of "
                         f"its own")
    for root, dirs, files in os.walk(src):
        for entry in dirs + files:
            p = Path(root, entry)
            mode = p.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                what = "a symbolic link" if stat.S_ISLNK(mode) else "not a plain file"
                raise ValueError(f"{p} is {what}: a model directory holds plain files "
                                 f"and folders only")


class ReplicaSupervisor:
    """The model containers of one Clipper process."""

    def __init__(self, store: str | Path, executor: TaskExecutor, metrics: Metrics,
                 log_dir: str | Path | None = None, poll_s: float = 0.1):
        self.store = Path(store).resolve()
        self.store.mkdir(parents=True, exist_ok=True)
        try:  # one frontend per store: install replaces copies no live frontend serves
            self._unlock = weakref.finalize(self, os.close, hold_lock(self.store))
        except BlockingIOError:
            raise ValueError(f"model store {self.store} is in use by another running "
                             f"frontend; give each its own --store") from None
        self.executor, self.metrics, self.poll_s = executor, metrics, poll_s
        self.group = ProcessGroup(log_dir)
        self.children: dict[tuple[str, str], dict[int, Child]] = {}
        self.restarts: dict[tuple[str, str], int] = {}
        self.abandoned: dict[tuple[str, str], dict[int, str]] = {}  # replica -> why
        self._busy: set[tuple[tuple[str, str], int]] = set()
        self.wanted: dict[tuple[str, str], int] = {}  # the replica count last asked for
        self._generation = 0
        self._watch: asyncio.Task | None = None
        self._wake: dict[tuple[str, str], asyncio.Event] = {}  # retire: end the back-off

    def install(self, name: str, version: str, source: str | Path) -> Path:
        """Copy a model directory into the store (refusing what is not one). The caller
        refuses a version it serves, and no other frontend runs on this store (the lock
        taken in ``__init__``): a copy already there is a leftover of an earlier frontend
        (killed, or stopped: a given store is kept), which nothing serves, and is replaced."""
        src = Path(source)
        if not src.is_absolute():
            raise ValueError(f"model_data_path must be an absolute path, got {str(source)!r}")
        if not (src / MODEL_META).is_file():
            raise FileNotFoundError(f"{src} is not a model directory (no {MODEL_META}); "
                                    f"write one with a deployer in systems.miniclipper")
        dst = self.store / name / version
        _check_tree(src, self.store)
        # copied beside its place and renamed into it: a copy that fails half way left a
        # directory that made name:version "already deployed" with no model behind it
        tmp, old = dst.with_name(f".{version}.partial"), dst.with_name(f".{version}.old")
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            shutil.copytree(src, tmp, symlinks=True)  # (none: _check_tree refused them)
            if dst.exists():  # a rename cannot replace a full directory: move it aside
                os.replace(dst, old)
            os.replace(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return dst

    def start(self) -> None:
        self._watch = asyncio.ensure_future(self._watch_loop())

    def replicas_of(self, model: tuple[str, str]) -> dict[int, Child]:
        return self.children.get(model, {})

    async def _spawn(self, model: tuple[str, str], rid: int) -> Child | None:
        """Start replica ``rid`` and give it to the executor; None if, by the time its
        model was loaded (seconds), the replica was scaled away (a restart racing a
        ``set_num_replicas``): it is stopped again instead of serving unasked."""
        self._generation += 1
        name = f"{model[0]}-{model[1]}-r{rid}-g{self._generation}"
        args = ["--store", str(self.store), "--model", f"{model[0]}/{model[1]}"]
        child = await asyncio.to_thread(self.group.spawn, name, "systems.miniclipper.container",
                                        args, ready_timeout=120)
        if rid >= self.wanted.get(model, 0) or rid in self.children.get(model, {}):
            # scaled away meanwhile, or another start of this replica (a scale-up racing a
            # restart) got there first: one process per replica, never an unsupervised one
            await asyncio.to_thread(self.group.stop, child.name, 2.0)
            self.group.forget(child.name)
            return None
        self.children.setdefault(model, {})[rid] = child
        self.abandoned.get(model, {}).pop(rid, None)  # running again, however it started
        self.executor.add_replica(model, rid, f"127.0.0.1:{child.info['port']}", child.pid)
        self._count(model)
        return child

    def _count(self, model: tuple[str, str]) -> None:
        """The live-replicas gauge, after every change to ``children`` (a start, a stop,
        a death being restarted, a replica given up)."""
        self.metrics.replicas.labels(f"{model[0]}:{model[1]}").set(
            len(self.children.get(model, {})))

    async def set_num_replicas(self, model: tuple[str, str], n: int) -> None:
        """Start or stop replicas until ``n`` run (new ones start concurrently)."""
        self.wanted[model] = n
        have = self.children.setdefault(model, {})
        new = [rid for rid in range(n) if rid not in have]
        started = await asyncio.gather(*(self._spawn(model, rid) for rid in new),
                                       return_exceptions=True)
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            raise failed[0]
        # re-read after each stop: a replica that died meanwhile was taken out by its
        # restart (which then starts nothing, as it is no longer wanted); a list made
        # once made its _stop fail and left every replica after it running
        while extra := [r for r in self.children.get(model, {}) if r >= n]:
            await self._stop(model, extra[0])
        self._count(model)

    async def retire(self, model: tuple[str, str]) -> None:
        """Stop every replica of a model version for good and delete its copy in the store
        (Clipper's ``stop_versioned_models``: the container manager stops the version's
        containers, then the management frontend marks it deleted). A restart in flight
        finds no replica wanted and starts nothing."""
        await self.set_num_replicas(model, 0)
        self._wake.setdefault(model, asyncio.Event()).set()  # a restart in flight: wake it
        while any(m == model for m, _ in self._busy):        # to see no replica is wanted
            await asyncio.sleep(0.02)
        self._wake.pop(model, None)
        for table in (self.children, self.wanted, self.restarts, self.abandoned):
            table.pop(model, None)
        await asyncio.to_thread(shutil.rmtree, self.store / model[0] / model[1], True)
        with contextlib.suppress(OSError):  # the model's folder, once its last version went
            (self.store / model[0]).rmdir()

    async def _stop(self, model: tuple[str, str], rid: int) -> None:
        child = self.children.get(model, {}).pop(rid, None)
        if child is None:  # gone meanwhile (its restart took it out)
            return
        self._count(model)
        await self.executor.remove_replica(model, rid)
        await asyncio.to_thread(self.group.stop, child.name, 2.0)
        self.group.forget(child.name)

    def on_replica_failure(self, rep: Replica, reason: str) -> None:
        """The executor's callback: the replica's RPC failed; restart it."""
        background(self.restart(rep.model, rep.replica_id, reason))

    async def restart(self, model: tuple[str, str], rid: int, reason: str) -> None:
        if (model, rid) in self._busy or rid not in self.children.get(model, {}):
            return
        self._busy.add((model, rid))
        try:
            old = self.children[model][rid]
            log.warning("restarting %s:%s replica %d (pid %d): %s", *model, rid, old.pid,
                        reason)
            await self.executor.remove_replica(model, rid)
            await asyncio.to_thread(self.group.stop, old.name, 1.0)
            self.group.forget(old.name)
            if self.children.get(model, {}).get(rid) is old:  # gone: the slot is free for
                del self.children[model][rid]                  # its heir
                self._count(model)
            self.restarts[model] = self.restarts.get(model, 0) + 1
            self.metrics.restarts.labels(f"{model[0]}:{model[1]}").inc()
            err: Exception | None = None
            for attempt in range(RESTART_ATTEMPTS):
                if rid >= self.wanted.get(model, 0):
                    return  # scaled away while we backed off: nothing to restart
                try:
                    await self._spawn(model, rid)
                    return
                except Exception as e:  # it died while starting (RuntimeError), or could
                    err = e           # not be started (OSError: no log folder, no file
                    # handles or processes left): back off and retry, and in the end give
                    # up and say so; an exception escaping here left the model with no
                    # replica, nothing abandoned and no reason given, for good
                    log.error("replica %s:%s/%d failed to start (%d): %s", *model, rid,
                              attempt, e)
                    await self._backoff(model, RESTART_BACKOFF_S * 2 ** attempt)
            self.children.get(model, {}).pop(rid, None)  # give up on it, and say so
            self._count(model)
            why = (f"model {model[0]}:{model[1]}: replica {rid} failed to start "
                   f"{RESTART_ATTEMPTS} times after it died ({reason}); last error: "
                   f"{str(err).splitlines()[0] if err else '?'}")
            self.abandoned.setdefault(model, {})[rid] = why
            log.error("giving up: %s", why)
            if not self.children.get(model):
                self.executor.no_replicas(model, f"{why}; no replica is running")
        finally:
            self._busy.discard((model, rid))

    async def _backoff(self, model: tuple[str, str], seconds: float) -> None:
        """Sleep before the next restart attempt, unless a stop of this model
        (:meth:`retire`) wakes it sooner: the stop waits for restarts in flight, and the
        restart, awake, sees that no replica is wanted."""
        nap = asyncio.ensure_future(asyncio.sleep(seconds))
        wake = asyncio.ensure_future(self._wake.setdefault(model, asyncio.Event()).wait())
        await asyncio.wait({nap, wake}, return_when=asyncio.FIRST_COMPLETED)
        nap.cancel()
        wake.cancel()

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            for model, reps in list(self.children.items()):
                for rid, child in list(reps.items()):
                    if not child.alive() and (model, rid) not in self._busy:
                        code = child.popen.poll()
                        background(self.restart(model, rid, f"process exited with {code}"))

    async def stop_all(self) -> None:
        if self._watch:
            self._watch.cancel()
        for model, reps in list(self.children.items()):
            for rid in list(reps):
                await self.executor.remove_replica(model, rid)
        await asyncio.to_thread(self.group.stop_all, 2.0)
        self.children.clear()
        self._unlock()  # the store is free for the next frontend, in this process too
