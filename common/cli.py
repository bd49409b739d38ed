"""``casebook``: one command line for the measuring layer and all four systems.

Every subcommand accepts ``--json``; with it, the command's result is printed as one
JSON document on the last line of standard output, so scripts and tests can read it
(progress bars go to standard error).

Each system adds its own subcommand from its ``cli.py`` (``add_parser(subparsers)``),
listed in ``SYSTEM_CLIS``. Only the system a command names is imported: importing all
four would load torch, Triton and scikit-learn (about 3 s) to print ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

from .procs import exit_on_termination
from .trace import strict_json

# subcommand -> (module with add_parser, the one line ``casebook --help`` shows for it)
SYSTEM_CLIS: dict[str, tuple[str, str]] = {
    "clipper": ("systems.miniclipper.cli", "run miniclipper from the shell"),
    "flow": ("systems.miniflow.cli", "miniflow: TensorFlow's dataflow core"),
    "ansor": ("systems.miniansor.cli", "miniansor: auto-tune Triton kernels"),
    "ps": ("systems.minips.cli", "minips: the Parameter Server (Li et al. 2014)"),
}


def _env(args: argparse.Namespace) -> dict[str, Any]:
    from .env import machine_info

    if args.refresh:
        from .devices import cpu_spec

        cpu_spec(refresh=True)
    info = machine_info()
    r = info["cpu_roofline"]
    gpu = info["gpu"]["name"] if info["gpu"] else "none"
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)"
                     for b in info["blas"] if b["user_api"] == "blas")
    print(f"CPU      {info['cpu']}  ({info['cores']} cores usable)\n"
          f"BLAS     {blas or 'unknown'}\n"
          f"torch    {info['versions']['torch']}  ({info['torch_threads']} threads)  "
          f"triton {info['versions']['triton']}\n"
          f"GPU      {gpu}\n"
          f"roofline {r['fp32_flops'] / 1e9:.1f} GFLOP/s fp32, "
          f"{r['mem_bandwidth'] / 1e9:.1f} GB/s, ridge {r['ridge_flop_per_byte']:.1f} FLOP/B "
          f"(measured {r['date']})")
    return info


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from .bench import SUITES, format_table, run_suite, summary_rows

    # `timeout` sends SIGTERM: turn it into SystemExit so that `finally` blocks still run
    # (miniansor's GPU cases save the table of what they measured in one)
    exit_on_termination()
    if args.device == "cuda":  # before anything is written over the committed results
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device cuda needs a CUDA GPU, and torch {torch.__version__} "
                             f"sees none here (the cuda cases run on a GPU machine: "
                             f"scripts/gpu-suite.sh)")
    systems = list(SUITES) if args.system in (None, "all") else [args.system]
    if args.only:  # a typo must not write an empty results.json over the committed one
        from .bench import load_suite

        names = {s: {c.name for c in load_suite(s) if c.device == args.device}
                 for s in systems}
        unknown = sorted(set(args.only) - set().union(*names.values()))
        if unknown:
            raise UsageError(f"--only {unknown}: no such {args.device} case in "
                             f"{', '.join(systems)}; there are "
                             f"{sorted(set().union(*names.values()))}")
        systems = [s for s in systems if names[s] & set(args.only)]
    docs, rows = [], []
    for s in systems:
        doc = run_suite(s, device=args.device, quick=args.quick, out=args.out,
                        only=args.only, progress=not args.no_progress)
        docs.append(doc)
        rows += [(s, *r) for r in summary_rows(doc)]
        print(f"wrote {args.out}/{s}/{args.device}/results.json", file=sys.stderr)
    print(format_table(rows, ("system", "case", "target", "measured", "held")))
    failed = [f"{d['system']}:{c['case']}" for d in docs for c in d["cases"] if c.get("error")]
    if failed:  # a target not held is a result; a case that raised is a failed run
        print(f"casebook bench: {len(failed)} case(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        args.exit_status = 1
    return docs[0] if len(docs) == 1 else {"runs": docs}


def _tour(args: argparse.Namespace) -> dict[str, Any]:
    from .tour import run_tour

    return run_tour(quick=not args.full)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that ends an option's help with "(default: X)", except a flag's (off
    unless given) and a default of None or [] (nothing given): such an option's help says
    in words what leaving it out means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` that prints the description as written (an example)."""


class ArgumentParser(argparse.ArgumentParser):
    """A parser whose help shows the defaults (:class:`HelpFormatter`). ``add_subparsers``
    makes subparsers of their parent's class, so every subcommand's parser, the
    systems' too, is one of these."""

    def __init__(self, *args: Any, formatter_class: type = HelpFormatter, **kw: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kw)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: the system it names gets its full subcommand tree, the
    others a one-line stub (enough for ``casebook --help`` and for argparse to say which
    commands exist). Without ``argv``, every system's tree (tests, docs)."""
    summary = (__doc__ or "").partition("\n")[0]  # None under python -OO
    p = ArgumentParser(prog="casebook", description=summary.replace("``", ""))
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON last")
        sp.set_defaults(func=fn)
        return sp

    e = add("env", _env, "describe this machine and its measured CPU roofline")
    e.add_argument("--refresh", action="store_true",
                   help="probe the CPU again instead of reading this machine's cached probe")

    from .bench import SUITES

    b = add("bench", _bench, "run a system's benchmark cases against their baselines")
    b.add_argument("system", nargs="?", choices=[*SUITES, "all"], default=None,
                   help="the system whose cases to run (default: all)")
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="run the cases for this device; cuda needs a GPU")
    b.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    b.add_argument("--out", default="out/bench", help="results go to OUT/SYSTEM/DEVICE/")
    b.add_argument("--only", nargs="+", help="run only these cases, by name (default: every case)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = add("tour", _tour, "a walk through the measuring layer and every system (about a minute)")
    t.add_argument("--full", action="store_true", help="larger sizes (slower)")

    words = [w for w in argv if not w.startswith("-")] if argv is not None else None
    for name, (module, help) in SYSTEM_CLIS.items():
        if words is None or (words and words[0] == name):
            importlib.import_module(module).add_parser(sub, add)
        else:
            sub.add_parser(name, help=help)
    return p


def _positive(cast: Callable[[str], Any], zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number above 0 (or ``zero``: at least 0) of type
    ``cast`` (epochs, steps, trials, rates, seeds); argparse turns the
    ArgumentTypeError into one usage line naming the flag."""
    def parse(text: str) -> Any:
        try:
            x = cast(text)
        except ValueError:
            what = "whole number" if cast is int else "number"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if not ((x >= 0 if zero else x > 0) and math.isfinite(x)):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'of at least 0' if zero else 'above 0'}, got {text}")
        return x
    return parse


positive_int, positive_float = _positive(int), _positive(float)
non_negative_int, non_negative_float = _positive(int, zero=True), _positive(float, zero=True)


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (the OS picks one) to 65535."""
    p = non_negative_int(text)
    if p > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {text}")
    return p


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1] (a share, a probability)."""
    x = non_negative_float(text)
    if x > 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return x


def output_file(text: str) -> str:
    """An argparse type: a file to write. A name that ends in "/" or is an existing
    directory is refused: ``Path("traces/")`` is ``traces``, so the file took the
    directory's name, or the run ended, after its work, with "Is a directory"."""
    if not text or text.endswith(os.sep) or os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file, such as "
                                         f"{os.path.join(text or '.', 'out.json')}")
    return text


class UsageError(Exception):
    """A command that cannot do what was asked; main prints it as one line."""


# What a user's input or environment causes (a bad flag value, no server on the port, a
# missing file): one line, not a traceback. TypeError, AttributeError and the like keep
# their traceback; but a bug can raise these classes too (a KeyError, a RuntimeError),
# so CASEBOOK_DEBUG=1 shows the traceback of every error.
USER_ERRORS = (UsageError, ValueError, OSError, LookupError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # the shell expands ~ only where a word starts: --out=~/x (or replay:~/t.json) came as
    # written, and wrote into a directory named "~" under the working directory
    argv = [re.sub(r"^(--[\w-]+=(?:replay:)?|replay:)~(?=/|$)",
                   lambda m: m[1] + os.path.expanduser("~"), a) for a in argv]
    for name in ("stdout", "stderr"):  # closed by the shell (2>&-): Python sets None, and
        if getattr(sys, name) is None:  # the first progress bar died with no word at all
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    args = None
    try:  # the parser too: it imports the system's package (torch, sklearn...), seconds
        args = build_parser(argv).parse_args(argv)  # in which Ctrl-C was a traceback
        result = args.func(args)
    except KeyboardInterrupt:
        print("casebook: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM or SIGHUP, made an exit by exit_on_termination
        if e.code in (128 + signal.SIGTERM, 128 + signal.SIGHUP):
            print("casebook: terminated", file=sys.stderr)
        raise
    except USER_ERRORS as e:
        if os.environ.get("CASEBOOK_DEBUG") or args is None:  # (the parser's own: a bug)
            raise
        print(f"casebook {args.command}: error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(strict_json(result), allow_nan=False))
    return getattr(args, "exit_status", 0)  # a command may say it failed after all


if __name__ == "__main__":
    sys.exit(main())
