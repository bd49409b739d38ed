"""``casebook flow ...``: train the digits demo, draw graphs, trace a step."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common.cli import non_negative_int, output_file, positive_int


def _require_device(device: str) -> None:
    """``--device cuda`` without a visible GPU: one clear line, not a PlacementError."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda needs a CUDA GPU, and torch sees none on this "
                             "machine; use --device cpu")


def checkpoint_prefix(text: str) -> str:
    """``--checkpoint``: a file prefix (TF's ``Saver.save(sess, prefix)``: PREFIX.npz,
    and a ``checkpoint`` state file beside it). A directory, or a path ending in ``/``,
    means ``DIR/digits`` (a bare ``ck/`` wrote a hidden ``ck/.npz``)."""
    if not text.strip():
        raise ValueError("--checkpoint is empty: give a file prefix such as out/flow/digits")
    if text.endswith("/") or Path(text).is_dir():
        return str(Path(text) / "digits")
    return text


def _train(args: argparse.Namespace) -> dict:
    from .digits import train

    _require_device(args.device)
    prefix = checkpoint_prefix(args.checkpoint)
    try:  # fail before training, not after it: an existing directory may be read-only
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=Path(prefix).parent):
            pass
    except OSError as e:
        raise ValueError(f"--checkpoint {args.checkpoint}: cannot write there "
                         f"({e.strerror})") from None
    r = train(args.model, args.device, args.epochs, args.batch, args.seed, prefix,
              progress=not getattr(args, "json", False))
    print(f"{r['model']} on {r['device']}: held-out accuracy {r['test_accuracy']:.2%} after "
          f"{r['epochs']} epochs in {r['train_seconds']:.1f} s\n"
          f"checkpoint {r['checkpoint']}; restored into a fresh session: "
          f"{r['restored_accuracy']:.2%}")
    return r


def _step(model: str, dev: str, two_cpus: bool):
    """Build the demo model and run one traced training step; return (session, plan, md)."""
    import numpy as np

    from .digits import build, load_split
    from .session import ConfigProto, RunMetadata, RunOptions, Session

    _require_device(dev)
    m = build(model, dev)
    Xtr, _, ytr, _ = load_split()
    cfg = ConfigProto(device_count={"CPU": 2 if two_cpus else 1})
    sess = Session(graph=m["graph"], config=cfg)
    sess.run(m["init"])
    feed = {m["x"]: Xtr[:32], m["y"]: ytr[:32].astype(np.int32)}
    sess.run(m["train"], feed)  # warm-up: builds and caches the plan
    md = RunMetadata()
    sess.run(m["train"], feed, options=RunOptions(trace_level=RunOptions.FULL_TRACE),
             run_metadata=md)
    return sess, sess.plan_for(m["train"], feed), md, m


def _dot(args: argparse.Namespace) -> dict:
    from .viz import to_dot

    sess, plan, _, m = _step(args.model, args.device, args.two_cpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"graph": out / f"{args.model}-graph.dot"}
    files["graph"].write_text(to_dot(m["graph"]))
    for stage in ("pruned", "optimized", "partitioned"):
        files[stage] = out / f"{args.model}-{stage}.dot"
        files[stage].write_text(to_dot(plan, stage))
    s = plan.pass_stats
    print(f"user graph: {len(m['graph'])} ops; training step after pruning: {s.nodes_before} "
          f"nodes; after passes: {s.nodes_after} ({s.changes}); devices: {plan.devices}")
    for k, f in files.items():
        print(f"  {k:12s} {f}")
    sess.close()
    return {"files": {k: str(v) for k, v in files.items()}, "nodes_before": s.nodes_before,
            "nodes_after": s.nodes_after, "changes": s.changes, "devices": plan.devices}


def _trace(args: argparse.Namespace) -> dict:
    from .viz import step_trace

    sess, plan, md, _ = _step(args.model, args.device, args.two_cpus)
    path = step_trace(md, plan).save(args.out)
    print(f"Chrome trace of one {args.model} training step ({len(md.step_stats)} nodes on "
          f"{plan.devices}; peak live bytes {md.peak_live_bytes}) -> {path}\n"
          f"open it in https://ui.perfetto.dev or chrome://tracing")
    sess.close()
    return {"trace": str(path), "nodes": len(md.step_stats), "peak_live_bytes":
            md.peak_live_bytes}


def add_parser(sub, add) -> None:
    flow = sub.add_parser("flow", help="miniflow: TensorFlow's dataflow core",
                          description="miniflow: TensorFlow's dataflow core")
    fsub = flow.add_subparsers(dest="flow_command", required=True)
    common_args = argparse.ArgumentParser(add_help=False)
    common_args.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                             help="the demo model")
    common_args.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                             help="where the model's ops run; cuda needs a GPU")

    def sub_add(name, fn, help):
        p = fsub.add_parser(name, help=help, description=help, parents=[common_args])
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print the result as JSON last")
        p.set_defaults(func=fn)
        return p

    t = sub_add("train", _train, "train on scikit-learn's digits, checkpoint, restore")
    t.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the training set (default: 12 for mlp, 15 for cnn)")
    t.add_argument("--batch", type=positive_int, default=32, help="minibatch size, examples")
    t.add_argument("--seed", type=non_negative_int, default=0,
                   help="random seed: train/test split, initial weights, shuffling")
    t.add_argument("--checkpoint", default="out/flow/digits",
                   help="file prefix: writes PREFIX.npz and a 'checkpoint' state file "
                        "beside it (a directory means DIR/digits)")
    d = sub_add("dot", _dot, "DOT files of the graph before/after passes and partitioning")
    d.add_argument("--out", default="out/flow", help="directory for the .dot files")
    d.add_argument("--two-cpus", action="store_true", help="place over /cpu:0 and /cpu:1")
    tr = sub_add("trace", _trace, "a Chrome trace of one training step")
    tr.add_argument("--out", default="out/flow/step-trace.json", type=output_file,
                    help="where to write the trace, JSON")
    tr.add_argument("--two-cpus", action="store_true", help="place over /cpu:0 and /cpu:1")
