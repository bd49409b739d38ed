"""``casebook ansor ...``: tune one workload, tune a whole model, show a log.

    casebook ansor tune --workload gemm --shape 4096,4096,4096 --dtype fp16 --trials 64 \\
        [--epilogue bias+relu] [--device cuda|sim|replay:FILE] [--log tune.jsonl] \\
        [--history earlier.jsonl]   # earlier records pre-train the cost model
    casebook ansor tune-model --model transformer --trials 256 [--strategy round-robin]
    casebook ansor show tune.jsonl [--plot best.png] [--device NAME]
    casebook ansor sim-table --out table.json   # a replay table from the simulator

Heavy imports happen inside the handlers, so ``casebook --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.cli import non_negative_int, output_file, positive_float, positive_int


def _seed(text: str) -> int:
    """A seed numpy and scikit-learn take: 0 to 2**32 - 1."""
    value = non_negative_int(text)
    if value >= 1 << 32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the result as JSON last")
    p.add_argument("--trials", type=positive_int, default=64,
                   help="kernel measurements in all, over every task")
    p.add_argument("--device", default="sim",
                   help="where kernels are measured: cuda (this GPU), sim (a simulated GPU) "
                        "or replay:FILE, a replay table")
    p.add_argument("--log", default=None,
                   help="JSON-lines tuning log, resumed if it exists (default: none)")
    p.add_argument("--history", default=None,
                   help="a log of earlier tuning on this device, or a replay table: "
                        "pre-trains the cost model (default: none)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="random seed of the search, the cost model and sim's noise, "
                        "0 to 2**32-1")
    p.add_argument("--per-round", type=positive_int, default=8,
                   help="measurements per search round")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the interpreter check of each new kernel on the sim device")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _print_best(summary: dict) -> bool:
    """Print the best kernel of each task and the total; False if a task has none."""
    from common.bench import format_table

    def cell(v, fmt="{}"):
        return "-" if v is None else fmt.format(v)

    rows = [(r["task"], cell(r["weight"]), cell(r["best_us"], "{:.2f}"),
             cell(r["tflops"], "{:.1f}"), r["sketch"] or "-", r["ann"] or "-")
            for r in summary["tasks"]]
    print(format_table(rows, ("task", "weight", "best us", "TFLOP/s", "sketch", "annotation")))
    failed = [r["task"] for r in summary["tasks"] if r["best_us"] is None]
    if failed:
        total = f"no latency: {len(failed)} task(s) have no successful measurement"
    elif summary.get("weighted_latency_us") is not None:
        total = f"weighted latency {summary['weighted_latency_us']:.2f} us"
    else:  # a log without task weights: say what the number is
        total = f"unweighted sum of best latencies {summary['latency_sum_us']:.2f} us " \
            "(the log records no task weights)"
    # tune and tune-model say how many trials came from the log; show reads only the log
    resumed = f" ({summary['resumed']} resumed from the log)" if "resumed" in summary else ""
    print(f"device {summary['device']}; {summary['trials']} trials{resumed}; "
          f"errors {summary['errors']}; {total}")
    return not failed


def _tune(args: argparse.Namespace) -> dict[str, Any]:
    from .tune import tune_task
    from .workloads import parse_workload

    task = parse_workload(args.workload, args.shape, args.dtype, args.epilogue)
    res = tune_task(task, args.trials, device=args.device, log=args.log, seed=args.seed,
                    history=args.history,
                    per_round=args.per_round, verify="none" if args.no_verify else "auto",
                    progress=not args.no_progress)
    out = res.summary()
    if not _print_best(out):  # a tuning run that found no kernel failed
        args.exit_status = 1
    return out


def _tune_model(args: argparse.Namespace) -> dict[str, Any]:
    from . import zoo
    from .tune import tune_model

    module, inputs = zoo.example(args.model, args.batch, args.seq)
    res = tune_model(module, inputs, args.trials, args.dtype, device=args.device, log=args.log,
                     seed=args.seed, per_round=args.per_round, strategy=args.strategy,
                     history=args.history,
                     verify="none" if args.no_verify else "auto",
                     progress=not args.no_progress)
    out = res.summary()
    out["curve"] = {"trials": res.schedule.trials, "weighted_latency_s": res.schedule.objective}
    if not _print_best(out):
        args.exit_status = 1
    return out


def _show(args: argparse.Namespace) -> dict[str, Any]:
    from common.plots import line_chart

    from .records import best_per_task, devices, load_records, of_device, task_weights

    if not Path(args.log).is_file():
        raise FileNotFoundError(f"{args.log}: no such file")
    records = load_records(args.log)
    if not records:
        raise ValueError(f"{args.log}: no records: an empty log (a run stopped before its "
                         f"first measurement), or not a miniansor tuning log")
    try:  # one device's times only (TVM's ApplyHistoryBest matches the target too)
        records = of_device(records, args.device)
    except ValueError as e:
        raise ValueError(f"{args.log}: {e}"
                         f"{' with --device' if args.device is None else ''}") from None
    best = best_per_task(records)
    curves: dict[str, tuple[list[int], list[float]]] = {}
    seen: dict[str, int] = {}
    top: dict[str, float] = {}
    for inp, res in records:
        k = inp.task.key
        seen[k] = seen.get(k, 0) + 1
        if res.ok:
            top[k] = max(top.get(k, 0.0), inp.task.flops / res.time / 1e12)
        if k in top:
            xs, ys = curves.setdefault(k, ([], []))
            xs.append(seen[k])
            ys.append(top[k])
    weights = task_weights(args.log, devices(records)[0])  # the weights of that run
    tasks = []
    for k in seen:  # every task of the log, also one whose measurements all failed
        b = best.get(k)
        tasks.append({"task": k, "weight": weights.get(k),
                      "best_us": None if b is None else b.time * 1e6,
                      "tflops": None if b is None else b.task.flops / b.time / 1e12,
                      "sketch": None if b is None else b.sketch.name,
                      "ann": None if b is None else b.ann})
    errors: dict[str, int] = {}
    for _, r in records:
        if not r.ok:
            errors[r.error.name] = errors.get(r.error.name, 0) + 1
    out = {"log": args.log, "records": len(records), "tasks": tasks,
           "errors": errors, "device": devices(records)[0], **_latency_totals(tasks),
           "curves": {k: {"trials": xs, "best_tflops": ys} for k, (xs, ys) in curves.items()}}
    _print_best({**out, "trials": len(records)})  # the table first: it is the point
    try:
        out["plot"] = line_chart(curves, args.plot or Path(args.log).with_suffix(".png"),
                                 "trials (of that task)", "best TFLOP/s so far",
                                 title=f"best throughput vs trials: {Path(args.log).name}")
    except OSError as e:
        if args.plot:  # asked for: an error
            raise
        out["plot"] = None  # beside a log in a read-only place: the table still stands
        print(f"no plot: {e.strerror} ({e.filename}); give --plot PATH", file=sys.stderr)
    else:
        print(f"plot: {out['plot']}", file=sys.stderr)
    return out


def _latency_totals(tasks: list[dict]) -> dict[str, float | None]:
    """The objective the tuner minimised, sum of weight x best latency (weights as the
    log recorded them), or None when some task has no weight; and the plain sum. Both
    are None when a task has no successful measurement: the model cannot run then, and
    a sum without it would look like a result (the tuner's summary says inf)."""
    if any(t["best_us"] is None for t in tasks):
        return {"weighted_latency_us": None, "latency_sum_us": None}
    plain = sum(t["best_us"] for t in tasks)
    weighted = None if any(t["weight"] is None for t in tasks) else \
        sum(t["weight"] * t["best_us"] for t in tasks)
    return {"weighted_latency_us": weighted, "latency_sum_us": plain}


def _sim_table(args: argparse.Namespace) -> dict[str, Any]:
    from .recorded import table_from_simulator, validate_table
    from .simulator import SimulatedGPU
    from .workloads import Task

    tasks = [Task.from_key(k) for k in args.tasks]
    table = table_from_simulator(tasks, SimulatedGPU(seed=args.seed), args.configs, args.seed)
    validate_table(table)
    import json

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, separators=(",", ":")) + "\n")
    n = sum(len(v) for v in table["tasks"].values())
    print(f"wrote {args.out}: {n} simulated configs of {len(tasks)} tasks")
    return {"out": args.out, "configs": n, "source": table["source"]}


def _record_table(args: argparse.Namespace) -> dict[str, Any]:
    """Measure random configs of each task's space on a GPU (or the simulator) into a
    replay table. Every chunk is saved to ``<out>.partial``, so that a run cut short
    keeps its data, and only a finished run replaces ``<out>``: a rerun killed after one
    chunk replaced a complete (committed) table with that chunk, which every reader took."""
    import re

    from tqdm import tqdm

    from .recorded import DATA_DIR, record_space
    from .simulator import SimulatedGPU
    from .workloads import Task

    tasks = [Task.from_key(k) for k in args.tasks]
    if args.device == "cuda":
        from .cuda import CudaDevice

        dev = CudaDevice(rep_ms=args.rep_ms)
    elif args.device == "sim":
        dev = SimulatedGPU(seed=args.seed)
    else:
        raise ValueError(f"--device must be cuda or sim, got {args.device!r}")
    slug = re.sub(r"[^a-z0-9]+", "-", dev.name.lower()).strip("-")
    out = Path(args.out or DATA_DIR / f"space-{slug}.json")
    bar = tqdm(total=len(tasks) * args.configs, desc="record", disable=args.no_progress)

    partial = out.with_name(f"{out.name}.partial")  # no reader's glob (space-*.json) takes it

    def save(rec, done: int) -> None:
        tmp = out.with_suffix(".tmp")
        rec.write(tmp)
        tmp.replace(partial)  # atomic: a reader never sees half a table
        bar.update(done - bar.n)

    try:
        rec = record_space(tasks, dev, args.configs, args.seed, on_chunk=save)
    except BaseException:
        if partial.exists():
            print(f"record-table stopped; what it measured is in {partial}", file=sys.stderr)
        raise
    finally:
        bar.close()
        if hasattr(dev, "close"):
            dev.close()
    rec.write(partial)  # (a task with an empty space makes no chunk)
    partial.replace(out)
    n = sum(len(v) for v in rec.tasks.values())
    errors = sum("error" in e for v in rec.tasks.values() for e in v.values())
    print(f"wrote {out}: {n} {rec.source} configs of {len(tasks)} tasks ({errors} errors)")
    return {"out": str(out), "configs": n, "errors": errors, "source": rec.source}


def add_parser(sub, add) -> None:
    top = add("ansor", lambda a: top.print_help() or {}, "miniansor: auto-tune Triton kernels")
    inner = top.add_subparsers(dest="ansor_command", required=True)

    def subcommand(name: str, help: str) -> argparse.ArgumentParser:
        return inner.add_parser(name, help=help, description=help)  # --help shows it too

    t = subcommand("tune", help="tune one workload")
    t.add_argument("--workload", required=True, choices=["gemm", "bmm", "softmax", "layernorm"],
                   help="the operator to tune")
    t.add_argument("--shape", required=True,
                   help="M,N,K (gemm), B,M,N,K (bmm) or rows,cols (softmax, layernorm)")
    t.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"],
                   help="element type")
    t.add_argument("--epilogue", default="none",
                   help="gemm only: ops fused after it, from bias, relu or gelu, res, "
                        "joined by '+', e.g. bias+gelu+res")
    _common(t)
    t.set_defaults(func=_tune)

    m = subcommand("tune-model", help="tune a whole model through the task scheduler")
    m.add_argument("--model", default="transformer", choices=["mlp", "transformer"],
                   help="a Llama-3-8B-like layer: its MLP or a whole transformer block")
    m.add_argument("--batch", type=positive_int, default=1, help="sequences per batch")
    m.add_argument("--seq", type=positive_int, default=2048, help="tokens per sequence")
    m.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"],
                   help="element type")
    m.add_argument("--strategy", default="gradient", choices=["gradient", "round-robin"],
                   help="how the task scheduler shares the trials among the model's tasks")
    _common(m)
    m.set_defaults(func=_tune_model)

    s = subcommand("show", help="best kernel per task and best-throughput-vs-trials plot")
    s.add_argument("log", help="a tuning log (JSON lines)")
    s.add_argument("--plot", default=None,
                   help="where to write the plot, PNG (default: the log's path with suffix .png)")
    s.add_argument("--device", default=None,
                   help="whose records, if the log has several devices': a name as the log "
                        "stores it, or sim, replay:FILE, or cuda for the log's one GPU "
                        "(default: the log's only device)")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the result as JSON last")
    s.set_defaults(func=_show)

    g = subcommand("sim-table", help="write a replay table from the simulated GPU")
    g.add_argument("--out", required=True, type=output_file,
                   help="where to write the replay table (JSON)")
    g.add_argument("--tasks", nargs="+", required=True,
                   help="task keys, e.g. gemm:4096x4096x4096:fp16:none")
    g.add_argument("--configs", type=positive_int, default=800,
                   help="random configs per task")
    g.add_argument("--seed", type=non_negative_int, default=0,
                   help="random seed of the configs drawn and of the simulated GPU's noise")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the result as JSON last")
    g.set_defaults(func=_sim_table)

    r = subcommand("record-table", help="measure random configs of each task's space "
                                        "into a replay table (on a GPU)")
    r.add_argument("--device", default="cuda", help="cuda (measured) or sim (simulated)")
    r.add_argument("--tasks", nargs="+", required=True,
                   help="task keys, e.g. gemm:4096x4096x4096:fp16:none")
    r.add_argument("--configs", type=positive_int, default=300,
                   help="random configs per task")
    r.add_argument("--seed", type=non_negative_int, default=0,
                   help="random seed of the configs drawn and of sim's noise")
    r.add_argument("--rep-ms", type=positive_float, default=25.0,
                   help="ms of repeated runs that time each config, do_bench's rep; cuda only")
    r.add_argument("--out", default=None, type=output_file,
                   help="where to write the replay table (default: "
                        "systems/miniansor/data/space-DEVICE.json)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the result as JSON last")
    r.set_defaults(func=_record_table)
