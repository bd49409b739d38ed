import json
import subprocess
import sys

import pytest


def _casebook(*args):
    out = subprocess.run([sys.executable, "-m", "common.cli", *args], capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout.strip().splitlines()


def test_env_json_reports_the_measured_cpu_roofline():
    doc = json.loads(_casebook("env", "--json")[-1])
    r = doc["cpu_roofline"]
    assert r["fp32_flops"] > 1e8 and r["mem_bandwidth"] > 1e8
    assert r["ridge_flop_per_byte"] == r["fp32_flops"] / r["mem_bandwidth"]
    assert doc["cores"] >= 1 and "torch" in doc["versions"]


def test_bench_json_is_the_last_line_and_matches_the_file(tmp_path):
    lines = _casebook("bench", "common", "--quick", "--only", "interleaved", "--no-progress",
                      "--out", str(tmp_path), "--json")
    doc = json.loads(lines[-1])
    assert [c["case"] for c in doc["cases"]] == ["interleaved"]
    on_disk = json.loads((tmp_path / "common" / "cpu" / "results.json").read_text())
    assert on_disk["cases"][0]["metrics"] == doc["cases"][0]["metrics"]
    assert any("interleaved" in line for line in lines[:-1])  # the human table came first


def test_unknown_subcommand_fails_with_usage():
    out = subprocess.run([sys.executable, "-m", "common.cli", "nope"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_the_cli_works_when_python_strips_docstrings():
    """``python -OO`` sets every ``__doc__`` to None; the parser took its descriptions
    from module docstrings (common's and each system's), and every command died with an
    AttributeError."""
    for system in ("clipper", "ps"):
        out = subprocess.run([sys.executable, "-OO", "-m", "common.cli", system, "--help"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage: casebook " + system in out.stdout, out.stderr


def _fails(*args):
    out = subprocess.run([sys.executable, "-m", "common.cli", *args], capture_output=True,
                         text=True, timeout=120)
    return out.returncode, out.stderr.strip().splitlines()


def test_bad_input_is_one_line_not_a_traceback(tmp_path):
    code, err = _fails("ps", "launch", "--servers", "0", "--no-progress")
    assert code == 2 and err[-1].startswith("casebook ps: error: a job needs at least one")
    assert not any("Traceback" in line for line in err)
    # a misspelt --only would have written an empty results.json over the real one
    code, err = _fails("bench", "common", "--only", "nosuch", "--out", str(tmp_path))
    assert code == 2 and "no such cpu case" in err[-1] and not list(tmp_path.iterdir())


def test_json_is_honoured_at_either_level_of_a_subcommand():
    from common.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["ps", "--json", "launch"]).json is True  # was silently reset to False
    assert parse(["ansor", "show", "x.jsonl", "--json"]).json is True
    assert not getattr(parse(["ps", "launch"]), "json", False)


def test_help_imports_only_the_system_it_names():
    """``casebook --help`` lists every system without importing any (torch, Triton and
    scikit-learn took ~3 s); ``casebook ansor --help`` imports miniansor alone, and shows
    its full subcommand tree."""
    probe = ("import sys; from common.cli import build_parser; p = build_parser({argv!r}); "
             "print(sorted(m for m in ('torch', 'sklearn', 'systems.miniansor', "
             "'systems.minips', 'systems.miniclipper') if m in sys.modules))")
    def imported(argv):
        out = subprocess.run([sys.executable, "-c", probe.format(argv=argv)],
                             capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.strip()
    assert imported(["--help"]) == "[]"
    assert imported(["ansor", "--help"]) == "['sklearn', 'systems.miniansor', 'torch']"
    lines = _casebook("--help")
    for name in ("clipper", "flow", "ansor", "ps"):
        assert any(line.split()[:1] == [name] for line in lines), name
    assert any("tune" in line for line in _casebook("ansor", "--help"))


@pytest.mark.parametrize("argv, flag", [
    (["bench", "miniansor", "--only"], "--only"),  # no names: it ran the whole suite
    (["ps", "launch", "--audit", "-2"], "--audit"),  # it hung at the first barrier
    (["ps", "launch", "--vnodes", "0"], "--vnodes"),
    (["ps", "launch", "--step-sleep", "-1"], "--step-sleep"),
    (["ps", "launch", "--role", "scheduler", "--port", "70000"], "--port"),
    (["ansor", "tune", "--workload", "gemm", "--shape", "64,64,64", "--seed", "-1"], "--seed"),
    (["ansor", "tune-model", "--batch", "0"], "--batch"),
    (["ansor", "sim-table", "--out", "x.json", "--tasks", "gemm:64x64x64:fp16:none",
      "--configs", "0"], "--configs"),
    (["clipper", "start", "--query-port", "70000"], "--query-port"),
    (["clipper", "start", "--trace-sample", "5"], "--trace-sample"),
    (["clipper", "load", "--app", "a", "--duration", "-1"], "--duration"),
    (["flow", "train", "--batch", "-5"], "--batch"),
])
def test_number_flags_refuse_values_they_cannot_mean(argv, flag, capsys):
    """Each used to start work (or hang, or train a useless model) on a value that made
    no sense; argparse now says which flag, before anything runs."""
    from common.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_bench_exits_1_when_a_case_failed_and_prints_standard_json(tmp_path, monkeypatch,
                                                                   capsys):
    """A case that raised is a failed run (exit 1; a target not held is not), and
    ``--json`` prints standard JSON: an infinite or NaN number is null, not Infinity."""
    import common.selfcheck as sc
    from common.bench import Case, Result
    from common.cli import main

    def boom(ctx):
        raise RuntimeError("broken case")
    monkeypatch.setattr(sc, "CASES", [
        Case("inf", "no value", ("b",), lambda ctx: Result(metrics={"x": float("inf")}), ()),
        Case("boom", "raises", ("b",), boom, ())])
    assert main(["bench", "common", "--no-progress", "--out", str(tmp_path), "--json"]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out.splitlines()[-1], parse_constant=lambda c: pytest.fail(c))
    assert doc["cases"][0]["metrics"]["x"] is None
    assert "1 case(s) failed: common:boom" in err


def test_bench_on_cuda_without_a_gpu_is_refused_before_anything_is_written(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    code, err = _fails("bench", "common", "--device", "cuda", "--out", str(tmp_path))
    assert code == 2 and "--device cuda needs a CUDA GPU" in err[-1]
    assert not list(tmp_path.iterdir())


def test_ctrl_c_while_the_parser_imports_a_system_is_one_line(monkeypatch, capsys):
    """Building the parser imports the system's package (torch, sklearn: seconds); a
    Ctrl-C then was a 60-line traceback and death by signal, not "interrupted", 130."""
    from common import cli

    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["ansor", "show", "log.jsonl"]) == 130
    assert capsys.readouterr().err == "casebook: interrupted\n"

def test_a_command_runs_when_the_shell_closed_its_standard_error(monkeypatch, capsys):
    """``casebook ... 2>&-``: Python sets sys.stderr to None, and the first progress bar
    died with an AttributeError nobody could see (exit 1, no output)."""
    import sys

    from common.cli import main

    monkeypatch.setattr(sys, "stderr", None)
    assert main(["ansor", "tune", "--workload", "gemm", "--shape", "64,64,64", "--trials",
                 "4", "--per-round", "4", "--device", "sim", "--json"]) == 0
    assert '"weighted_latency_us"' in capsys.readouterr().out


def test_a_file_flag_refuses_a_directory_and_a_tilde_after_equals_is_home(tmp_path,
                                                                           monkeypatch,
                                                                           capsys):
    """--out tables/ wrote a FILE named tables (Path drops the slash); an existing
    directory ended the run, after its work, with "Is a directory". The shell leaves
    --out=~/x alone, and it went into a directory named "~" under the working directory."""
    from common.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    table = ["ansor", "sim-table", "--tasks", "gemm:64x64x64:fp16:none", "--configs", "4"]
    for out in ("tables/", str(tmp_path / "existing")):
        with pytest.raises(SystemExit) as e:
            main([*table, "--out", out])
        assert e.value.code == 2 and "is a directory; give a file" in capsys.readouterr().err
    assert not (tmp_path / "tables").exists()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "existing")
    assert main([*table, "--out=~/t.json"]) == 0
    assert (tmp_path / "t.json").is_file() and not (tmp_path / "existing" / "~").exists()
