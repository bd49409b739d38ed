"""``casebook clipper start|deploy|query|load|trace|list|remove|stop|demo``: from a shell.

    casebook clipper start                       # query :1337, management :1338, gRPC :1339
    casebook clipper deploy --name rf --builtin digits-rf --app digits --slo-micros 20000
    casebook clipper query --app digits --input "$(python -c 'print([0.0]*64)')"
    casebook clipper load --app digits --rate 300 --duration 5 --slo-ms 20
    casebook clipper trace --out trace.json      # if started with --trace-sample 0.01
    casebook clipper list                        # applications and models
    casebook clipper remove --model rf:1 --app digits
    casebook clipper stop

``start`` leaves Clipper running after the command returns; the other commands find it
by its ports. Heavy imports happen inside the handlers, so ``casebook --help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from common.cli import (
    fraction,
    non_negative_float,
    non_negative_int,
    output_file,
    port,
    positive_float,
    positive_int,
)
from common.net import address

BUILTINS = ("sum", "echo", "digits-lr", "digits-rf")


def _conn(args: argparse.Namespace) -> Any:
    from .admin import ClipperConnection
    from .manager import LocalContainerManager

    conn = ClipperConnection(LocalContainerManager(
        host=args.host, query_port=args.query_port, mgmt_port=args.mgmt_port,
        grpc_port=args.grpc_port))
    conn.connect()  # a Clipper must answer there: one clear line if none does
    return conn


def _start(args: argparse.Namespace) -> dict[str, Any]:
    from .admin import ClipperConnection
    from .manager import LocalContainerManager

    cm = LocalContainerManager(host=args.host, detach=True)
    conn = ClipperConnection(cm)
    conn.start_clipper(args.query_port, args.mgmt_port, args.grpc_port, args.cache_bytes,
                       args.trace_sample)
    print(f"Clipper running (pid {cm.info['pid']}): queries http://{cm.get_query_addr()}, "
          f"management http://{cm.get_admin_addr()}, gRPC {cm.get_grpc_addr()}; "
          f"log {cm.info['log']}")
    return cm.info


def _builtin_model(name: str) -> tuple[str, Any]:
    import numpy as np

    if name == "sum":
        return "closure", lambda xs: [float(np.sum(x)) for x in xs]
    if name == "echo":
        return "closure", lambda xs: np.zeros(len(xs))
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    if name == "digits-lr":
        from sklearn.linear_model import LogisticRegression

        return "sklearn", LogisticRegression(max_iter=1000).fit(X, y)
    from sklearn.ensemble import RandomForestClassifier

    return "sklearn", RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)


def _deploy(args: argparse.Namespace) -> dict[str, Any]:
    from .batching import BatchingConfig
    from .datatypes import NUMERIC_TYPES
    from .deployers import save_model

    if args.builtin and args.input_type not in NUMERIC_TYPES:  # they all sum or predict
        raise ValueError(f"--builtin {args.builtin} takes numbers: --input-type one of "
                         f"{list(NUMERIC_TYPES)}, not {args.input_type!r}")
    batching = BatchingConfig(args.batching, size=args.batch_size,
                              max_size=max(args.batch_size, 512),
                              max_delay_s=args.max_delay_ms / 1e3)
    conn = _conn(args)
    if args.app:  # the link would be refused after the deploy (made the current version)
        from .datatypes import same_input_type

        other = sorted({m["input_type"] for m in conn.get_all_models(verbose=True)
                        if m["model_name"] == args.name
                        and not same_input_type(m["input_type"], args.input_type)})
        if other:
            raise ValueError(f"model {args.name!r} has versions taking input_type {other}; "
                             f"an application links models of its own input type only, "
                             f"so /{args.app} ({args.input_type!r}) could not link it: "
                             f"deploy under another --name")
    # The application first: a bad name, SLO or input type is refused before a model
    # is deployed (which would be left behind, and a retry told "already deployed").
    new_app = bool(args.app) and args.app not in conn.get_all_apps()
    if new_app:
        conn.register_application(args.app, args.input_type, args.default_output,
                                  args.slo_micros, selection_policy=args.policy)
    elif args.app:
        from .datatypes import same_input_type

        have = conn.get_app_info(args.app)["input_type"]
        if not same_input_type(have, args.input_type):
            raise ValueError(f"application {args.app!r} takes input_type {have!r}; the "
                             f"model would take {args.input_type!r}")
    path, made, stage = args.path, None, "training"
    try:  # the built-in is trained only now that everything refusable was checked
        if args.builtin:
            kind, obj = _builtin_model(args.builtin)
            path = made = save_model(obj, kind)
        stage = "deploying"
        conn.deploy_model(args.name, args.version, args.input_type, path,
                          num_replicas=args.replicas, batching=batching)
        stage = "linking"
        if args.app:
            conn.link_model_to_app(args.app, args.name)
    except BaseException as e:  # Ctrl-C too: no new application is left without a model
        interrupted = isinstance(e, KeyboardInterrupt)
        model = f"{args.name}:{args.version}"
        if interrupted and stage != "training":  # said first: the rollback below waits
            print((f"the server may still finish deploying {model}" if stage == "deploying"
                   else f"{model} is deployed") +  # (Ctrl-C came during the link)
                  f"; see casebook clipper list, undo with casebook clipper remove --model "
                  f"{model}", file=sys.stderr)
        if new_app:
            _roll_back_app(conn, args.app, waits=interrupted and stage == "deploying",
                           linked=stage == "linking")
        raise
    finally:
        if made:  # the store holds its own copy now (ReplicaSupervisor.install)
            shutil.rmtree(made, ignore_errors=True)
    info = conn.get_model_info(args.name, args.version)
    source = f"the built-in {args.builtin}" if args.builtin else path
    print(f"deployed {args.name}:{args.version} from {source} ({info['replicas']} replica"
          f"{'' if info['replicas'] == 1 else 's'}, "
          f"{args.batching} batching)" + (f", linked to /{args.app}/predict" if args.app else ""))
    return info


def _roll_back_app(conn: Any, app: str, waits: bool, linked: bool) -> None:
    """Unregister the application a failed deploy registered. The management server
    takes one operation at a time, so after a Ctrl-C this waits behind the deploy the
    server is still doing; a second Ctrl-C leaves the application, and says so (and
    whether the model may have been linked to it: the link was sent)."""
    if waits:
        print(f"unregistering application {app}, after that deploy (Ctrl-C again to "
              f"leave it registered)", file=sys.stderr)
    try:
        conn.unregister_application(app)
    except KeyboardInterrupt:
        what = "perhaps with the model linked" if linked else "with no model linked"
        print(f"application {app} is still registered, {what}; remove it with casebook "
              f"clipper remove --app {app}", file=sys.stderr)
        raise


def _query(args: argparse.Namespace) -> dict[str, Any]:
    from .admin import http_json
    from .datatypes import InputError, loads_strict

    flag, text = ("--input-batch", args.input_batch) if args.input_batch else \
        ("--input", args.input)
    try:
        value = loads_strict(text)
    except (ValueError, InputError) as e:
        hint = (f" (a text input is a JSON string too: {flag} '\"{text[:20]}\"')"
                if text[:1].isalpha() else "")
        raise ValueError(f"{flag} {text[:60]!r} is not JSON Clipper takes: {e}{hint}") \
            from None
    doc = {"input_batch": value} if args.input_batch else {"input": value}
    url = f"http://{address(args.host, args.query_port)}/{args.app}/predict"
    out = http_json(url, doc)
    if not getattr(args, "json", False):  # --json prints the result once, last
        print(json.dumps(out))
    return out


# One generator process sends a few thousand queries a second (about 250-600 us of CPU
# each here; docs/results/miniclipper, loadgen_cpu_us_per_query): past MAX_LOAD_RATE it
# only queues, and reports long after the run was meant to end. Every query's latency
# is recorded, and its send time drawn up front: MAX_LOAD_QUERIES bounds that memory.
# Between a few thousand and MAX_LOAD_RATE, the run measures how late it sent, and says
# so when that lag is large (a faster machine keeps up with more).
MAX_LOAD_RATE, MAX_LOAD_QUERIES = 20_000, 1_000_000


def _load(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from common import plots

    from .loadgen import LoadSpec, integer_inputs, run_process

    kind, _, n = args.inputs.partition(":")
    if args.inputs != "digits" and (kind != "random" or not n.isdigit() or int(n) < 1):
        raise ValueError(f"--inputs {args.inputs}: use digits, or random:DIM with DIM a "
                         f"whole number above 0")
    if args.rate > MAX_LOAD_RATE:
        raise ValueError(f"--rate {args.rate:g}: one load process sends a few thousand "
                         f"queries per second; at most {MAX_LOAD_RATE} q/s")
    if args.rate * args.duration > MAX_LOAD_QUERIES:
        raise ValueError(f"--rate {args.rate:g} for {args.duration:g} s is "
                         f"{args.rate * args.duration:,.0f} queries, and each one's latency "
                         f"is recorded: at most {MAX_LOAD_QUERIES:,}; give a shorter "
                         f"--duration")
    conn = _conn(args)
    info = conn.get_app_info(args.app)
    if info is None:
        raise LookupError(f"no application named {args.app!r}; registered: "
                          f"{conn.get_all_apps()}")
    input_type = info["input_type"]  # how to send and vary inputs
    integers = integer_inputs(input_type)  # a ValueError for a "strings" or "bytes" app
    if args.inputs == "digits":
        from sklearn.datasets import load_digits

        pool = load_digits().data[:500]  # whole numbers (0-16): an integers app takes them
    else:
        rng, dim = np.random.default_rng(0), int(n)
        pool = rng.integers(-100, 100, (500, dim)) if integers else \
            rng.standard_normal((500, dim))
    url = f"http://{address(args.host, args.query_port)}/{args.app}/predict"
    spec = LoadSpec(url, pool.tolist(), phases=[(args.duration, args.rate)],
                    slo_s=args.slo_ms / 1e3, seed=args.seed, input_type=input_type)
    s = run_process(spec)
    out = Path(args.out)
    png = plots.latency_cdf({f"{args.app} @ {args.rate:g} q/s": s["latencies_ms"]},
                            out / f"latency_cdf_{args.app}.png", slo=args.slo_ms,
                            title=f"open-loop Poisson load on /{args.app}/predict")
    s.pop("latencies_ms")
    s.pop("scheduled_s")
    print(f"{s['sent']} queries at {args.rate:g}/s for {args.duration:g} s: goodput "
          f"{s['goodput_qps']:.0f}/s ({s['within_slo']:.1%} within {args.slo_ms:g} ms, "
          f"non-default); p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
          f"p99.9 {s['p999_ms']:.2f} ms of answered queries (p99.9 of every query, "
          f"failures included: {s['p999_all_ms']:.2f} ms); {s['default']} answered with "
          f"the default output, {s['rejected']} rejected, {s['errors']} errors; "
          f"CDF plot {png}")
    if s["send_late_p99_ms"] > max(1.0, 0.1 * args.slo_ms):
        print(f"note: the load generator itself fell behind (p99 {s['send_late_p99_ms']:.1f} "
              f"ms late sending), and the latencies above include that: they describe "
              f"this process as much as the server; give a lower --rate", file=sys.stderr)
    if s.get("connecting_p99_ms", 0.0) > max(1.0, 0.1 * args.slo_ms):
        print(f"note: the server was slow to accept connections (p99 "
              f"{s['connecting_p99_ms']:.1f} ms connecting; a stalled server's listen "
              f"queue fills, and the kernel makes new clients retry after 1 s, 3 s...): "
              f"that wait is in the latencies above, and it is the server's",
              file=sys.stderr)
    return {**s, "plot": png}


def _stop(args: argparse.Namespace) -> dict[str, Any]:
    from .admin import http_json

    out = http_json(f"http://{address(args.host, args.mgmt_port)}/admin/shutdown", {})
    print("Clipper is shutting down (its containers first)")
    return out


def _trace(args: argparse.Namespace) -> dict[str, Any]:
    from .admin import http_json

    url = f"http://{address(args.host, args.mgmt_port)}/admin/trace"
    doc = http_json(url, method="GET")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
    print(f"wrote {len(doc['traceEvents'])} trace events to {out}; open it in "
          f"https://ui.perfetto.dev or chrome://tracing")
    return {"path": str(out), "events": len(doc["traceEvents"])}


def _list(args: argparse.Namespace) -> dict[str, Any]:
    """What is deployed: Clipper's ``get_all_apps(verbose=True)`` and
    ``get_all_models(verbose=True)`` (clipper_admin has no shell command; ours prints them)."""
    conn = _conn(args)
    apps, models = conn.get_all_apps(verbose=True), conn.get_all_models(verbose=True)
    for a in sorted(apps, key=lambda a: a["name"]):
        print(f"app {a['name']}: {a['input_type']}, SLO {a['latency_slo_micros']} us, "
              f"{a['selection_policy']}, default {a['default_output']!r}, models "
              f"{', '.join(a['linked_models']) or '(none linked)'}")
    for m in sorted(models, key=lambda m: (m["model_name"], m["model_version"])):
        print(f"model {m['model_name']}:{m['model_version']}"
              f"{' (current)' if m['is_current_version'] else ''}: {m['replicas']} replica"
              f"{'' if m['replicas'] == 1 else 's'}, {m['batching']['policy']} batching, "
              f"{m['queue_length']} queued")
    if not apps and not models:
        print("nothing deployed")
    return {"applications": apps, "models": models}


def _remove(args: argparse.Namespace) -> dict[str, Any]:
    """Undo a deploy from the shell: ``stop_versioned_models`` / ``stop_models`` and
    ``unregister_application`` of clipper_admin. Everything named is checked first, so a
    typo removes nothing."""
    if not args.model and not args.app:
        raise ValueError("name what to remove: --model NAME[:VERSION] and/or --app NAME")
    conn = _conn(args)
    deployed = {(m["model_name"], m["model_version"]) for m in conn.get_all_models(verbose=True)}
    versions: dict[str, list[str]] = {}
    for spec in args.model or []:
        name, _, version = spec.partition(":")
        got = sorted(v for n, v in deployed if n == name and version in ("", v))
        if not got:
            raise LookupError(f"--model {spec}: not deployed; deployed: "
                              f"{sorted(f'{n}:{v}' for n, v in deployed) or 'none'}")
        versions.setdefault(name, []).extend(v for v in got if v not in versions.get(name, []))
    apps = list(dict.fromkeys(args.app or []))  # each once, in the order given
    missing = sorted(set(apps) - set(conn.get_all_apps()))
    if missing:
        raise LookupError(f"--app {missing[0]}: no such application; registered: "
                          f"{sorted(conn.get_all_apps()) or 'none'}")
    for app in apps:  # first, so no application answers from a model going away
        conn.unregister_application(app)
    conn.stop_versioned_models(versions)
    gone = [f"{n}:{v}" for n, vs in versions.items() for v in vs]
    print("removed " + ", ".join([f"app {a}" for a in apps] + [f"model {m}" for m in gone]))
    return {"applications": apps, "models": gone}


def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from .tour import demo

    return demo(quick=not args.full)


def add_parser(sub: Any, add: Any) -> None:
    """Add ``casebook clipper ...`` (``add`` is common.cli's subcommand factory)."""
    summary = (__doc__ or "").partition("\n")[0]  # None under python -OO
    clipper = sub.add_parser("clipper", help="run miniclipper from the shell",
                             description=summary.replace("``", ""))
    inner = clipper.add_subparsers(dest="clipper_command", required=True)

    def cmd(name: str, fn: Any, help: str, address: bool = True) -> argparse.ArgumentParser:
        p = inner.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print the result as JSON last")
        p.set_defaults(func=fn)
        if not address:  # (demo starts its own Clipper on free ports)
            return p
        p.add_argument("--host", default="127.0.0.1",
                       help="the address Clipper listens on (start) or is reached at")
        p.add_argument("--query-port", type=port, default=1337,
                       help="the port of the REST query API, /APP/predict")
        p.add_argument("--mgmt-port", type=port, default=1338, help="the management API's port")
        p.add_argument("--grpc-port", type=port, default=1339, help="the gRPC query API's port")
        return p

    s = cmd("start", _start, "start Clipper in the background (on loopback unless --host)")
    s.add_argument("--cache-bytes", type=non_negative_int, default=32 << 20,
                   help="the prediction cache's size, bytes; 0: no cache (identical "
                        "queries in flight still share one call)")
    s.add_argument("--trace-sample", type=fraction, default=0.0,
                   help="share of queries traced, 0 to 1; see casebook clipper trace")
    d = cmd("deploy", _deploy, "deploy a model directory or a built-in model")
    d.add_argument("--name", required=True, help="the model's name")
    d.add_argument("--version", default="1", help="the model's version, a string")
    what = d.add_mutually_exclusive_group(required=True)
    what.add_argument("--path", help="a model directory written by a deployer")
    what.add_argument("--builtin", choices=BUILTINS,
                      help="a model made here: sum, echo (answers 0), digits-lr or "
                           "digits-rf (scikit-learn on the digits)")
    d.add_argument("--input-type", default="doubles",
                   help="what the model takes: integers, floats, doubles, bytes or strings")
    d.add_argument("--replicas", type=non_negative_int, default=1,
                   help="model containers to run, 0 to 64")
    d.add_argument("--batching", default="aimd",  # checked against batching.CONTROLLERS
                   help="how a replica sizes its batches: aimd, quantile, static (keeps "
                        "--batch-size), or any other name in batching.CONTROLLERS")
    d.add_argument("--batch-size", type=positive_int, default=1,
                   help="the static batch size; where aimd and quantile start")
    d.add_argument("--max-delay-ms", type=non_negative_float, default=0.0,
                   help="ms a replica may wait for a fuller batch, under 10000; 0: no wait")
    d.add_argument("--app", help="register (if new) and link this application "
                                 "(default: deploy only)")
    d.add_argument("--slo-micros", type=positive_int, default=100_000,
                   help="a new --app's latency SLO, us")
    d.add_argument("--default-output", default="None",
                   help="what a new --app answers when no model does within the SLO, a string")
    d.add_argument("--policy", default="exp3",  # checked against selection.POLICIES
                   help="a new --app's model selection policy: default, exp3, exp4, or any "
                        "other name in selection.POLICIES")
    q = cmd("query", _query, "send one query (or a batch) to an application")
    q.add_argument("--app", required=True, help="the application to query")
    one = q.add_mutually_exclusive_group(required=True)  # no silent default input
    one.add_argument("--input", help="one input, as JSON")
    one.add_argument("--input-batch", help="a list of inputs, as JSON")
    ld = cmd("load", _load, "open-loop Poisson load from a separate process")
    ld.add_argument("--app", required=True, help="the application to load")
    ld.add_argument("--rate", type=positive_float, default=200.0,
                    help=f"mean rate of the Poisson arrivals, q/s, at most {MAX_LOAD_RATE}")
    ld.add_argument("--duration", type=positive_float, default=5.0,
                    help=f"how long to send, s; at most {MAX_LOAD_QUERIES:,} queries in all")
    ld.add_argument("--slo-ms", type=positive_float, default=20.0,
                    help="the latency bound of goodput and of the CDF plot, ms")
    ld.add_argument("--inputs", default="digits",
                    help="digits (scikit-learn's 8x8 images) or random:DIM, random vectors of DIM")
    ld.add_argument("--seed", type=non_negative_int, default=0,
                    help="random seed of the arrival times and the inputs picked")
    ld.add_argument("--out", default="out/clipper-load",
                    help="directory of the latency CDF plot")
    tr = cmd("trace", _trace, "save the Chrome trace of sampled queries (start --trace-sample)")
    tr.add_argument("--out", default="out/clipper-trace.json", type=output_file,
                    help="where to write the trace, JSON")
    cmd("list", _list, "the registered applications and the deployed models")
    rm = cmd("remove", _remove, "stop model versions and unregister applications")
    rm.add_argument("--model", action="append", metavar="NAME[:VERSION]",
                    help="a model's version, or every version of it (repeatable)")
    rm.add_argument("--app", action="append", metavar="NAME",
                    help="an application to unregister (repeatable)")
    cmd("stop", _stop, "shut Clipper and its containers down")
    dm = cmd("demo", _demo, "the tour step: batching and caching in ~20 s, on a Clipper "
             "of its own", address=False)
    dm.add_argument("--full", action="store_true", help="longer load runs (slower)")
