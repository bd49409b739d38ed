"""The benchmark harness behind ``casebook bench``: cases, targets, one JSON per run.

Every system states its benchmarks the same way. A :class:`Case` measures *ours* against
one or more *baselines in the same run* (never against a number remembered from another
day or machine) and states its :class:`Target` s up front, e.g. "ours/torch <= 0.75".
A run of one system's suite produces one JSON document (schema below), a markdown table
and plots, written where the docs include them.

Suites are plain modules listed in ``SUITES``; each exposes ``CASES: list[Case]``.
"""

from __future__ import annotations

import importlib
import json
import math
import operator
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .env import machine_info
from .trace import strict_json, write_json_atomic

SCHEMA_VERSION = 1

SUITES: dict[str, str] = {
    "miniflow": "systems.miniflow.bench",
    "miniclipper": "systems.miniclipper.bench",
    "miniansor": "systems.miniansor.bench",
    "minips": "systems.minips.bench",
    "common": "common.selfcheck",
}

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Target:
    """A stated goal on one metric, e.g. ``Target("ratio_vs_torch", "<=", 0.75)``.

    ``issue=False`` marks a check we chose ourselves (a sanity check, a variant of an
    issue's setting): the tables show it as an *extra check*, and the overview's count
    of targets held leaves it out, so that count is of the issues' targets only."""

    metric: str
    op: str
    threshold: float
    description: str = ""
    issue: bool = True

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"Target op must be one of {sorted(_OPS)}, got {self.op!r}")

    def check(self, metrics: dict[str, float]) -> dict[str, Any]:
        value = metrics.get(self.metric)
        held = (value is not None and not (isinstance(value, float) and math.isnan(value))
                and _OPS[self.op](value, self.threshold))
        return {"metric": self.metric, "op": self.op, "threshold": self.threshold,
                "value": value, "held": bool(held), "description": self.description,
                "issue": self.issue}


@dataclass
class Context:
    """What a case needs to know about the run it is part of."""

    device: str = "cpu"
    quick: bool = False
    out_dir: Path = Path("out/bench")
    progress: bool = True

    def pick(self, full: Any, quick: Any) -> Any:
        """The full-run or the ``--quick`` value of a parameter."""
        return quick if self.quick else full


@dataclass
class Result:
    """What a case measured. ``ratios`` hold per-pair ratio summaries (from
    :class:`common.timing.Comparison`.to_dict()); their medians are also metrics."""

    metrics: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, dict] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)  # raw data behind plots
    plots: list[str] = field(default_factory=list)
    notes: str = ""


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    baselines: tuple[str, ...]
    run: Callable[[Context], Result]
    targets: tuple[Target, ...] = ()
    device: str = "cpu"  # the device kind this case needs: "cpu" or "cuda"


def load_suite(system: str) -> list[Case]:
    if system not in SUITES:
        raise KeyError(f"unknown system {system!r}; choose from {sorted(SUITES)}")
    return list(importlib.import_module(SUITES[system]).CASES)


def run_case(case: Case, ctx: Context) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        res = case.run(ctx)
        error = None
    except Exception as e:  # one broken case must not lose the others' results
        res = Result(notes=f"case failed: {e!r}")
        error = traceback.format_exc()
    try:
        entry = _entry(case, res, error, t0)
        _check_case(entry, f"case {case.name!r}")
        return entry
    except (ValueError, TypeError, KeyError) as e:  # a malformed result (a str metric):
        return _entry(case, Result(notes=f"case failed: it returned a malformed result: "
                                         f"{e}"), f"{type(e).__name__}: {e}", t0)


def _entry(case: Case, res: Result, error: str | None, t0: float) -> dict[str, Any]:
    # a NaN metric (no value: nothing measured) is written as null, which JSON has and
    # the tables show as n/a; json.dump would write NaN, which strict readers refuse
    metrics = {k: None if isinstance(v, float) and math.isnan(v) else v
               for k, v in res.metrics.items()}
    for name, r in res.ratios.items():
        metrics.setdefault(name, r["ratio"])
    # and so is an infinite one, as in --json (after the targets saw it: inf >= 2 holds)
    return strict_json({
        "case": case.name,
        "description": case.description,
        "baselines": list(case.baselines),
        "device": case.device,
        "metrics": metrics,
        "ratios": res.ratios,
        "targets": [t.check(metrics) for t in case.targets],
        "series": res.series,
        "plots": res.plots,
        "notes": res.notes,
        "error": error,
        "seconds": time.perf_counter() - t0,
    })


def _hardware(machine: dict[str, Any]) -> tuple:
    return machine.get("cpu"), machine.get("cores"), (machine.get("gpu") or {}).get("name")


def _earlier_run(out_dir: Path, only: list[str] | None, quick: bool,
                 machine: dict[str, Any]) -> dict[str, Any] | None:
    """The results a run of ``only`` some cases merges into, or None.

    Rerunning one case (``--only``) replaces that case in the folder's results.json and
    keeps the others, each case naming the run it comes from (``run``); a partial run
    never stands in for the whole suite. Results of other hardware, or a ``--quick``
    run beside a full one, do not mix: that is refused before anything runs."""
    path = out_dir / "results.json"
    if not only or not path.exists():
        return None
    earlier = load_results(path)
    if _hardware(earlier["machine"]) != _hardware(machine) or earlier["quick"] != quick:
        def what(m: dict, q: bool) -> str:
            cpu, cores, gpu = _hardware(m)
            return f"{cpu}, {cores} cores{', ' + gpu if gpu else ''}{', quick' if q else ''}"
        raise ValueError(
            f"{path} holds a run on {what(earlier['machine'], earlier['quick'])}; this "
            f"run of {', '.join(only)} is on {what(machine, quick)}, and the two would "
            f"mix in one table: give another --out")
    for c in earlier["cases"]:  # cases of a document from before cases named their run
        c.setdefault("run", _run_of(earlier))
    return earlier


def _run_of(doc: dict[str, Any]) -> dict[str, Any]:
    return {"git_commit": doc["machine"].get("git_commit"), "date": doc["machine"]["date"]}


def run_suite(system: str, *, device: str = "cpu", quick: bool = False,
              out: str | Path = "out/bench", progress: bool = True,
              only: list[str] | None = None) -> dict[str, Any]:
    """Run one system's cases for ``device``; write JSON, markdown and plots under
    ``out/<system>/<device>/``; return the JSON document. With ``only``, the cases run
    replace theirs in the results already there (see :func:`_earlier_run`)."""
    from tqdm import tqdm

    out_dir = Path(out) / system / device
    machine = machine_info()
    earlier = _earlier_run(out_dir, only, quick, machine)
    # the cases draw their plots into plots.partial/, moved next to results.json only
    # at the end, with it: an interrupted run leaves the committed plots as they were
    staging = out_dir / "plots.partial"
    shutil.rmtree(staging, ignore_errors=True)  # an earlier interrupted run's
    staging.mkdir(parents=True)
    ctx = Context(device=device, quick=quick, out_dir=staging, progress=progress)
    cases = [c for c in load_suite(system) if c.device == device
             and (not only or c.name in only)]
    doc = {
        "schema_version": SCHEMA_VERSION,
        "system": system,
        "device": device,
        "quick": quick,
        "machine": machine,
        "cases": [],
    }
    # results.partial.json is written before the first case and after every case, so
    # that a suite killed by a time limit (a lent GPU's lease) keeps the cases that
    # finished; results.json (the committed one, under docs/results), the tables and
    # plots are replaced only by a run that got to its end, never by an interrupted one
    partial = out_dir / "results.partial.json"
    validate(doc)
    write_json_atomic(partial, doc)
    for case in tqdm(cases, desc=f"bench {system} [{device}]", disable=not progress,
                     unit="case"):
        doc["cases"].append({**run_case(case, ctx), "run": _run_of(doc)})
        validate(doc)
        write_json_atomic(partial, doc)
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            (out_dir / path.relative_to(staging)).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, out_dir / path.relative_to(staging))
    shutil.rmtree(staging)
    for case in doc["cases"]:  # where the plots are now
        case["plots"] = [str(out_dir / Path(p).relative_to(staging)) if
                         Path(p).is_relative_to(staging) else p for p in case["plots"]]
    order = [c.name for c in load_suite(system) if c.device == device]
    if earlier:  # the suite's order; the cases not rerun as they were, and a case the
        new = {c["case"]: c for c in doc["cases"]}  # suite no longer has, dropped
        kept = [c for c in earlier["cases"] if c["case"] not in new and c["case"] in order]
        doc["cases"] = sorted([*kept, *new.values()], key=lambda c: order.index(c["case"]))
    if only:  # a part of the suite: say which cases the folder lacks, wherever it is read
        ran = {c["case"] for c in doc["cases"]}
        if missing := [name for name in order if name not in ran]:
            doc["not_run"] = missing
    write_json_atomic(out_dir / "results.json", doc)
    (out_dir / "results.md").write_text(markdown(doc))
    (Path(out) / "overview.md").write_text(overview(out))
    partial.unlink()
    return doc


def _need(obj: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"bench JSON: {where} lacks {key!r}")
    if not isinstance(obj[key], kind):
        raise ValueError(f"bench JSON: {where}.{key} should be {kind}, "
                         f"got {type(obj[key]).__name__}")
    return obj[key]


def validate(doc: dict[str, Any]) -> None:
    """Check a results document against the schema; raise ValueError naming the field."""
    _need(doc, "schema_version", int, "document")
    _need(doc, "system", str, "document")
    _need(doc, "device", str, "document")
    _need(doc, "quick", bool, "document")
    m = _need(doc, "machine", dict, "document")
    for k in ("date", "cpu", "cores", "versions", "blas"):
        _need(m, k, (str, int, dict, list), "machine")
    for i, c in enumerate(_need(doc, "cases", list, "document")):
        _check_case(c, f"cases[{i}]")


def _check_case(c: dict[str, Any], where: str) -> None:
    """One case's entry against the schema (run_case checks each as it is made)."""
    _need(c, "case", str, where)
    _need(c, "baselines", list, where)
    for k, v in _need(c, "metrics", dict, where).items():
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise ValueError(f"bench JSON: {where}.metrics[{k!r}] is not a number "
                             f"(or null)")
    for k, r in _need(c, "ratios", dict, where).items():
        for f in ("ratio", "q1", "q3", "pairs"):
            _need(r, f, (int, float), f"{where}.ratios[{k!r}]")
    for t in _need(c, "targets", list, where):
        for f in ("metric", "op", "threshold", "held"):
            if f not in t:
                raise ValueError(f"bench JSON: {where}.targets lacks {f!r}")
    if "run" in c:
        _need(_need(c, "run", dict, where), "date", str, f"{where}.run")


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.3g}"
        return f"{v:.3e}"
    return str(v)


def _cell(text: str) -> str:
    """Free text (an exception's repr) made safe for one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _runs(doc: dict[str, Any]) -> dict[tuple, list[str]]:
    """The runs a document's cases come from, in order: (commit, date) -> case names."""
    runs: dict[tuple, list[str]] = {}
    for c in doc["cases"]:
        r = c.get("run") or _run_of(doc)
        runs.setdefault((r.get("git_commit"), r["date"]), []).append(c["case"])
    return runs


def _not_run(doc: dict[str, Any]) -> str:
    n = len(doc.get("not_run") or ())
    return f" ({n} case{'s' if n > 1 else ''} not run)" if n else ""


def _zone(date: str) -> str:
    """The time zone of a ``machine_info`` date (``...T13:18:20+0000``) as it is read."""
    zone = date[19:]
    return "UTC" if zone in ("+0000", "Z", "") else zone


def markdown(doc: dict[str, Any]) -> str:
    """The run as markdown: machine line (and the runs, where cases were rerun on their
    own), then one table of targets, then all metrics."""
    m = doc["machine"]
    gpu = m.get("gpu") or {}
    runs = _runs(doc)
    head = (f"**{doc['system']}** on `{doc['device']}`"
            f"{' (quick)' if doc['quick'] else ''}: {m['cpu']}, {m['cores']} cores"
            f"{', ' + gpu['name'] if gpu else ''}; torch {m['versions'].get('torch')}; ")
    if len(runs) <= 1:
        lines = [head + f"commit `{m.get('git_commit')}`; {m['date'][:10]}"]
    else:  # the time too: two runs of one day are told apart by it
        lines = [head + f"cases from {len(runs)} runs:", ""]
        lines += [f"- {', '.join(f'`{n}`' for n in names)}: commit `{commit}`, "
                  f"{date[:10]} {date[11:16]} {_zone(date)}"
                  for (commit, date), names in runs.items()]
    if doc.get("not_run"):
        lines += ["", f"Not run into this folder: "
                      f"{', '.join(f'`{n}`' for n in doc['not_run'])} (a part of the suite)."]
    lines += ["", "| case | target | measured | held |", "| --- | --- | --- | --- |"]
    for c in doc["cases"]:
        if c.get("error"):
            lines.append(f"| {c['case']} | (case failed) | {_cell(c['notes'])} | no |")
        for t in c["targets"]:
            spread = ""
            r = c["ratios"].get(t["metric"])
            if r:
                spread = f" (IQR {r['q1']:.3g}-{r['q3']:.3g}, {r['pairs']} pairs)"
            extra = "" if t.get("issue", True) else " (extra check)"
            lines.append(f"| {c['case']} | `{t['metric']}` {t['op']} {_fmt(t['threshold'])}"
                         f"{extra} | {_fmt(t['value'])}{spread} | "
                         f"{'yes' if t['held'] else '**no**'} |")
    lines += ["", "<details><summary>All metrics</summary>", "",
              "| case | metric | value |", "| --- | --- | --- |"]
    for c in doc["cases"]:
        for k, v in c["metrics"].items():
            lines.append(f"| {c['case']} | `{k}` | {_fmt(v)} |")
    lines += ["", "</details>", ""]
    notes = [f"- **{c['case']}**: {c['notes']}" for c in doc["cases"] if c.get("notes")]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return "\n".join(lines)


def summary_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(case, target, measured, held) rows, for terminal tables."""
    rows = []
    for c in doc["cases"]:
        for t in c["targets"]:
            rows.append((c["case"], f"{t['metric']} {t['op']} {_fmt(t['threshold'])}",
                         _fmt(t["value"]), "yes" if t["held"] else "NO"))
        if c.get("error"):
            rows.append((c["case"], "(failed)", c["notes"][:40], "NO"))
    return rows


def format_table(rows: list[tuple], header: tuple) -> str:
    """A plain fixed-width table for the terminal."""
    rows = [tuple(str(x) for x in r) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in rows]
    return "\n".join(out)


def load_results(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    validate(doc)
    return doc


def overview(root: str | Path) -> str:
    """Every system's latest results under ``root`` on one page: per system and device,
    how many of the issues' targets held, then each target that did not, so a reader
    sees at a glance where the casebook stands (each system's benchmark page says why).
    Extra checks (``Target.issue=False``) are not counted; one that failed is listed."""
    docs = [load_results(p) for p in sorted(Path(root).glob("*/*/results.json"))]
    lines = ["| system | device | run | targets held | not held |",
             "| --- | --- | --- | --- | --- |"]
    for d in docs:
        targets = [(c["case"], t) for c in d["cases"] for t in c["targets"]]
        counted = [t for _, t in targets if t.get("issue", True)]
        failed = [c["case"] for c in d["cases"] if c.get("error")]
        missed = [f"{case}: `{t['metric']}` {_fmt(t['value'])} ("
                  f"{'target' if t.get('issue', True) else 'extra check'} {t['op']} "
                  f"{_fmt(t['threshold'])})" for case, t in targets if not t["held"]]
        missed += [f"{case}: the case failed" for case in failed]
        gpu = (d["machine"].get("gpu") or {}).get("name")
        # a CPU run is named by its cores (the same suite runs on the 2-core development
        # VM and on a lent GPU machine's 16 cores), a CUDA run by its GPU
        where = f"{d['machine'].get('cores', '?')} cores" if d["device"] == "cpu" else gpu
        dates = sorted(date[:10] for _, date in _runs(d))
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        lines.append(f"| {d['system']} | {d['device']}{' (' + where + ')' if where else ''} | "
                     f"{when}{' quick' if d['quick'] else ''} | "
                     f"{sum(t['held'] for t in counted)} of {len(counted)}"
                     f"{_not_run(d)} | "
                     f"{'<br>'.join(missed) or '-'} |")
    systems = sorted(SUITES)
    ran = {(d["system"], d["device"]) for d in docs}
    never = [f"{s} on {dev}" for s in systems for dev in ("cpu", "cuda") if (s, dev) not in ran]
    if never:
        lines += ["", f"Not run yet: {', '.join(never)}."]
    return "\n".join(lines) + "\n"
