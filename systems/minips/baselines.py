"""The real things we measure against, each in its own processes, same box, same run.

* ``raw``: a gRPC server with one unary method that takes a message and answers two
  bytes (or a payload of a requested size). One call of the same size as a push is the
  ceiling for a parameter server built on the same transport.
* ``gloo_lr``: sparse logistic regression the data-parallel way: every rank computes
  the gradient of its minibatch, scatters it into a *dense* vector over the whole key
  space, ``torch.distributed.all_reduce`` (gloo, TCP over loopback) sums it, and every
  rank applies the same L1-proximal AdaGrad step to the whole vector. Same data, same
  batches, same update rule as the parameter server run.
* ``gloo_ddp``: the digits MLP under ``torch.nn.parallel.DistributedDataParallel``
  (gloo), same model, batch size and learning rate as the parameter-server MLP;
* ``gloo_allreduce``: one dense all-reduce, timed alone (the crossover plot).

Run: ``python -m systems.minips.baselines {raw,gloo_lr,gloo_ddp} ...``; the gloo roles
write their timings as JSON (rank 0) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import numpy as np

from common import rpc
from common.procs import announce_ready
from common.trace import write_json_atomic

RAW_SERVICE = "minips.Raw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((rpc.LOOPBACK, 0))
        return s.getsockname()[1]


def raw_server() -> None:
    """Echo-free unary server: request ``{reply_bytes}`` in the first 8 bytes or not."""
    def call(req: bytes, ctx) -> bytes:
        n = int.from_bytes(req[:8], "little") if len(req) >= 8 else 0
        return bytes(n) if 0 < n < (1 << 31) else b"ok"

    from .message import reuse_large_buffers

    reuse_large_buffers()  # the same allocator setting as our servers: a fair baseline
    server, port = rpc.serve(RAW_SERVICE, {"Call": call})
    announce_ready(port=port, addr=f"{rpc.LOOPBACK}:{port}")
    server.wait_for_termination()


def _init(rank: int, world: int, port: int):
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://{rpc.LOOPBACK}:{port}",
                            rank=rank, world_size=world)
    return dist


def gloo_lr(rank: int, world: int, port: int, args: dict, steps: int, out: str) -> None:
    """Dense all-reduce of the sparse-LR gradient: our baseline (the paper's section 5.1
    compared two sequential production systems, L-BFGS and block proximal gradient)."""
    import torch

    from .apps.sparse_lr import SparseLR
    from .updaters import L1Proximal

    torch.set_num_threads(1)
    app = SparseLR(args, world)
    dist = _init(rank, world, port)
    d = app.key_max
    w = np.zeros((d, 1), np.float32)
    state = np.zeros_like(w)
    up = L1Proximal(lr=float(args.get("lr", 0.1)), lam=app.lam)
    dense = torch.zeros(d)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        keys = app.keys(rank, step)
        g, _ = app.step(rank, step, keys, w[keys.astype(np.int64)])
        dense.zero_()
        dense[torch.from_numpy(keys.astype(np.int64))] = torch.from_numpy(g.reshape(-1))
        dist.all_reduce(dense)
        nz = torch.nonzero(dense).reshape(-1).numpy()  # update touched keys only, as the
        ww, ss = w[nz], state[nz]  # servers do (a lazy proximal step)
        up(ww, ss, dense.numpy()[nz].reshape(-1, 1))
        w[nz], state[nz] = ww, ss
        times.append(time.perf_counter() - t0)
    if rank == 0:
        ring_bytes = 2 * (world - 1) / world * d * 4  # per rank, ring all-reduce
        write_json_atomic(out, {"step_s": times, "bytes_per_step": ring_bytes,
                                "nnz": int(np.count_nonzero(w))})
    dist.barrier()  # nobody tears down while a peer still sends
    dist.destroy_process_group()


def gloo_ddp(rank: int, world: int, port: int, args: dict, steps: int, out: str) -> None:
    """The digits MLP under DistributedDataParallel (gloo)."""
    import torch

    from .apps.mlp import MLP

    torch.set_num_threads(1)
    app = MLP(args, world)
    dist = _init(rank, world, port)
    model = torch.nn.parallel.DistributedDataParallel(app.model)
    # DDP averages gradients; our servers sum pushes of grad / world: same step
    opt = torch.optim.SGD(model.parameters(), lr=float(args.get("lr", 0.25)))
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        rows = app._rows(rank, step)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(app.xtr[rows])),
                                                 torch.from_numpy(app.ytr[rows]))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        from .apps.mlp import flat

        w = flat(app.model)
        acc = app.evaluate(np.arange(w.size, dtype=np.uint64), w)["accuracy"]
        n = sum(p.numel() for p in app.model.parameters())
        write_json_atomic(out, {"step_s": times, "accuracy": acc,
                                "bytes_per_step": 2 * (world - 1) / world * n * 4})
    dist.barrier()  # nobody tears down while a peer still sends
    dist.destroy_process_group()


def gloo_allreduce(rank: int, world: int, port: int, args: dict, steps: int, out: str) -> None:
    """Time ``all_reduce`` of a dense float32 vector of ``args["size"]`` (the cost of one
    data-parallel step's communication, whatever fraction of it is non-zero)."""
    import torch

    torch.set_num_threads(1)
    dist = _init(rank, world, port)
    x = torch.ones(int(args["size"]))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        dist.all_reduce(x)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        write_json_atomic(out, {"step_s": times})
    dist.barrier()  # nobody tears down while a peer still sends
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description="baselines for the minips benchmarks")
    p.add_argument("role", choices=["raw", "gloo_lr", "gloo_ddp", "gloo_allreduce"])
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--args", default="{}", help="the app's parameters as JSON")
    p.add_argument("--out", default="baseline.json")
    a = p.parse_args()
    if a.role == "raw":
        raw_server()
    else:
        fn = {"gloo_lr": gloo_lr, "gloo_ddp": gloo_ddp, "gloo_allreduce": gloo_allreduce}[a.role]
        fn(a.rank, a.world, a.port, json.loads(a.args), a.steps, a.out)


if __name__ == "__main__":
    main()
