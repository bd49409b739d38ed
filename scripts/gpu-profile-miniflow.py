"""Where a miniflow training step spends its time on a GPU, beside PyTorch eager.

Runs a few steps of the digits MLP and CNN with every op on /gpu:0, and of their PyTorch
twins, under ``torch.profiler``; prints the top operators by self CPU time and by CUDA
time, saves the profiler's Chrome trace of the miniflow steps
(``OUT/miniflow-<model>-trace.json``), then prints miniflow's own step stats (host time
per node) for one traced step. Used by ``scripts/gpu-suite.sh`` when ``PROFILE=1``;
needs a CUDA GPU.

What the profiler sees: in the 2026-11-27 runs its miniflow tables listed CUDA runtime
calls but no aten operators, since miniflow's GPU partition ran on a thread of its own;
the step stats fill that gap. (Partitions that only send forward, feeds to the GPU, now
run on the client's thread.)

First it prints, for one step of each, the torch operators dispatched (a
``TorchDispatchMode``) and the host-device synchronisations (PyTorch's sync debug mode
warns at each): a miniflow step should synchronise only to copy its two pageable feeds.
"""

from __future__ import annotations

import collections
import os
import sys
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common.opcount import OpCounter
from systems.miniflow import digits
from systems.miniflow.bench import _torch_twin
from systems.miniflow.session import RunMetadata, RunOptions, Session


def count_one_step(step) -> tuple[collections.Counter, list[str]]:
    """Torch operators dispatched by one step, and the synchronising calls it made."""
    torch.cuda.synchronize()
    counter = OpCounter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with counter:
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return counter.ops, [str(w.message).splitlines()[0] for w in caught
                         if "synchroniz" in str(w.message)]


def main(out: Path) -> None:
    Xtr, _, ytr, _ = digits.load_split()
    xb, yb = Xtr[:256], ytr[:256]
    for model in ("mlp", "cnn"):
        m = digits.build(model, "cuda", batch=256)  # as the benchmark
        sess = Session(graph=m["graph"])
        sess.run(m["init"])
        feed = {m["x"]: xb, m["y"]: yb}
        net = _torch_twin(model).cuda()
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        txb, tyb = torch.tensor(xb).cuda(), torch.tensor(yb, dtype=torch.long).cuda()

        def torch_step() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(txb), tyb).backward()
            opt.step()

        for _ in range(5):
            sess.run(m["train"], feed)
            torch_step()
        torch.cuda.synchronize()
        for name, step in (("miniflow", lambda: sess.run(m["train"], feed)),
                           ("torch", torch_step)):
            ops, syncs = count_one_step(step)
            print(f"\n==== {model}: {name}, one step: {sum(ops.values())} torch ops, "
                  f"{len(syncs)} synchronisations ====")
            print("  ", dict(ops.most_common()))
            for msg, n in collections.Counter(syncs).items():
                print(f"   {n} x {msg}")
        for name, step in (("miniflow", lambda: sess.run(m["train"], feed)),
                           ("torch", torch_step)):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
            print(f"\n==== {model}: {name}, 5 steps ====")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=8))
            if name == "miniflow":
                prof.export_chrome_trace(str(out / f"miniflow-{model}-trace.json"))
        md = RunMetadata()
        sess.run(m["train"], feed, options=RunOptions(trace_level=RunOptions.FULL_TRACE),
                 run_metadata=md)
        # host time per node: kernels launch asynchronously, so this is the dispatch cost
        stats = md.step_stats
        total = sum(st.end_us - st.start_us for st in stats)
        print(f"\n==== {model}: miniflow, one traced step: {len(stats)} nodes, "
              f"{total:.0f} us of host time inside kernels; slowest nodes ====")
        for st in sorted(stats, key=lambda st: st.start_us - st.end_us)[:12]:
            print(f"{st.end_us - st.start_us:9.1f} us  {st.op:28s} {st.name}  {st.device}")
        sess.close()


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    main(out)
