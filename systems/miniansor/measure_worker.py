"""The measurement worker: run untrusted kernels in a separate OS process.

A bad config can do worse than fail: an out-of-bounds access on a GPU raises "illegal
memory access", after which the CUDA context is unusable for the rest of the process;
on a CPU, Triton's interpreter reads raw memory and can crash the process outright.
TVM therefore builds and runs candidates in separate processes (``LocalBuilder`` /
``LocalRunner`` with a process pool, or ``RPCRunner`` over a tracker, in
``python/tvm/auto_scheduler/measure.py``). We run one worker process, started with
``common.procs.ProcessGroup`` and called over gRPC on loopback (``common.rpc``,
messages in ``common.wire``). When it dies or hangs, the call records a
``RUNTIME_ERROR`` / ``RUN_TIMEOUT`` and the worker is restarted: one restart, not a lost
tuning run.

Run as ``python -m systems.miniansor.measure_worker``. Actions:

* ``verify``: run the annotated kernel (on a proxy shape unless told otherwise) and
  compare with torch;
* ``time`` (CUDA only): check the full-size output once, then time the kernel with
  ``triton.testing.do_bench`` and return the median.

A request names the sketch by template and fixed values, so a student's template in
another module (``"package.module:launcher"``) runs here too.
"""

from __future__ import annotations

import os
import threading
import time

import grpc

from common import rpc, wire
from common.procs import ProcessGroup

from .measure import DeviceFault, MeasureInput
from .sketch import Sketch
from .workloads import Task

SERVICE = "miniansor.MeasureWorker"
MODULE = "systems.miniansor.measure_worker"


def request(inp: MeasureInput, action: str, **extra) -> dict:
    s = inp.sketch
    return {"action": action, "task": inp.task.key, "ann": inp.ann,
            "sketch": {"name": s.name, "template": s.template, "fixed": dict(s.fixed)},
            **extra}


# ---- the worker side ---------------------------------------------------------------

_cache: dict[str, tuple] = {}  # task key -> (inputs, reference) on the GPU


def _cuda_time(task: Task, sketch: Sketch, ann: dict, rep_ms: float) -> list[float]:
    import torch
    from triton.testing import do_bench

    from .sketch import run_program
    from .workloads import check_output

    if task.key not in _cache:
        _cache.clear()  # one task's tensors at a time keeps GPU memory bounded
        inputs = task.make_inputs("cuda")
        _cache[task.key] = (inputs, task.reference(inputs))
    inputs, ref = _cache[task.key]
    out = run_program(task, sketch, ann, inputs)
    torch.cuda.synchronize()
    why = check_output(task, out, ref)
    if why:
        raise DeviceFault("WRONG_ANSWER", why)
    ms = do_bench(lambda: run_program(task, sketch, ann, inputs), warmup=10, rep=rep_ms,
                  return_mode="median")
    return [ms * 1e-3]


def _handle(raw: bytes, ctx) -> bytes:
    from .measure import verify_program

    meta, _ = wire.unpack(raw)
    task = Task.from_key(meta["task"])
    s = meta["sketch"]
    ann = {k: int(v) for k, v in meta["ann"].items()}
    sketch = Sketch(s["name"], s["template"], tuple((p, (v,)) for p, v in ann.items()),
                    tuple(sorted(s["fixed"].items())))
    try:
        if meta["action"] == "verify":
            verify_program(task, sketch, ann, meta.get("device", "cpu"),
                           proxy=meta.get("proxy", True))
            return wire.pack({"ok": True})
        if meta["action"] == "time":
            costs = _cuda_time(task, sketch, ann, meta.get("rep_ms", 50))
            return wire.pack({"ok": True, "costs": costs})
        return wire.pack({"ok": False, "kind": "UNKNOWN_ERROR",
                          "msg": f"unknown action {meta['action']!r}"})
    except DeviceFault as f:  # verify_program reports a CUDA fault as one, too
        kind, msg = f.kind, f.msg
    except Exception as e:
        kind, msg = "RUNTIME_ERROR", f"{type(e).__name__}: {str(e)[:300]}"
    if kind == "RUNTIME_ERROR" and poisons_context(msg):
        threading.Timer(0.2, os._exit, (3,)).start()  # answer, then exit to be restarted
    return wire.pack({"ok": False, "kind": kind, "msg": msg})


def poisons_context(msg: str) -> bool:
    """Whether a runtime error is a CUDA fault ("CUDA error: an illegal memory access was
    encountered"), after which every later call in this process fails too."""
    return "CUDA" in msg or "illegal" in msg


def main() -> None:
    from common.procs import announce_ready

    server, port = rpc.serve(SERVICE, {"Run": _handle}, max_workers=1)
    announce_ready(port=port, pid=os.getpid())
    server.wait_for_termination()


# ---- the tuner side ----------------------------------------------------------------

class WorkerRunner:
    """A supervised worker process; ``verify``/``time`` raise DeviceFault on failure."""

    def __init__(self, *, interpret: bool = True, timeout_s: float = 60.0,
                 group: ProcessGroup | None = None):
        self.interpret, self.timeout_s = interpret, timeout_s
        self.group = group or ProcessGroup()
        self._own_group = group is None
        self.restarts = 0
        self._stub = None
        self._channel = None
        self.start()

    def start(self) -> None:
        env = {"TRITON_INTERPRET": "1"} if self.interpret else {}
        child = self.group.spawn("measure-worker", MODULE, env=env, ready_timeout=120)
        self._channel = rpc.channel(f"127.0.0.1:{child.info['port']}")
        self._stub = self._channel.unary_unary(f"/{SERVICE}/Run")

    def restart(self) -> None:
        self.restarts += 1
        self.group.stop("measure-worker", timeout=2)
        if self._channel is not None:
            self._channel.close()
        self.start()

    def call(self, header: dict) -> dict:
        try:
            reply = self._stub(wire.pack(header), timeout=self.timeout_s)
        except grpc.RpcError as e:
            code = e.code()
            tail = self.group.children["measure-worker"].log_tail(5)
            self.restart()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeviceFault("RUN_TIMEOUT", f"no answer in {self.timeout_s:.0f}s; "
                                  "worker restarted") from None
            raise DeviceFault("RUNTIME_ERROR", f"worker died ({code.name}); restarted. "
                              f"Its last log lines: {tail[-300:]}") from None
        meta, _ = wire.unpack(reply)
        if not meta["ok"]:
            if meta["kind"] == "RUNTIME_ERROR" and poisons_context(meta.get("msg", "")):
                # the worker answers, then exits 0.2 s later: wait for that (a loaded
                # machine may take longer), so no later call reaches the dying process
                child, t_end = self.group.children["measure-worker"], time.monotonic() + 10
                while child.alive() and time.monotonic() < t_end:
                    time.sleep(0.02)
                self.restart()
            raise DeviceFault(meta["kind"], meta.get("msg", ""))
        return meta

    def verify(self, inp: MeasureInput, proxy: bool = True) -> None:
        device = "cpu" if self.interpret else "cuda"
        self.call(request(inp, "verify", device=device, proxy=proxy))

    def time(self, inp: MeasureInput, rep_ms: float = 50) -> list[float]:
        return self.call(request(inp, "time", rep_ms=rep_ms))["costs"]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._own_group:
            self.group.stop_all()
        else:
            self.group.stop("measure-worker")

    def __enter__(self) -> WorkerRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    main()
