"""``casebook ps ...``: launch a parameter-server job from the command line.

    casebook ps launch --servers 2 --workers 2 --app sparse_lr --consistency ssp:4 \\
        --replication 2 [--kill-server s1@3] [--json]

starts the scheduler, the servers and the workers as processes on this machine, shows a
progress bar with the objective (or accuracy) as the monitor measures it, and prints the
loss over time, what every node counted, and where the merged Chrome trace is. With
``--role scheduler|server|worker`` it starts just that one role in the foreground against
``--scheduler HOST:PORT``, which is how the same code spreads over several machines
(``--host`` then binds an address the others can reach).
"""

from __future__ import annotations

import argparse
from typing import Any

from common.cli import positive_int

from .apps import SPARSE_LR_FILTERS


def _app_spec(a: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": a.app, "seed": a.seed}
    if a.app == "sparse_lr":
        spec.update(features=a.features, examples=a.examples, nnz=a.nnz, batch=a.batch or 256,
                    lam=a.lam, lr=a.lr or 0.1, filters=a.filters)
    elif a.filters:  # only sparse LR has filters; silently dropping them would mislead
        raise ValueError(f"--filters {a.filters}: the {a.app} app takes no filters "
                         f"(sparse_lr does)")
    if a.app == "mlp":
        spec.update(hidden=a.hidden, batch=a.batch or 32, lr=a.lr or 0.25, device=a.device)
    return spec


def _faults(a: argparse.Namespace) -> list[dict]:
    out = []
    for kind, items in (("kill", a.kill_server + a.kill_worker), ("freeze", a.freeze)):
        for item in items:
            name, _, when = item.partition("@")
            at, _, dur = when.partition(":")
            f = {"at": float(at), kind: name}
            if dur:
                f["for"] = float(dur)
            out.append(f)
    return out


def spec_from_args(a: argparse.Namespace):
    from .launcher import ClusterSpec

    straggler = None
    if a.straggler:
        who, _, factor = a.straggler.partition(":")
        straggler = ({"mode": "rotating", "factor": float(factor or 4), "seed": a.seed}
                     if who == "rotating" else
                     {"mode": "persistent", "rank": int(who.lstrip("w")),
                      "factor": float(factor or 4)})
    return ClusterSpec(servers=a.servers, workers=a.workers, app=_app_spec(a),
                       consistency=a.consistency, replication=a.replication, vnodes=a.vnodes,
                       steps=a.steps, audit=a.audit, step_sleep_s=a.step_sleep,
                       straggler=straggler, host=a.host, updater=_updater(a.updater))


def _updater(text: str | None) -> dict[str, Any] | None:
    """``--updater adagrad`` or ``--updater l1prox:lr=0.05,lam=0.001``: the servers' update
    rule instead of the app's (``updaters.UPDATERS``), checked before anything starts."""
    if not text:
        return None
    from . import updaters

    name, _, params = text.partition(":")
    spec: dict[str, Any] = {"name": name}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        try:
            spec[key.strip()] = float(value) if eq else None
        except ValueError:
            raise ValueError(f"--updater {text}: {item!r} is not key=number") from None
        if not eq:
            raise ValueError(f"--updater {text}: {item!r} is not key=number")
    updaters.make(spec)  # an unknown name or parameter fails here, with the choices
    return spec


def _launch(a: argparse.Namespace) -> dict[str, Any]:
    if a.role:
        return _one_role(a)
    from common.bench import format_table

    from .launcher import launch

    out = launch(spec_from_args(a), run_dir=a.out, eval_every_s=a.eval_every,
                 faults=_faults(a), progress=not a.no_progress, ckpt_dir=a.checkpoint,
                 restore=a.restore)
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
    ring = [e for e in out["events"] if e["kind"] in ("ring", "worker_dead", "reassign")]
    for e in ring[1:]:
        print(f"  membership: {e['kind']} {e.get('why', e.get('worker', ''))} "
              f"-> epoch {e['epoch']}")
    if out["audit"]:
        print(f"  audit: {out['audit']}")
    print(f"  trace: {out['trace']}  (load in chrome://tracing or ui.perfetto.dev)")
    out.pop("losses", None)
    return out


def _one_role(a: argparse.Namespace) -> dict[str, Any]:
    """Run one role in this process, for a cluster spread over machines."""
    if a.role == "scheduler":
        import asyncio

        from .scheduler import serve

        config = {**spec_from_args(a).config(a.out), "exit_when_done": True}
        asyncio.run(serve(config, a.host, a.port))
    elif a.role == "server":
        import asyncio

        from .server import serve

        asyncio.run(serve(a.name or "s0", a.scheduler, a.host, a.port, a.out, None))
    else:
        from .worker import Worker

        report = Worker(a.name or "w0", a.scheduler, a.out).run()
        return {k: v for k, v in report.items() if k not in ("timeline", "metrics")}
    return {"role": a.role, "stopped": True}


def add_parser(sub, add) -> None:
    p = add("ps", lambda a: p.print_help() or {}, "minips: the Parameter Server (Li et al. 2014)")
    cmds = p.add_subparsers(dest="ps_command", required=True)
    la = cmds.add_parser("launch", help="start a scheduler, servers and workers and train",
                         description=__doc__.split("\n\n")[1] if __doc__ else None)
    la.set_defaults(func=_launch)
    la.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print the result as JSON last")
    la.add_argument("--servers", type=int, default=2)
    la.add_argument("--workers", type=int, default=2)
    la.add_argument("--app", choices=["sparse_lr", "mlp", "count"], default="sparse_lr")
    la.add_argument("--consistency", default="bsp", help="bsp, ssp:TAU or asp")
    la.add_argument("--replication", type=int, default=1, help="copies of each key range")
    la.add_argument("--vnodes", type=int, default=4, help="virtual nodes per server")
    la.add_argument("--steps", type=positive_int, default=100, help="steps per data shard")
    la.add_argument("--features", type=int, default=1 << 20, help="sparse_lr: key space")
    la.add_argument("--examples", type=int, default=8192, help="sparse_lr: dataset size")
    la.add_argument("--nnz", type=int, default=24, help="sparse_lr: features per example")
    la.add_argument("--lam", type=float, default=5e-3, help="sparse_lr: L1 strength")
    la.add_argument("--filters", nargs="*", default=[],
                    choices=SPARSE_LR_FILTERS)
    la.add_argument("--updater", default=None,
                    help="the servers' update rule instead of the app's: sgd, adagrad, "
                         "l1prox or sum, with parameters as in l1prox:lr=0.05,lam=0.001")
    la.add_argument("--hidden", type=int, default=64, help="mlp: hidden units")
    la.add_argument("--device", default="cpu", help="mlp: where workers compute (cuda)")
    la.add_argument("--batch", type=int, default=0, help="minibatch (0: the app's default)")
    la.add_argument("--lr", type=float, default=0.0, help="learning rate (0: app default)")
    la.add_argument("--seed", type=int, default=0)
    la.add_argument("--step-sleep", type=float, default=0.0,
                    help="seconds of simulated compute per step (sleep)")
    la.add_argument("--straggler", default=None,
                    help="RANK:FACTOR (one slow worker) or rotating:FACTOR")
    la.add_argument("--audit", type=int, default=0, help="audit keys per push (0: off)")
    la.add_argument("--kill-server", action="append", default=[], metavar="NAME@SECONDS")
    la.add_argument("--kill-worker", action="append", default=[], metavar="NAME@SECONDS")
    la.add_argument("--freeze", action="append", default=[], metavar="NAME@SECONDS:FOR")
    la.add_argument("--eval-every", type=float, default=1.0, help="monitor period (s)")
    la.add_argument("--checkpoint", default=None, help="write a checkpoint here at the end")
    la.add_argument("--restore", default=None, metavar="DIR",
                    help="go on from a checkpoint written by --checkpoint (same job, more "
                         "--steps)")
    la.add_argument("--out", default=None, help="run directory (logs, metrics, trace)")
    la.add_argument("--no-progress", action="store_true")
    la.add_argument("--host", default="127.0.0.1", help="address the nodes bind")
    la.add_argument("--role", choices=["scheduler", "server", "worker"], default=None,
                    help="run only this role (multi-machine use)")
    la.add_argument("--name", default=None, help="with --role: the node's name (s1, w0)")
    la.add_argument("--scheduler", default=None, help="with --role: HOST:PORT")
    la.add_argument("--port", type=int, default=0, help="with --role: port to bind")



def tour_step(quick: bool = True) -> dict[str, Any]:
    """``casebook tour``: 2 servers, 2 workers, SSP(2), sparse LR on 2^16 keys."""
    from .launcher import ClusterSpec, launch

    app = {"name": "sparse_lr", "features": 1 << 16, "examples": 4096, "batch": 256}
    out = launch(ClusterSpec(servers=2, workers=2, replication=2, consistency="ssp:2",
                             steps=32 if quick else 96, app=app),
                 eval_every_s=0.25, progress=False)
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
