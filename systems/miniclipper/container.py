"""A model container: one OS process that loads one model version and serves batches.

Clipper isolates every model in its own container behind a small RPC interface (§4.4):
a framework's crash, memory leak or slow start then cannot take the serving system down,
and any framework can be served by writing a thin wrapper (Clipper's
``containers/python/rpc.py`` and ``python_closure_container.py``). Ours is a process
started by the supervisor (``python -m systems.miniclipper.container``). It runs one
batch at a time, as Clipper's single-threaded Python container loop does (here a lock
serialises the model, since the gRPC server is threaded):

* ``PredictStream``: the frontend's connection. Clipper's RPC (``rpc_service.cpp`` and
  the container's ``rpc.py``) is one persistent ZeroMQ connection per container over
  which batches and their replies travel as messages matched by id; ours is one
  persistent gRPC bidirectional stream per replica, a batch in and its reply (echoing
  the ``batch_id``) out. A unary call per batch would pay gRPC's per-call setup (a new
  HTTP/2 stream, headers, a thread hand-off in the server): about 600 us a round trip
  on the 2-core VM against about 260 us for a message on an open stream;
* ``Predict(batch) -> outputs``: the same work as one unary call (tools and tests). A
  batch is packed by :func:`.datatypes.encode_batch`; the outputs are checked (one per
  input; numbers, numeric rows or strings) before they are sent. A model that raises, or
  returns the wrong count or type, fails *its batch only*: the reply carries the error
  and the container serves the next batch;
* ``Health() -> {pid, model, calls, inputs, busy}``: liveness and how much work reached
  the model (tests count container calls with it to see cache hits that never arrived);
* ``Control({"slowdown": f})``: fault injection for benchmarks: after each batch, sleep
  ``f - 1`` times its compute time, as if the model had become ``f`` times slower.

It loads only from the supervisor's model store: ``--store ROOT --model NAME/VERSION``
must resolve inside ROOT, and the files it opens are the ones named in that directory's
``clipper_model.json``. Three kinds of model: a cloudpickled Python closure (as
Clipper's python deployer), a scikit-learn estimator, or a torch module (CPU or CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common import rpc
from common.procs import announce_ready
from common.trace import now_us
from common.wire import pack, unpack

from .datatypes import decode_batch, encode_outputs
from .deployers import MODEL_META  # the description a deployer wrote

SERVICE = "clipper.ModelContainer"


def model_dir_in_store(store: str | Path, model: str) -> Path:
    """The directory of ``NAME/VERSION`` inside ``store``; refuses anything outside it."""
    root = Path(store).resolve()
    path = (root / model).resolve()
    if root not in path.parents or len(path.relative_to(root).parts) != 2:
        raise ValueError(f"model {model!r} does not name NAME/VERSION inside the store {root}")
    return path


def _plain(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"model file {name!r} in {MODEL_META} must be a plain file name")
    return name


def load_model(path: Path) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    """Load the model in ``path``; return its batch predict function and its metadata."""
    meta = json.loads((path / MODEL_META).read_text())
    kind = meta.get("kind")
    file = path / _plain(meta.get("file", ""))
    if kind not in ("closure", "sklearn", "torch"):
        raise ValueError(f"{path / MODEL_META}: unknown model kind {kind!r} "
                         f"(expected closure, sklearn or torch)")
    import cloudpickle

    with open(file, "rb") as f:  # (the student's own modules came by value: deployers.py)
        obj = cloudpickle.load(f)
    if kind == "closure":
        return obj, meta
    if kind == "sklearn":
        return lambda xs: obj.predict(np.asarray(xs)), meta
    import torch

    device = meta.get("device", "cpu")
    module = obj.to(device).eval()
    shape = tuple(meta.get("input_shape") or ())
    argmax = meta.get("output") == "argmax"

    def predict_torch(xs: Any) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(xs, dtype=np.float32)))
        x = x.reshape(len(x), *shape) if shape else x
        with torch.inference_mode():
            y = module(x.to(device, non_blocking=True))
            y = y.argmax(dim=1) if argmax else y
        return y.cpu().numpy()

    return predict_torch, meta


class ModelContainer:
    """The RPC handlers around one loaded model."""

    def __init__(self, predict: Callable[[Any], Any], meta: dict[str, Any], model: str = ""):
        self.predict, self.meta, self.model = predict, meta, model
        self.calls = self.inputs = 0
        self.slowdown = 1.0
        self.lock = threading.Lock()  # one batch at a time, whichever method brought it

    def Predict(self, request: bytes, context: Any) -> bytes:
        t0 = now_us()
        try:
            meta, xs = decode_batch(request)
        except ValueError as e:  # answer *this* batch, so the frontend fails only it
            try:
                batch_id = unpack(request)[0].get("batch_id")
            except ValueError:
                batch_id = None
            return pack({"error": f"bad batch: {e}", "pid": os.getpid(),
                         "batch_id": batch_id})
        n = int(meta["n"])
        reply = {"t0": t0, "pid": os.getpid(), "batch_id": meta.get("batch_id")}
        with self.lock:
            self.calls += 1
            self.inputs += n
            started = time.perf_counter()
            try:
                outputs = self.predict(xs)
                if self.slowdown > 1:
                    time.sleep((self.slowdown - 1) * (time.perf_counter() - started))
                return encode_outputs(outputs, n, {**reply, "t1": now_us()})
            # the model's failure fails this batch, not the container: sys.exit() (or an
            # argument parser) inside model code too, which used to escape the handler
            # and leave the batch unanswered until the frontend's hang timeout
            except (Exception, SystemExit, KeyboardInterrupt) as e:
                return pack({**reply, "error": f"{type(e).__name__}: {e}", "t1": now_us()})

    def PredictStream(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        """The frontend's persistent connection: each message is one batch."""
        for request in requests:
            yield self.Predict(request, context)

    def Health(self, request: bytes, context: Any) -> bytes:
        """Answers at once, even while a batch runs (``busy``): a liveness probe must
        not wait behind a slow model."""
        return pack({"pid": os.getpid(), "model": self.model, "calls": self.calls,
                     "inputs": self.inputs, "slowdown": self.slowdown,
                     "busy": self.lock.locked()})

    def Control(self, request: bytes, context: Any) -> bytes:
        meta, _ = unpack(request)
        if "slowdown" in meta:
            # a finite factor, as the management API checks it: inf made every later
            # batch fail (its sleep overflowed), and "x" (or NaN, or an int too large for
            # a float) raised out of the handler; below 1 means 1
            s = meta["slowdown"]
            if type(s) not in (int, float) or not -1e9 <= s <= 1000:
                return pack({"error": f"slowdown must be a number up to 1000, got "
                                      f"{s!r:.40}"})
            self.slowdown = max(1.0, float(s))
        return self.Health(b"", context)


def _watch_parent(parent: int) -> None:
    """Exit when the supervisor is gone: containers run in their own session, so nothing
    else would stop them if the frontend process were killed."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def serve(store: str, model: str, host: str, port: int) -> None:
    predict, meta = load_model(model_dir_in_store(store, model))
    c = ModelContainer(predict, meta, model)
    # Four threads: the frontend's stream holds one for its whole life; Health and
    # Control need others (a liveness probe must not wait behind a slow model).
    server, bound = rpc.serve(SERVICE, {"Predict": c.Predict, "Health": c.Health,
                                        "Control": c.Control},
                              host=host, port=port, max_workers=4,
                              streams={"PredictStream": c.PredictStream})
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    announce_ready(port=bound, pid=os.getpid(), model=model)
    server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a miniclipper model container")
    p.add_argument("--store", required=True, help="the supervisor's model store")
    p.add_argument("--model", required=True, help="NAME/VERSION inside the store")
    p.add_argument("--host", default=rpc.LOOPBACK)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args(argv)
    serve(a.store, a.model, a.host, a.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
