"""``casebook flow``: train, dot and trace from the command line, with --json."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from systems.miniflow import cli


def _casebook(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "common.cli", "flow", *args, "--json"],
                         capture_output=True, text=True, timeout=300, check=True, cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_flow_train_json_reports_accuracy_and_restore(tmp_path):
    r = _casebook("train", "--model", "mlp", "--checkpoint", str(tmp_path / "ck"), cwd=None)
    assert r["test_accuracy"] >= 0.97 and r["restored_accuracy"] == r["test_accuracy"]
    assert (tmp_path / "ck.npz").exists()


def test_flow_dot_and_trace_write_their_files(tmp_path):
    d = _casebook("dot", "--two-cpus", "--out", str(tmp_path), cwd=None)
    assert set(d["files"]) == {"graph", "pruned", "optimized", "partitioned"}
    assert d["nodes_after"] < d["nodes_before"]
    assert "_Send" in (tmp_path / "mlp-partitioned.dot").read_text()
    t = _casebook("trace", "--out", str(tmp_path / "trace.json"), cwd=None)
    doc = json.loads((tmp_path / "trace.json").read_text())
    assert len([e for e in doc["traceEvents"] if e["ph"] == "X"]) == t["nodes"]


def test_flow_on_cuda_without_a_gpu_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = argparse.Namespace(model="mlp", device="cuda", epochs=1, batch=32, seed=0,
                              checkpoint="unused", json=True, out="unused", two_cpus=False)
    for command in (cli._train, cli._dot, cli._trace):
        with pytest.raises(ValueError, match="--device cuda needs a CUDA GPU"):
            command(args)  # a ValueError: main prints it with its prefix and exits 2


def test_a_checkpoint_directory_means_a_prefix_inside_it(tmp_path):
    """``--checkpoint ck/`` wrote a hidden ``ck/.npz``; ``--checkpoint /tmp`` wrote
    ``/tmp.npz`` and a state file at the root; an empty one wrote ``./.npz``."""
    (tmp_path / "ck").mkdir()
    assert cli.checkpoint_prefix(str(tmp_path / "ck")) == str(tmp_path / "ck" / "digits")
    assert cli.checkpoint_prefix("new/") == str(Path("new") / "digits")
    assert cli.checkpoint_prefix("out/flow/digits") == "out/flow/digits"
    with pytest.raises(ValueError, match="--checkpoint is empty"):
        cli.checkpoint_prefix("")


def test_a_checkpoint_directory_that_cannot_be_written_is_refused_before_training(
        tmp_path, monkeypatch):
    """An existing read-only directory passed the up-front mkdir, and the run trained
    every epoch before failing on a hidden temporary. (As root no mode makes a directory
    read-only, so the write probe is made to fail as it would there.)"""
    import tempfile

    from systems.miniflow import digits

    def refuse(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(digits, "train", lambda *a, **kw: pytest.fail("it trained"))
    args = argparse.Namespace(model="mlp", device="cpu", epochs=1, batch=32, seed=0,
                              checkpoint=str(tmp_path), json=True)
    with pytest.raises(ValueError, match="cannot write there .Permission denied."):
        cli._train(args)
