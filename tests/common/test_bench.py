import json
import subprocess
from pathlib import Path

import pytest

from common.bench import Case, Context, Result, Target, markdown, run_case, validate

ROOT = Path(__file__).resolve().parents[2]


def _ok(ctx):
    return Result(metrics={"speedup": 2.0},
                  ratios={"ratio": {"ratio": 0.5, "q1": 0.45, "q3": 0.55, "pairs": 9}})


def _boom(ctx):
    raise RuntimeError("broken case")


def test_targets_are_checked_against_metrics_and_ratio_medians():
    r = run_case(Case("c", "d", ("b",), _ok, (Target("speedup", ">=", 1.5),
                                              Target("ratio", "<=", 0.4))), Context())
    assert r["metrics"]["ratio"] == 0.5
    assert [t["held"] for t in r["targets"]] == [True, False]
    assert r["error"] is None


def test_a_failing_case_is_recorded_not_fatal():
    r = run_case(Case("c", "d", ("b",), _boom, (Target("x", ">=", 1),)), Context())
    assert "broken case" in r["error"]
    assert r["targets"][0]["held"] is False and r["targets"][0]["value"] is None


def test_bad_target_op_is_refused():
    with pytest.raises(ValueError, match="op must be one of"):
        Target("x", "=>", 1)


def test_run_suite_writes_schema_valid_json_and_markdown(tmp_path, monkeypatch):
    """The suite's plumbing, on a fake clock: the selfcheck loop of n iterations costs
    exactly n units, so the case's ratio must come out exactly 2.0 (no wall-clock bound
    to flake on a loaded machine)."""
    import common.bench as bench
    import common.selfcheck as sc
    import common.timing as timing

    now = [0.0]

    def fake_loop(n):
        now[0] += n * 2.0 ** -24  # 20_000 iterations ~ 1.2 ms; dyadic, so exact

    monkeypatch.setattr(timing, "clock", lambda: now[0])
    monkeypatch.setattr(sc, "_loop", fake_loop)
    monkeypatch.setattr(sc, "CASES", [Case("interleaved", "known ratio", ("half",),
                                           sc.interleaved_case,
                                           (Target("ratio_2n_vs_n", ">=", 1.5),))])
    doc = bench.run_suite("common", quick=True, out=tmp_path, progress=False)
    path = tmp_path / "common" / "cpu" / "results.json"
    on_disk = json.loads(path.read_text())
    validate(on_disk)
    assert on_disk["system"] == "common" and on_disk["quick"] is True
    assert on_disk["machine"]["cpu_roofline"]["fp32_flops"] > 0
    c = on_disk["cases"][0]
    assert c["ratios"]["ratio_2n_vs_n"] == {
        "ratio": 2.0, "q1": 2.0, "q3": 2.0, "pairs": 11,  # quick: 11 pairs
        "a_median_s": 40_000 * 2.0 ** -24, "b_median_s": 20_000 * 2.0 ** -24}
    assert c["metrics"]["ratio_2n_vs_n"] == 2.0 and c["error"] is None
    assert c["targets"][0]["held"] is True
    md = (tmp_path / "common" / "cpu" / "results.md").read_text()
    assert "| interleaved | `ratio_2n_vs_n` >= 1.5 |" in md
    assert doc["cases"][0]["case"] == "interleaved"


def test_validate_names_the_missing_field():
    doc = {"schema_version": 1, "system": "s", "device": "cpu", "quick": False,
           "machine": {"date": "d", "cpu": "c", "cores": 1, "versions": {}, "blas": []},
           "cases": [{"case": "x", "baselines": [], "metrics": {"m": "fast"},
                      "ratios": {}, "targets": []}]}
    with pytest.raises(ValueError, match=r"metrics\['m'\] is not a number"):
        validate(doc)
    del doc["machine"]
    with pytest.raises(ValueError, match="lacks 'machine'"):
        validate(doc)


def test_markdown_marks_missed_targets():
    doc = {"system": "s", "device": "cpu", "quick": False,
           "machine": {"date": "2026-01-01", "cpu": "c", "cores": 2, "versions": {},
                       "git_commit": "abc"},
           "cases": [run_case(Case("c", "d", ("b",), _ok, (Target("speedup", ">=", 3),)),
                              Context())]}
    md = markdown(doc)
    assert "| c | `speedup` >= 3 | 2 | **no** |" in md


def test_overview_counts_held_targets_and_lists_the_missed_and_the_never_run(tmp_path):
    from common.bench import SUITES, overview
    from common.trace import write_json_atomic

    machine = {"date": "2026-01-01T00:00", "cpu": "c", "cores": 2, "versions": {},
               "blas": [], "gpu": None}
    cases = [run_case(Case("c", "d", ("b",), _ok, (Target("speedup", ">=", 3),
                                                  Target("speedup", ">=", 1))), Context()),
             run_case(Case("f", "d", ("b",), _boom, ()), Context())]
    doc = {"schema_version": 1, "system": "miniflow", "device": "cpu", "quick": False,
           "machine": machine, "cases": cases}
    (tmp_path / "miniflow" / "cpu").mkdir(parents=True)
    write_json_atomic(tmp_path / "miniflow" / "cpu" / "results.json", doc)
    md = overview(tmp_path)
    row = next(line for line in md.splitlines() if line.startswith("| miniflow"))
    assert "| 1 of 2 |" in row
    assert row.startswith("| miniflow | cpu (2 cores) |")  # which machine ran it
    assert "c: `speedup` 2 (target >= 3)" in row and "f: the case failed" in row
    never = md.split("Not run yet:")[1]
    assert "miniflow on cuda" in never and "miniflow on cpu" not in never
    assert all(f"{s} on cpu" in never for s in SUITES if s != "miniflow")


def _nan_and_pipe(ctx):
    return Result(metrics={"speedup": float("nan"), "x": 1.0})


def test_nan_metrics_are_null_and_free_text_cannot_break_a_table_row(tmp_path):
    """json.dump writes NaN, which strict JSON readers refuse; an exception's repr with a
    '|' split the failed case's row into extra cells."""
    def boom(ctx):
        raise ValueError("shape a|b\nsecond line")

    cases = [run_case(Case("n", "d", ("b",), _nan_and_pipe, (Target("speedup", ">=", 1),)),
                      Context()),
             run_case(Case("boom", "d", ("b",), boom, ()), Context())]
    assert cases[0]["metrics"]["speedup"] is None and not cases[0]["targets"][0]["held"]
    doc = {"schema_version": 1, "system": "s", "device": "cpu", "quick": False,
           "machine": {"date": "2026-01-01", "cpu": "c", "cores": 2, "versions": {},
                       "blas": "b", "git_commit": "abc"}, "cases": cases}
    validate(doc)
    json.loads(json.dumps(doc, allow_nan=False))  # strict JSON
    row = next(line for line in markdown(doc).splitlines() if "(case failed)" in line)
    assert row.replace("\\|", "").count("|") == 5  # four cells


def test_an_explicit_metric_is_not_overwritten_by_a_ratio_of_the_same_name():
    ratio = {"ratio": 0.5, "q1": 0.4, "q3": 0.6, "pairs": 9, "a_median_s": 1.0,
             "b_median_s": 2.0}
    case = Case("c", "d", ("torch",), lambda ctx: Result(metrics={"speedup": 2.0},
                                                        ratios={"speedup": ratio,
                                                                "vs_torch": ratio}))
    out = run_case(case, Context(progress=False))
    assert out["metrics"]["speedup"] == 2.0  # the case's own number
    assert out["metrics"]["vs_torch"] == 0.5  # a ratio's median is a metric too


def _interrupt(ctx):
    raise KeyboardInterrupt


def test_an_interrupted_suite_leaves_the_finished_results_as_they_were(tmp_path,
                                                                        monkeypatch):
    """Ctrl-C during ``bench --out docs/results`` used to replace the committed
    results.json with the cases done so far, unmarked, while results.md kept the old
    table. Progress now goes to results.partial.json; results.json, results.md and the
    overview change only when a run gets to its end."""
    import common.bench as bench
    import common.selfcheck as sc

    monkeypatch.setattr(sc, "CASES", [Case("first", "ok", ("b",), _plotted, ()),
                                      Case("second", "stopped", ("b",), _interrupt, ())])
    out = tmp_path / "common" / "cpu"
    out.mkdir(parents=True)
    (out / "results.json").write_text('{"committed": true}')
    (out / "first.png").write_bytes(b"committed plot")
    with pytest.raises(KeyboardInterrupt):
        bench.run_suite("common", out=tmp_path, progress=False)
    assert json.loads((out / "results.json").read_text()) == {"committed": True}
    assert (out / "first.png").read_bytes() == b"committed plot"  # it was redrawn in place
    partial = json.loads((out / "results.partial.json").read_text())
    assert [c["case"] for c in partial["cases"]] == ["first"]
    assert not (out / "results.md").exists()
    monkeypatch.setattr(sc, "CASES", sc.CASES[:1])  # a run that finishes replaces it
    bench.run_suite("common", out=tmp_path, progress=False)
    assert [c["case"] for c in json.loads((out / "results.json").read_text())["cases"]] \
        == ["first"]
    assert not (out / "results.partial.json").exists() and (out / "results.md").exists()
    assert (out / "first.png").read_bytes() == b"new plot"
    assert json.loads((out / "results.json").read_text())["cases"][0]["plots"] == \
        [str(out / "first.png")]
    assert not (out / "plots.partial").exists()
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "docs/results/x/cpu/"
                              "results.partial.json", "docs/results/x/cpu/plots.partial/a.png"],
                             capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert len(ignored) == 2  # an interrupted run's leftovers are never committed


def _plotted(ctx):
    (ctx.out_dir / "first.png").write_bytes(b"new plot")
    return Result(plots=[str(ctx.out_dir / "first.png")])


def test_an_infinite_metric_is_null_in_results_json_as_in_json_output(tmp_path, monkeypatch):
    """json.dump writes Infinity, which strict JSON readers refuse (--json printed null
    for the same metric); the target still saw the number."""
    import common.bench as bench
    import common.selfcheck as sc

    monkeypatch.setattr(sc, "CASES", [Case("inf", "d", ("b",), lambda ctx: Result(
        metrics={"speedup": float("inf")}), (Target("speedup", ">=", 2),))])
    bench.run_suite("common", out=tmp_path, progress=False)
    text = (tmp_path / "common" / "cpu" / "results.json").read_text()
    case = json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))["cases"][0]
    assert case["metrics"]["speedup"] is None and case["targets"][0]["held"]


def _metric(value):
    return lambda ctx: Result(metrics={"x": value})


def _machine(commit, *, cores=2):
    return {"date": f"2026-01-0{len(commit)}T10:00:00+0000", "cpu": "c", "cores": cores,
            "versions": {}, "blas": [], "gpu": None, "git_commit": commit}


def test_rerunning_one_case_keeps_the_others_each_naming_its_run(tmp_path, monkeypatch):
    """``--only CASE --out docs/results`` used to write a results.json holding that one
    case: the other cases' committed results were lost, their plots left without data,
    and the overview counted the partial run as the system's score."""
    import common.bench as bench
    import common.selfcheck as sc

    suite = [Case("a", "d", ("b",), _metric(1.0), (Target("x", ">=", 2),)),
             Case("b", "d", ("b",), _metric(1.0), (Target("x", ">=", 2),)),
             Case("c", "d", ("b",), _metric(1.0), (Target("x", ">=", 2),))]
    monkeypatch.setattr(sc, "CASES", suite)
    monkeypatch.setattr(bench, "machine_info", lambda: _machine("first"))
    bench.run_suite("common", out=tmp_path, progress=False)
    monkeypatch.setattr(bench, "machine_info", lambda: _machine("second!"))
    monkeypatch.setattr(sc, "CASES", [suite[0], Case("b", "d", ("b",), _metric(3.0),
                                                     (Target("x", ">=", 2),)), suite[2]])
    bench.run_suite("common", out=tmp_path, progress=False, only=["b"])
    out = tmp_path / "common" / "cpu"
    doc = json.loads((out / "results.json").read_text())
    validate(doc)
    assert [c["case"] for c in doc["cases"]] == ["a", "b", "c"]  # the suite's order
    assert [c["metrics"]["x"] for c in doc["cases"]] == [1.0, 3.0, 1.0]
    assert [c["run"]["git_commit"] for c in doc["cases"]] == ["first", "second!", "first"]
    md = (out / "results.md").read_text()
    assert "cases from 2 runs:" in md
    assert "- `a`, `c`: commit `first`, 2026-01-05 10:00 UTC" in md
    assert "- `b`: commit `second!`, 2026-01-07 10:00 UTC" in md
    row = next(line for line in (tmp_path / "overview.md").read_text().splitlines()
               if line.startswith("| common"))
    assert "| 2026-01-05 to 2026-01-07 | 1 of 3 |" in row
    # a case the suite no longer has (renamed, removed) leaves with the next rerun
    monkeypatch.setattr(sc, "CASES", [suite[0], suite[2]])
    bench.run_suite("common", out=tmp_path, progress=False, only=["a"])
    doc = json.loads((out / "results.json").read_text())
    assert [c["case"] for c in doc["cases"]] == ["a", "c"]


def test_one_case_run_into_a_new_folder_says_the_suite_was_not_all_run(tmp_path,
                                                                        monkeypatch):
    """Written as the system's whole result, one case read "1 of 1" in the overview."""
    import common.bench as bench
    import common.selfcheck as sc

    monkeypatch.setattr(sc, "CASES", [Case(n, "d", ("b",), _metric(3.0),
                                           (Target("x", ">=", 2),)) for n in "abc"])
    monkeypatch.setattr(bench, "machine_info", lambda: _machine("first"))
    bench.run_suite("common", out=tmp_path, progress=False, only=["a"])
    md = (tmp_path / "common" / "cpu" / "results.md").read_text()
    assert "Not run into this folder: `b`, `c` (a part of the suite)." in md
    row = next(line for line in (tmp_path / "overview.md").read_text().splitlines()
               if line.startswith("| common"))
    assert "| 1 of 1 (2 cases not run) |" in row
    bench.run_suite("common", out=tmp_path, progress=False, only=["b", "c"])
    doc = json.loads((tmp_path / "common" / "cpu" / "results.json").read_text())
    assert "not_run" not in doc and [c["case"] for c in doc["cases"]] == ["a", "b", "c"]


def test_a_rerun_on_other_hardware_or_quick_is_refused_and_changes_nothing(tmp_path,
                                                                           monkeypatch):
    import common.bench as bench
    import common.selfcheck as sc

    monkeypatch.setattr(sc, "CASES", [Case("a", "d", ("b",), _metric(1.0)),
                                      Case("b", "d", ("b",), _metric(1.0))])
    monkeypatch.setattr(bench, "machine_info", lambda: _machine("first"))
    bench.run_suite("common", out=tmp_path, progress=False)
    before = (tmp_path / "common" / "cpu" / "results.json").read_text()
    monkeypatch.setattr(bench, "machine_info", lambda: _machine("second", cores=16))
    with pytest.raises(ValueError, match="holds a run on c, 2 cores; this run of b is on "
                                         "c, 16 cores"):
        bench.run_suite("common", out=tmp_path, progress=False, only=["b"])
    monkeypatch.setattr(bench, "machine_info", lambda: _machine("second"))
    with pytest.raises(ValueError, match="2 cores, quick, and the two would mix"):
        bench.run_suite("common", out=tmp_path, progress=False, only=["b"], quick=True)
    assert (tmp_path / "common" / "cpu" / "results.json").read_text() == before
    bench.run_suite("common", out=tmp_path, progress=False)  # a whole run replaces it all
    doc = json.loads((tmp_path / "common" / "cpu" / "results.json").read_text())
    assert {c["run"]["git_commit"] for c in doc["cases"]} == {"second"}
    assert "cases from" not in (tmp_path / "common" / "cpu" / "results.md").read_text()


def test_an_extra_check_is_shown_as_one_and_not_counted_as_an_issue_target(tmp_path):
    """The overview says how many of the issues' targets held; a check we chose
    ourselves (a sanity check, a variant setting) used to count as one of them."""
    from common.bench import overview
    from common.trace import write_json_atomic

    case = run_case(Case("c", "d", ("b",), _ok, (
        Target("speedup", ">=", 3), Target("speedup", ">=", 1, issue=False),
        Target("ratio", "<=", 0.1, issue=False))), Context())
    doc = {"schema_version": 1, "system": "miniflow", "device": "cpu", "quick": False,
           "machine": _machine("abc"), "cases": [case]}
    md = markdown(doc)
    assert "| c | `speedup` >= 1 (extra check) | 2 | yes |" in md
    assert "| c | `speedup` >= 3 | 2 | **no** |" in md
    (tmp_path / "miniflow" / "cpu").mkdir(parents=True)
    write_json_atomic(tmp_path / "miniflow" / "cpu" / "results.json", doc)
    row = next(line for line in overview(tmp_path).splitlines()
               if line.startswith("| miniflow"))
    assert "| 0 of 1 |" in row  # of the issue's one target; the extras listed if missed
    assert "c: `speedup` 2 (target >= 3)<br>c: `ratio` 0.5 (extra check <= 0.1)" in row


def test_a_case_returning_a_malformed_result_fails_alone(tmp_path, monkeypatch):
    """A str or bool metric (``(a == b).all()``) made validate() end the whole suite:
    the cases after it never ran and no results.json was written."""
    import common.bench as bench
    import common.selfcheck as sc

    monkeypatch.setattr(sc, "CASES", [
        Case("first", "d", ("b",), _metric(1.0)),
        Case("broken", "d", ("b",), lambda ctx: Result(metrics={"same": True}),
             (Target("same", ">=", 1),)),
        Case("third", "d", ("b",), _metric(3.0), (Target("x", ">=", 2),))])
    monkeypatch.setattr(bench, "machine_info", lambda: _machine("first"))
    doc = bench.run_suite("common", out=tmp_path, progress=False)
    assert [c["case"] for c in doc["cases"]] == ["first", "broken", "third"]
    broken = doc["cases"][1]
    assert broken["error"] and "malformed result" in broken["notes"]
    assert "metrics['same'] is not a number" in broken["notes"]
    assert doc["cases"][2]["targets"][0]["held"]
    assert (tmp_path / "common" / "cpu" / "results.json").exists()


@pytest.mark.parametrize("op,value,held", [
    ("<=", 0.0, True), ("<=", 1e-9, False), ("<=", -1e-9, True),
    (">=", 1.0, True), (">=", 1.0 - 1e-9, False), (">=", 2.0, True),
    ("<", 2.0, False), ("<", 1.5, True), (">", 2.0, False), (">", 2.5, True)])
def test_a_target_on_its_threshold_holds_for_le_and_ge_only(op, value, held):
    """Correctness targets sit exactly on their threshold in a healthy run (acked_lost
    <= 0, finished >= 1, peak_live_layers <= 2): "<=" and ">=" must hold there, or every
    such run reads as missing them; "<" and ">" must not."""
    threshold = {"<=": 0.0, ">=": 1.0, "<": 2.0, ">": 2.0}[op]
    assert Target("x", op, threshold).check({"x": value})["held"] is held
