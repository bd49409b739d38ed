"""``casebook ansor``: tune, resume, show; --json prints one document last."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def casebook(*args, cwd=ROOT):
    out = subprocess.run([sys.executable, "-m", "common.cli", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=120)
    return out


def test_tune_then_show(tmp_path):
    log = tmp_path / "t.jsonl"
    out = casebook("ansor", "tune", "--workload", "gemm", "--shape", "64,96,128", "--dtype",
                   "fp16", "--epilogue", "bias+relu", "--trials", "6", "--log", str(log),
                   "--no-progress", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["trials"] == 6 and doc["tasks"][0]["task"] == "gemm:64x96x128:fp16:bias+relu"
    assert doc["tasks"][0]["best_us"] > 0 and len(log.read_text().splitlines()) == 6
    show = casebook("ansor", "show", str(log), "--plot", str(tmp_path / "p.png"), "--json")
    assert show.returncode == 0, show.stderr[-2000:]
    sdoc = json.loads(show.stdout.strip().splitlines()[-1])
    assert sdoc["records"] == 6 and (tmp_path / "p.png").stat().st_size > 1000


def test_bad_shape_is_a_clear_error():
    from common.cli import build_parser

    args = build_parser().parse_args(["ansor", "tune", "--workload", "gemm", "--shape",
                                      "64,x", "--trials", "1"])
    with pytest.raises(ValueError, match="comma-separated integers"):
        args.func(args)
