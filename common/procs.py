"""Start, watch and stop the OS processes of a multi-process system.

miniclipper's model containers and minips' scheduler, servers and workers are real
processes. They are started by exec of a fresh interpreter (``python -m module``), never
by ``fork`` of a process that already runs gRPC threads (a forked gRPC process inherits
locks held by threads that do not exist in the child; gRPC's docs warn against it).

Readiness protocol: a child prints one line ``READY {json}`` on standard output when it
is serving (with e.g. the port it bound), via :func:`announce_ready`. The parent waits
for that line, with a timeout, and fails with the tail of the child's log otherwise.
Each child gets its own process group (``start_new_session``), so stopping it also stops
anything it started; :class:`ProcessGroup` stops all its children on exit, even when a
test fails. A parent killed by SIGKILL runs no clean-up at all, so each child also
watches its parent (:func:`announce_ready`) and leaves when it is gone, unless it was
started to outlive it (``exit_with_parent=False``: ``casebook clipper start``).

Nothing grows with the number of children started: a child's stdout pipe is closed when
it ends, a supervisor that names each start anew drops stopped records (``forget``), and
a group is registered with ``atexit`` only while it has children to stop.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_PREFIX = "READY "
PARENT_ENV = "CASEBOOK_PARENT_PID"  # set by spawn: the child leaves when this pid is gone


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def exit_on_termination() -> None:
    """Make SIGTERM and SIGHUP exit through Python (``SystemExit``), so that context
    managers and ``atexit`` stop the children: by default these signals kill the
    interpreter on the spot, and children in their own sessions would live on (as with
    ``timeout 60 casebook ps launch``). Only where nobody installed a handler yet, and
    only from the main thread (the only one that may)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _terminated)


def announce_ready(**info: Any) -> None:
    """Called by a child once it serves: tells the parent it is up (and e.g. its port).
    A child of :meth:`ProcessGroup.spawn` also starts watching its parent here: a parent
    killed by SIGKILL (kill -9, the OOM killer) runs no clean-up, and the child, in its
    own session, would otherwise live on."""
    parent = os.environ.pop(PARENT_ENV, "")
    if parent.isdigit() and int(parent) == os.getppid():
        threading.Thread(target=_exit_with_parent, args=(int(parent),), daemon=True,
                         name="watch-parent").start()
    print(READY_PREFIX + json.dumps(info), flush=True)


def _exit_with_parent(parent: int, grace_s: float = 10.0) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # the child's own clean-up (its children too)
    time.sleep(grace_s)
    os._exit(1)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False  # by ProcessGroup.stop (a child that exits by itself is not)
    draining: bool = False  # a thread reads its stdout, and closes it at EOF
    reading: bool = False  # wait_ready reads its stdout (another thread must not close it)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (SIGKILL, SIGSTOP, SIGCONT...)."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _readable(f: Any, timeout: float) -> bool:
    """Whether ``f`` has something to read (or hit end of file) within ``timeout`` s.
    ``poll``, not ``select``: select refuses descriptors past FD_SETSIZE (1024), which a
    Clipper frontend holding a thousand client connections reaches when it starts a
    container."""
    p = select.poll()
    p.register(f, select.POLLIN)
    return bool(p.poll(timeout * 1000))


class ProcessGroup:
    """The children of one system run; a context manager that always cleans up."""

    def __init__(self, log_dir: str | Path | None = None):
        self._own_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="casebook-procs-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children: dict[str, Child] = {}
        self._lock = threading.Lock()
        self._detached = [False]  # a list: the finalizer below reads it, not the group
        self._at_exit = False  # stop_all registered with atexit (while children run)
        # logs stay readable while the group lives; a temporary log directory goes when
        # the group is garbage or at exit, unless a detached child still writes there
        if self._own_dir:
            weakref.finalize(self, _remove_dir_unless_detached, self.log_dir, self._detached)
        exit_on_termination()

    def detach(self, name: str) -> Child:
        """Forget a child, so that leaving this process does not stop it (a server
        started from a shell command); its log directory is kept."""
        with self._lock:
            self._detached[0] = True
            return self.children.pop(name)

    def keep_logs(self) -> None:
        """Keep the temporary log directory when the group goes (an error names a log
        in it)."""
        self._detached[0] = True

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def spawn(self, name: str, module: str, args: list[str] = (), *,
              env: dict[str, str] | None = None, ready_timeout: float = 60.0,
              wait_ready: bool = True, announces: bool = True,
              exit_with_parent: bool = True) -> Child:
        """Start ``python -m module args`` as ``name``; wait for its READY line.

        ``wait_ready=False``: return at once (call :meth:`wait_ready` later);
        ``announces=False``: the child never prints READY, so its output goes straight
        to its log (nobody reading a pipe would block it after 64 KiB)."""
        with self._lock:
            old = self.children.get(name)
        if old is not None and old.alive():  # it would be lost, and outlive the group
            raise ValueError(f"a child named {name!r} (pid {old.pid}) is still running")
        if old is not None:  # it died by itself: what it started in its group goes too
            self.stop(name)
        log_path = self.log_dir / f"{name}.log"
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        child_env.pop(PARENT_ENV, None)
        if exit_with_parent:  # not for a child meant to outlive us (detach)
            child_env[PARENT_ENV] = str(os.getpid())
        # the repo first, and never the caller's working directory: "-m" would put it at
        # sys.path[0] (-P stops that, Python 3.11), and so would an empty PYTHONPATH entry,
        # and then a student's own random.py (or grpc.py) there broke every child's import
        root = str(Path(__file__).resolve().parent.parent)
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, child_env.get("PYTHONPATH")) if p)
        if not self._at_exit:  # registered once, dropped again by stop_all
            self._at_exit = True
            atexit.register(self.stop_all)
        log = open(log_path, "ab")
        popen = subprocess.Popen([sys.executable, "-P", "-m", module, *args],
                                 stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                 env=child_env, start_new_session=True)
        log.close()
        child = Child(name, popen, log_path)
        with self._lock:
            self.children[name] = child
        if not announces:
            self._drain(child)
        elif wait_ready:
            self.wait_ready(child, ready_timeout)
        return child

    def wait_ready(self, child: Child, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        out = child.popen.stdout
        child.reading = True
        try:
            if out.closed:  # another thread stopped it before this wait began
                raise RuntimeError(f"{child.name} was stopped before it was ready; last "
                                   f"lines of {child.log_path}:\n{child.log_tail()}")
            return self._read_ready(child, out, deadline, timeout)
        except BaseException:  # whatever went wrong, a child that never got ready goes
            child.reading = False
            self.stop(child.name)
            raise
        finally:
            child.reading = False

    def _read_ready(self, child: Child, out: Any, deadline: float,
                    timeout: float) -> dict[str, Any]:
        buf, garbled = b"", False
        while time.monotonic() < deadline and not garbled:
            if not child.alive() and not _readable(out, 0):
                break
            if not _readable(out, 0.05):
                continue
            chunk = os.read(out.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(READY_PREFIX):
                    try:
                        child.info = json.loads(text[len(READY_PREFIX):])
                    except ValueError:  # fail below, with the line in the log
                        garbled = True
                        with open(child.log_path, "a") as f:
                            f.write(f"garbled ready line: {text}\n")
                        break
                    if buf:  # what the child printed right after READY, in the same read
                        with open(child.log_path, "ab") as f:
                            f.write(buf)
                    self._drain(child)
                    return child.info
                with open(child.log_path, "a") as f:
                    f.write(text + "\n")
        try:  # stdout closed: the child is exiting; give it a moment to be reaped
            child.popen.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        code = child.popen.poll()
        status = ("garbled READY line" if garbled else f"exited with code {code}"
                  if code is not None else f"not ready after {timeout:.0f}s")
        child.reading = False
        self.stop(child.name)
        if not child.draining and not out.closed:  # (a stop from another thread left it)
            out.close()
        raise RuntimeError(f"{child.name} ({status}); last lines of {child.log_path}:\n"
                           f"{child.log_tail()}")

    def _drain(self, child: Child) -> None:
        """Keep reading the child's stdout into its log, so a chatty child never blocks."""
        child.draining = True

        def pump() -> None:
            with child.popen.stdout, open(child.log_path, "ab") as f:  # closed at EOF
                for line in iter(child.popen.stdout.readline, b""):
                    f.write(line)
                    f.flush()
        threading.Thread(target=pump, daemon=True, name=f"drain-{child.name}").start()

    def stop(self, name: str, timeout: float = 5.0) -> None:
        """SIGTERM the child's group, then SIGKILL if it has not exited in ``timeout``."""
        child = self.children.get(name)
        if child is None or child.stopped:  # once: after it was reaped, its pid (and
            return                          # group id) may belong to another process
        child.stopped = True
        child.signal(signal.SIGCONT)  # a stopped (SIGSTOP) process cannot handle SIGTERM
        child.signal(signal.SIGTERM)
        try:
            child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            child.signal(signal.SIGKILL)
            child.popen.wait(timeout)
        try:  # anything the child started in its group goes too
            os.killpg(child.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not child.draining and not child.reading and child.popen.stdout:
            # nobody reads it: close it here (wait_ready closes it when it gives up)
            child.popen.stdout.close()

    def forget(self, name: str) -> None:
        """Drop the record of a stopped child (a supervisor that names every start anew
        would otherwise keep one per start for as long as the group lives)."""
        with self._lock:
            child = self.children.get(name)
            if child is not None and (child.stopped or not child.alive()):
                self.stop(name)  # one that died by itself: its group's helpers go too
                del self.children[name]

    def stop_all(self, timeout: float = 5.0) -> None:
        with self._lock:
            names = list(self.children)
        for n in names:
            self.stop(n, timeout)
        if self._at_exit:  # nothing left to stop at exit: let the group be garbage
            self._at_exit = False
            atexit.unregister(self.stop_all)


def _remove_dir_unless_detached(path: Path, detached: list[bool]) -> None:
    if not detached[0]:
        shutil.rmtree(path, ignore_errors=True)


def hold_lock(path: str | Path) -> int:
    """Hold an exclusive lock (flock) on ``path``, a file or a directory, until this
    process closes the descriptor or ends, however it ends: the kernel drops the lock
    with the process, SIGKILL included. BlockingIOError if a live process holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_orphans(paths: Any, min_age_s: float = 60.0) -> None:
    """Remove the temporaries a killed writer left: a process killed by SIGKILL runs no
    clean-up, so what it was writing (a checkpoint's temporary, a frontend's own model
    store) would stay for good. A writer holds a lock on what it writes
    (:func:`hold_lock`), so one whose lock can be taken has no live writer: a process id
    would not tell, since a process in another pid namespace (a container) sharing this
    directory has an id that means nothing here. A temporary younger than ``min_age_s``
    stays too: its writer may not have locked it yet."""
    now = time.time()  # file times are wall-clock times
    for path in paths:
        try:
            if now - path.lstat().st_mtime < min_age_s or path.is_symlink():
                continue
            fd = hold_lock(path)
        except OSError:  # held by a live writer, gone already, or not ours to open
            continue
        try:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)
