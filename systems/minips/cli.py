"""``casebook ps ...``: launch a parameter-server job from the command line.

    casebook ps launch --servers 2 --workers 2 --app sparse_lr --consistency ssp:4 \\
        --replication 2 [--kill-server s1@1] [--json]

starts the scheduler, the servers and the workers as processes on this machine, shows a
progress bar with the objective (or accuracy) as the monitor measures it, and prints the
loss over time, what every node counted, and where the merged Chrome trace is. With
``--role scheduler|server|worker`` it starts just that one role in the foreground against
``--scheduler HOST:PORT``, which is how the same code spreads over several machines
(``--host`` then binds an address the others can reach).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from common.cli import (
    RawHelpFormatter,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
)

from . import updater_flags
from .apps import SPARSE_LR_FILTERS, SPARSE_LR_LAM

# Flags one app reads (with their defaults); given to another app they would be dropped
# without a word, and a user would believe they had taken effect.
APP_FLAGS = {"sparse_lr": {"features": 1 << 20, "examples": 8192, "nnz": 24, "lam": None,
                           "filters": []},
             "mlp": {"hidden": 64, "device": "cpu"}}


def _app_spec(a: argparse.Namespace) -> dict[str, Any]:
    given = {f"--{f}": app for app, flags in APP_FLAGS.items() if app != a.app
             for f, default in flags.items() if getattr(a, f, default) != default}
    if a.app == "count":  # minibatches and a learning rate belong to the learning apps
        given.update({f"--{f}": "sparse_lr and mlp" for f in ("batch", "lr") if getattr(a, f)})
    if given:
        raise ValueError(f"{' '.join(given)}: the {a.app} app does not use "
                         f"{'it' if len(given) == 1 else 'them'} "
                         f"({', '.join(f'{f} is for {app}' for f, app in given.items())})")
    spec: dict[str, Any] = {"name": a.app, "seed": a.seed}
    if a.app == "sparse_lr":
        from .data import BLOCK

        if -(-a.examples // BLOCK) < a.workers:  # each shard is a whole block or more
            raise ValueError(f"--examples {a.examples} makes {-(-a.examples // BLOCK)} "
                             f"block(s) of {BLOCK} examples, one shard per worker: --workers "
                             f"{a.workers} needs --examples > {BLOCK * (a.workers - 1)}")
        spec.update(features=a.features, examples=a.examples, nnz=a.nnz, batch=a.batch or 256,
                    lam=SPARSE_LR_LAM if a.lam is None else a.lam, lr=a.lr or 0.1,
                    filters=a.filters)
    if a.app == "mlp":
        spec.update(hidden=a.hidden, batch=a.batch or 32, lr=a.lr or 0.25,
                    device=_device(a.device))
    return spec


def _device(text: str) -> str:
    """``--device``: cpu, or cuda[:N] on a machine that has it (checked before the
    workers start, not as a traceback from each of them)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise ValueError(f"--device {text}: use cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: this machine has no CUDA device")
    return text


_FAULT = re.compile(r"(?P<name>[sw]\d+)@(?P<at>[0-9.]+)(:(?P<dur>[0-9.]+))?")


def _faults(a: argparse.Namespace) -> list[dict]:
    """``--kill-server s1@3``, ``--kill-worker w0@2``, ``--freeze s0@1:2``: checked
    against the job's node names before anything starts (a typo found when the fault
    fires would end a run halfway)."""
    out = []
    flags = [("--kill-server", "kill", "s", x) for x in a.kill_server] + \
        [("--kill-worker", "kill", "w", x) for x in a.kill_worker] + \
        [("--freeze", "freeze", "sw", x) for x in a.freeze]  # a server or a worker
    counts = {"s": a.servers, "w": a.workers}
    for flag, kind, roles, item in flags:
        m = _FAULT.fullmatch(item)
        role = m["name"][0] if m and m["name"][0] in roles else roles[0]
        count = counts[role]
        want = "NAME@SECONDS:FOR" if kind == "freeze" else \
            "NAME@SECONDS (a kill has no duration: --freeze pauses)"
        try:  # s01 is node s1: the name as the cluster spells it
            f = {"at": float(m["at"]), kind: f"{m['name'][0]}{int(m['name'][1:])}"}
            if m["dur"] and kind == "kill":  # a kill lasts; a pause is --freeze
                raise ValueError
            if m["dur"]:
                f["for"] = float(m["dur"])
        except (TypeError, ValueError):
            raise ValueError(f"{flag} {item}: want {want}, e.g. "
                             f"{role}0@1.5{':2' if kind == 'freeze' else ''}") from None
        if m["name"][0] not in roles or int(m["name"][1:]) >= count:
            names = f"{role}0..{role}{count - 1}" if count else "none"
            raise ValueError(f"{flag} {item}: no node {m['name']} in this job ({names})")
        out.append(f)
    return out


def _straggler(text: str | None, workers: int, seed: int) -> dict[str, Any] | None:
    """``--straggler w1:4`` (one worker 4x slower) or ``rotating:4``."""
    if not text:
        return None
    who, _, factor = text.partition(":")
    try:
        f = float(factor or 4)
        rank = None if who == "rotating" else int(who.removeprefix("w"))
    except ValueError:
        raise ValueError(f"--straggler {text}: want RANK:FACTOR (w1:4) or "
                         f"rotating:FACTOR") from None
    if not f >= 1:
        raise ValueError(f"--straggler {text}: the factor is how many times slower, >= 1")
    if rank is None:
        return {"mode": "rotating", "factor": f, "seed": seed}
    if not 0 <= rank < workers:
        names = f"w0..w{workers - 1}" if workers else "none"
        raise ValueError(f"--straggler {text}: no worker w{rank} in this job ({names})")
    return {"mode": "persistent", "rank": rank, "factor": f}


def _check_paths(a: argparse.Namespace, spec: Any) -> None:
    """Paths that would fail only after training: refuse them first."""
    if a.checkpoint and Path(a.checkpoint).exists() and not Path(a.checkpoint).is_dir():
        raise ValueError(f"--checkpoint {a.checkpoint}: exists and is not a directory")
    if a.out and any(Path(a.out).glob("metrics-*.json")):
        raise ValueError(f"--out {a.out}: holds an earlier run's files, whose nodes would "
                         f"be mixed into this run's; give an empty or new directory")
    if a.restore:  # (launch() reads it again; here, before the directory below is made)
        from .checkpoint import resume_clock
        from .launcher import check_resumable

        check_resumable(spec)
        resume_clock(a.restore, a.steps, spec.workers, spec.config(None)["key_max"])
    if a.checkpoint:  # the servers write there at the end: a write probe now, the last
        try:          # check, since it makes the directory
            Path(a.checkpoint).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=a.checkpoint):
                pass
        except OSError as e:
            raise ValueError(f"--checkpoint {a.checkpoint}: cannot write there "
                             f"({e.strerror or e})") from None


def spec_from_args(a: argparse.Namespace):
    from common.net import check_host

    from .cluster import ClusterSpec

    check_host(a.host)  # one line here, not the scheduler's traceback from its log
    straggler = _straggler(a.straggler, a.workers, a.seed)
    if straggler and not a.step_sleep:  # it multiplies the simulated compute: of 0 s
        raise ValueError(f"--straggler {a.straggler} slows a worker's --step-sleep, which "
                         f"is 0: give --step-sleep SECONDS too")
    app = _app_spec(a)
    updater = updater_flags.updater_spec(app, a.updater, a.lam, a.lr)
    return ClusterSpec(servers=a.servers, workers=a.workers, app=app,
                       consistency=a.consistency, replication=a.replication, vnodes=a.vnodes,
                       steps=a.steps, audit=a.audit, step_sleep_s=a.step_sleep,
                       straggler=straggler, host=a.host, updater=updater)


def _launch(a: argparse.Namespace) -> dict[str, Any]:
    if a.role:
        local = [f for f, v in (("--kill-server", a.kill_server), ("--kill-worker",
                                 a.kill_worker), ("--freeze", a.freeze),
                                ("--checkpoint", a.checkpoint), ("--restore", a.restore)) if v]
        if local:  # the launcher does these; one role alone would ignore them
            raise ValueError(f"{', '.join(local)}: only for a job launched here (without "
                             f"--role), which starts, checkpoints and injects faults into "
                             f"its nodes")
        return _one_role(a)
    given = [f for f, v in (("--scheduler", a.scheduler), ("--name", a.name),
                            ("--port", a.port)) if v]
    if given:  # a local job names and places its nodes itself: say so, do not ignore
        raise ValueError(f"{', '.join(given)}: only with --role (one node of a cluster "
                         f"spread over machines)")
    if a.workers == 0:
        print("casebook ps: note: --workers 0 starts servers only; nothing trains",
              file=sys.stderr)
    from common.bench import format_table

    from .launcher import launch

    spec, faults = spec_from_args(a), _faults(a)
    _check_paths(a, spec)  # last: it makes the --checkpoint directory, which a refusal must not
    out = launch(spec, run_dir=a.out, eval_every_s=a.eval_every, faults=faults,
                 progress=not a.no_progress, ckpt_dir=a.checkpoint, restore=a.restore)
    curve = out["curve"]
    if curve:
        keys = [k for k in curve[0] if k != "t"]
        step = max(len(curve) // 12, 1)
        rows = [(f"{c['t']:.1f}", *(f"{c[k]:.4g}" for k in keys)) for c in curve[::step]]
        print(format_table(rows, ("t (s)", *keys)))
    nodes = [(n, int(m["push_requests"]), int(m["pull_requests"]),
              f"{(m['bytes_sent'] + m['bytes_received']) / 1e6:.2f}",
              # servers: time they held pulls; workers: time their pulls were held
              f"{m.get('consistency_wait_s') or m.get('consistency_held_s', 0.0):.2f}")
             for n, m in sorted(out["per_node"].items()) if n != "scheduler"]
    print(format_table(nodes, ("node", "pushes", "pulls", "MB on the wire",
                                "consistency wait (s)")))
    rings = [e for e in out["events"] if e["kind"] == "ring"]
    for e in out["events"]:
        if e["kind"] == "ring" and e is not rings[0]:  # not the initial ring
            print(f"  membership: ring {e.get('why', '')} -> epoch {e['epoch']}")
        elif e["kind"] == "worker_dead":
            print(f"  membership: worker {e['worker']} dead ({e.get('why', '')})")
        elif e["kind"] == "reassign":
            print(f"  membership: shard {e['shard']} (at step {e['progress']}) -> "
                  f"{e['worker']}")
    if out["audit"]:
        print(f"  audit: {out['audit']}")
    for f in out["faults_not_fired"]:
        what = ", ".join(f"{k} {v}" for k, v in f.items() if k != "at")
        print(f"  note: {what} at {f['at']:g} s was not done: the workers finished first "
              f"({out['wall_s']:.1f} s)")
    print(f"  trace: {out['trace']}  (load in chrome://tracing or ui.perfetto.dev)")
    out.pop("losses", None)
    return out


def _one_role(a: argparse.Namespace) -> dict[str, Any]:
    """Run one role in this process, for a cluster spread over machines."""
    if a.role != "scheduler" and not a.scheduler:
        raise ValueError(f"--role {a.role} needs --scheduler HOST:PORT (the scheduler's "
                         f"address, printed when it starts)")
    if a.scheduler and not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}", a.scheduler):
        raise ValueError(f"--scheduler {a.scheduler!r}: want HOST:PORT ([::1]:PORT for IPv6)")
    if a.role == "scheduler":
        import asyncio

        from .scheduler import serve

        config = {**spec_from_args(a).config(a.out), "exit_when_done": True}
        asyncio.run(serve(config, a.host, a.port))
    elif a.role == "server":
        import asyncio

        import grpc

        from common.net import check_host

        from .server import serve

        check_host(a.host)
        if a.host.strip("[]") in ("0.0.0.0", "::"):  # listens everywhere, dialled nowhere
            raise ValueError(f"--host {a.host}: a server registers the address it listens "
                             f"on, and the other nodes dial it; give this machine's "
                             f"address on the network they reach it by")
        try:
            asyncio.run(serve(a.name or "s0", a.scheduler, a.host, a.port, a.out, None))
        except grpc.RpcError as e:  # Register, the first call: as the worker role says it
            raise RuntimeError(f"[{e.code().name}] no scheduler answered at {a.scheduler} "
                               f"({e.details()}); start it first") from None
    else:
        from .worker import Worker

        report = Worker(a.name or "w0", a.scheduler, a.out).run()
        return {k: v for k, v in report.items() if k not in ("timeline", "metrics")}
    return {"role": a.role, "stopped": True}


def add_parser(sub, add) -> None:
    p = add("ps", lambda a: p.print_help() or {}, "minips: the Parameter Server (Li et al. 2014)")
    cmds = p.add_subparsers(dest="ps_command", required=True)
    # Raw: the example in the description keeps its two lines
    la = cmds.add_parser("launch", help="start a scheduler, servers and workers and train",
                         description=__doc__.split("\n\n")[1] if __doc__ else None,
                         formatter_class=RawHelpFormatter)
    la.set_defaults(func=_launch)
    la.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print the result as JSON last")
    la.add_argument("--servers", type=int, default=2, help="server processes, at least 1")
    la.add_argument("--workers", type=int, default=2,
                    help="worker processes, one data shard each; 0: nothing trains")
    la.add_argument("--app", choices=["sparse_lr", "mlp", "count"], default="sparse_lr",
                    help="what the workers run: sparse logistic regression with L1, an MLP on the "
                         "digits, or count (pushes only, for the exactly-once audit)")
    la.add_argument("--consistency", default="bsp",
                    help="bsp, ssp:TAU (a worker runs at most TAU clocks ahead) or asp")
    la.add_argument("--replication", type=int, default=1,
                    help="copies of each key range, 1 to --servers")
    la.add_argument("--vnodes", type=positive_int, default=4, help="virtual nodes per server")
    la.add_argument("--steps", type=positive_int, default=100,
                    help="steps per worker, each on its own data shard")
    la.add_argument("--features", type=positive_int, default=APP_FLAGS["sparse_lr"]["features"],
                    help="sparse_lr: features (the key space)")
    la.add_argument("--examples", type=positive_int,
                    default=APP_FLAGS["sparse_lr"]["examples"],
                    help="sparse_lr: examples in the dataset")
    la.add_argument("--nnz", type=positive_int, default=APP_FLAGS["sparse_lr"]["nnz"],
                    help="sparse_lr: features per example")
    la.add_argument("--lam", type=non_negative_float, default=None,
                    help=f"sparse_lr: L1 strength (default: {SPARSE_LR_LAM:g})")
    la.add_argument("--filters", nargs="*", default=[],
                    choices=SPARSE_LR_FILTERS,
                    help="sparse_lr: filters on what the workers send (default: none)")
    la.add_argument("--updater", default=None,
                    help="the servers' update rule instead of the app's: sgd, adagrad, "
                         "l1prox or sum, with parameters as in l1prox:lr=0.05,lam=0.001 "
                         "(default: the app's)")
    la.add_argument("--hidden", type=positive_int, default=APP_FLAGS["mlp"]["hidden"],
                    help="mlp: hidden units")
    la.add_argument("--device", default=APP_FLAGS["mlp"]["device"],
                    help="mlp: where workers compute: cpu, cuda or cuda:N")
    la.add_argument("--batch", type=non_negative_int, default=0,
                    help="minibatch size, examples; 0: the app's, 256 for sparse_lr, 32 for mlp")
    la.add_argument("--lr", type=non_negative_float, default=0.0,
                    help="learning rate; 0: the app's, 0.1 for sparse_lr, 0.25 for mlp")
    la.add_argument("--seed", type=non_negative_int, default=0,
                    help="random seed of the app's data and model, and of a rotating straggler")
    la.add_argument("--step-sleep", type=non_negative_float, default=0.0,
                    help="seconds of simulated compute per step (sleep)")
    la.add_argument("--straggler", default=None,
                    help="--step-sleep times FACTOR for one worker: RANK:FACTOR (w1:4), or "
                         "a random one each clock: rotating:FACTOR (default: none)")
    la.add_argument("--audit", type=non_negative_int, default=0,
                    help="audit keys per push, checked at the end against the acknowledged "
                         "pushes; 0: no audit")
    la.add_argument("--kill-server", action="append", default=[], metavar="NAME@SECONDS",
                    help="kill server NAME SECONDS into training, e.g. s1@3 (repeatable)")
    la.add_argument("--kill-worker", action="append", default=[], metavar="NAME@SECONDS",
                    help="kill worker NAME SECONDS into training, e.g. w0@2 (repeatable)")
    la.add_argument("--freeze", action="append", default=[], metavar="NAME@SECONDS:FOR",
                    help="pause (SIGSTOP) node NAME SECONDS into training for FOR s (default "
                         "2), e.g. s0@1:2 (repeatable)")
    la.add_argument("--eval-every", type=positive_float, default=1.0,
                    help="seconds between the monitor's evaluations of the model")
    la.add_argument("--checkpoint", default=None,
                    help="directory the servers write a checkpoint to at the end "
                         "(default: none)")
    la.add_argument("--restore", default=None, metavar="DIR",
                    help="go on from a checkpoint written by --checkpoint (same job, more "
                         "--steps; default: start afresh)")
    la.add_argument("--out", default=None,
                    help="run directory: logs, metrics, trace (default: a new temporary one)")
    la.add_argument("--no-progress", action="store_true", help="no progress bar")
    la.add_argument("--host", default="127.0.0.1", help="the address the nodes bind")
    la.add_argument("--role", choices=["scheduler", "server", "worker"], default=None,
                    help="run only this role, for a job over several machines "
                         "(default: the whole job here)")
    la.add_argument("--name", default=None,
                    help="with --role server or worker: the node's name (default: s0 or w0)")
    la.add_argument("--scheduler", default=None,
                    help="with --role server or worker: the scheduler's HOST:PORT")
    la.add_argument("--port", type=port, default=0,
                    help="with --role scheduler or server: the port to bind; 0: a free one")



def tour_step(quick: bool = True) -> dict[str, Any]:
    """``casebook tour``: 2 servers, 2 workers, SSP(2), sparse LR on 2^16 keys."""
    from .cluster import ClusterSpec
    from .launcher import launch

    app = {"name": "sparse_lr", "features": 1 << 16, "examples": 4096, "batch": 256}
    with tempfile.TemporaryDirectory(prefix="minips-tour-") as run_dir:  # logs, traces
        out = launch(ClusterSpec(servers=2, workers=2, replication=2, consistency="ssp:2",
                                 steps=32 if quick else 96, app=app),
                     run_dir=run_dir, eval_every_s=0.25, progress=False)
    curve = out["curve"]
    for c in curve[1:: max(len(curve) // 6, 1)]:
        print(f"  t={c['t']:4.1f}s  objective {c['objective']:.4f}  ({c['nnz']} non-zero weights)")
    mb = out["worker_bytes"] / 1e6
    # a ring all-reduce sends and receives 2 (W-1)/W of the dense vector per worker-step
    dense = 2 * 2 * (2 - 1) / 2 * (1 << 16) * 4 * sum(out["clocks"].values()) / 1e6
    print(f"  workers moved {mb:.1f} MB over the wire; a dense all-reduce of the same steps "
          f"would move about {dense:.0f} MB")
    return {"result": f"objective {curve[0]['objective']:.3f} -> {curve[-1]['objective']:.3f}"
                      f" in {curve[-1]['t']:.1f}s, {mb:.1f} MB on the wire",
            "objective": [curve[0]["objective"], curve[-1]["objective"]],
            "worker_mb": mb, "dense_allreduce_mb": dense}
