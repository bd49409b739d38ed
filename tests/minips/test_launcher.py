"""``casebook ps launch`` end to end: a torch MLP on digits over real processes, with
the per-node metrics and the merged Chrome trace it promises."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from common.trace import row_problems
from systems.minips import message as M
from systems.minips.cluster import Cluster, ClusterSpec
from systems.minips.launcher import failure_named, launch, summarize


def test_cli_launch_trains_the_mlp_and_reports_metrics_and_a_trace(tmp_path):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "common.cli", "ps", "launch", "--servers", "2", "--workers",
           "2", "--app", "mlp", "--consistency", "ssp:2", "--steps", "80", "--eval-every",
           "0.5", "--no-progress", "--out", str(out_dir), "--json"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    wall = time.monotonic() - t0
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["final"]["accuracy"] >= 0.85
    assert res["curve"][0]["t"] == 0.0 and len(res["curve"]) >= 3
    # the curve ends with training (the last push), not when the processes exited
    assert 0 < res["train_s"] < wall and res["curve"][-1]["t"] == res["train_s"]
    nodes = res["per_node"]
    worker_pushes = nodes["w0"]["push_requests"] + nodes["w1"]["push_requests"]
    server_pushes = nodes["s0"]["push_requests"] + nodes["s1"]["push_requests"]
    assert worker_pushes == 2 * 80 + 2  # plus each worker's initialisation push
    assert server_pushes == 2 * worker_pushes  # each push is one message per server
    assert res["worker_bytes"] > 0 and nodes["s0"]["bytes_received"] > 0
    # CPU is counted from the start of training: some, and no more than the cores could
    # give during the run
    for n in ("w0", "w1", "s0", "s1"):
        assert 0 < nodes[n]["cpu_s"] <= wall * os.cpu_count()
    trace = json.loads(Path(res["trace"]).read_text())["traceEvents"]
    assert len({e["pid"] for e in trace if e["ph"] == "X"}) >= 4  # servers and workers
    flows = {e["id"] for e in trace if e["ph"] == "s"} & {e["id"] for e in trace if e["ph"] == "f"}
    assert flows  # arrows from a worker's request to the server span that served it
    # concurrent requests each on a row of their own: spans nest, every arrow end is in
    # a span of its row (Perfetto drops it otherwise)
    assert not row_problems(trace), row_problems(trace)[:5]
    assert (out_dir / "metrics-s0.prom").read_text().startswith("# HELP")
    assert "s0" in p.stdout and "MB on the wire" in p.stdout


def test_training_survives_a_killed_server_and_runs_to_its_end(tmp_path, capsys):
    """The issue's fault test on a real model, not only the counting app: the MLP with
    replication 2 loses a server to kill -9 a third of the way in and still trains to
    its last step, with no acknowledged push lost or applied twice (the audit keys ride
    along with every push). The progress bar is on, as on the command line."""
    steps = 120
    out = launch(ClusterSpec(servers=3, workers=2, steps=steps, replication=2, audit=2,
                             app={"name": "mlp"}, step_sleep_s=0.01),
                 run_dir=tmp_path, eval_every_s=0.5, faults=[{"at": 0.5, "kill": "s1"}],
                 progress=True, timeout=120)
    assert any(e["kind"] == "ring" and "s1" in e["why"] for e in out["events"])
    assert out["clocks"] == {"w0": steps, "w1": steps}  # every step, on both workers
    audit = out["audit"]
    assert audit["acked"] > 0 and audit["acked_lost"] == 0
    assert audit["acked_duplicated"] == 0 and audit["unacked_duplicated"] == 0
    assert out["final"]["accuracy"] >= 0.85
    assert f"{2 * steps}/{2 * steps}" in capsys.readouterr().err  # the bar reached the end


def test_a_worker_that_crashes_mid_job_fails_the_launch_with_its_log():
    """A job whose worker died (here at its first step: a bad straggler factor) is not a
    result: ``launch`` raises, naming the worker and quoting its log, instead of
    returning an empty summary."""
    spec = ClusterSpec(servers=1, workers=1, steps=3, app={"name": "count"},
                       straggler={"mode": "persistent", "rank": 0, "factor": "x"})
    with pytest.raises(RuntimeError, match=r"(?s)worker\(s\) \['w0'\] crashed.*could not "
                                           r"convert string to float"):
        launch(spec, progress=False, eval_every_s=None)


def test_a_fault_due_after_the_job_ended_is_reported_not_dropped(tmp_path, capsys):
    """A ``--kill-server s0@T`` whose T comes after the workers finished is never done;
    the summary says so (it used to vanish, and the run read as a survived fault)."""
    from common.cli import main

    spec = ClusterSpec(servers=1, workers=1, steps=2, app={"name": "count"})
    out = launch(spec, progress=False, eval_every_s=None, faults=[{"at": 600, "kill": "s0"}])
    assert out["faults"] == [] and out["faults_not_fired"] == [{"at": 600, "kill": "s0"}]
    assert main(["ps", "launch", "--servers", "1", "--workers", "1", "--steps", "2", "--app",
                 "count", "--kill-server", "s0@600", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    assert "note: kill s0 at 600 s was not done: the workers finished first" in \
        capsys.readouterr().out


def test_a_read_that_meets_a_job_failed_after_the_workers_ended_names_the_failure(
        one_copy_pushed):
    """launcher.failure_named: a server that dies after the workers' last push is declared
    dead only after a heartbeat timeout, so the launcher's check for a failed job can pass
    and its next read (the monitor's last sample) then fail. That read must say "the job
    failed" and why, as the check does; it said ``[UNAVAILABLE] ...`` in 3 runs of 10.
    Any other error passes through unchanged."""
    cl, kv, keys = one_copy_pushed
    with pytest.raises(M.PSError, match="keys must be non-negative"):
        with failure_named(cl):  # not a failed job: the error itself
            kv.pull(np.array([-1]))
    assert cl.status()["failure"] is None  # the launcher's check would pass here
    cl.signal("s1", signal.SIGKILL)
    with pytest.raises(RuntimeError, match="^the job failed: server s1 died .* no other "
                                           "server keeps a copy"):
        with failure_named(cl):
            kv.wait(kv.pull(keys), timeout=60)


def test_a_dead_scheduler_ends_the_launch_with_a_clear_error_and_no_process_left():
    """Cluster._raise_if_scheduler_died: the launcher polls the scheduler for progress;
    when that process is killed the launch says the scheduler died, not gRPC's bare
    UNAVAILABLE, and stops every process it started."""
    spec = ClusterSpec(servers=1, workers=2, steps=400, step_sleep_s=0.005,
                       app={"name": "count"})
    kids = []
    real_close = Cluster.close

    def close(self):  # note the processes, to check that none is left running
        kids.extend(self.group.children.values())
        real_close(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Cluster, "close", close)
        with pytest.raises(RuntimeError, match=r"^the scheduler died \(exit code -9\), and a "
                                               r"job cannot go on without it"):
            launch(spec, progress=False, eval_every_s=None,
                   faults=[{"at": 0.3, "kill": "scheduler"}])
    assert {k.name for k in kids} == {"scheduler", "s0", "w0", "w1"}
    assert not any(k.alive() for k in kids)


def test_filters_never_touch_the_audit_counters():
    """The KKT filter drops gradient entries and the significantly-modified filter holds
    them back; the audit keys appended to the same push must pass untouched (KKT used to
    crash on the longer push), and what is held back is pushed at the end."""
    app = {"name": "sparse_lr", "features": 4096, "examples": 1024,
           "filters": ["kkt", "sigmod"], "sigmod_threshold": 10.0}
    out = launch(ClusterSpec(servers=1, workers=2, steps=4, audit=1, app=app),
                 progress=False, eval_every_s=1e9)
    assert out["audit"]["acked"] == 2 * 4 and out["audit"]["acked_lost"] == 0
    # a threshold of 10 holds every gradient back until each worker's last push, which
    # carries them all (no extra push, no extra clock): the weights moved off zero, so
    # the objective left log(2), its value at w = 0 (without the flush it stays there)
    assert out["per_node"]["s0"]["push_requests"] == 2 * 4
    assert abs(out["final"]["objective"] - np.log(2)) > 1e-3


def test_impossible_cluster_sizes_are_refused_up_front():
    for kw, why in (({"servers": 0}, "at least one server"),
                    ({"servers": 2, "replication": 3}, "replication 3 must be 1..2"),
                    ({"replication": 0}, "replication 0 must be")):
        with pytest.raises(ValueError, match=why):
            ClusterSpec(**kw).config(None)


def test_flags_given_to_an_app_that_does_not_use_them_are_an_error():
    """--filters used to be the only one refused; --device cuda on sparse_lr ran the job
    on CPUs without a word, and --features was dropped for mlp."""
    from common.cli import build_parser
    from systems.minips.cli import spec_from_args

    for argv, msg in ((["--app", "mlp", "--filters", "kkt"], "--filters: the mlp app does "
                                                             "not use it \\(--filters is for "
                                                             "sparse_lr"),
                      (["--device", "cuda"], "--device: the sparse_lr app does not use it "
                                             "\\(--device is for mlp"),
                      (["--app", "count", "--hidden", "8", "--nnz", "3"],
                       "--nnz --hidden: the count app does not use them"),
                      (["--app", "mlp", "--features", "64"], "--features: the mlp app"),
                      (["--app", "count", "--batch", "64", "--lr", "0.5"],
                       "--batch --lr: the count app does not use them")):
        a = build_parser().parse_args(["ps", "launch", *argv])
        with pytest.raises(ValueError, match=msg):
            spec_from_args(a)
    a = build_parser().parse_args(["ps", "launch", "--app", "sparse_lr", "--filters", "kkt"])
    assert spec_from_args(a).app["filters"] == ["kkt"]


def test_roles_started_one_by_one_train_and_all_exit_when_the_job_is_done(tmp_path):
    """The multi-machine path (``--role``), here on loopback: a scheduler, a server and
    a worker, each its own ``casebook ps launch --role ...`` process. The worker pushes
    its 5 clocks and reports; then the scheduler, seeing the job done and every worker
    reported, shuts down, and the server follows on its next heartbeat (before, both
    kept running until killed)."""
    root = Path(__file__).resolve().parents[2]
    base = [sys.executable, "-m", "common.cli", "ps", "launch", "--servers", "1", "--workers",
            "1", "--app", "count", "--steps", "5", "--no-progress", "--out", str(tmp_path)]
    procs = []

    def start(*role):
        p = subprocess.Popen([*base, *role], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        line = p.stdout.readline()
        assert line.startswith("READY "), line
        return json.loads(line[len("READY "):])

    try:
        sched = start("--role", "scheduler", "--port", "0")
        start("--role", "server", "--name", "s0", "--scheduler", sched["addr"])
        w = subprocess.run([*base, "--role", "worker", "--name", "w0", "--scheduler",
                            sched["addr"], "--json"], cwd=root, capture_output=True,
                           text=True, timeout=120)
        assert w.returncode == 0, w.stderr[-2000:]
        report = json.loads(w.stdout.strip().splitlines()[-1])
        assert report["clocks"] == 5 and report["acked"] == [0, 1, 2, 3, 4]
        for p in procs:  # the scheduler and the server end by themselves
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()


def test_the_servers_update_rule_can_be_chosen_on_the_command_line():
    """``--updater`` replaces the app's rule (sparse LR's L1-proximal AdaGrad, the MLP's
    SGD) in the cluster config every server builds its updater from; a name or parameter
    that ``updaters.make`` does not know is refused before any process starts."""
    from common.cli import build_parser
    from systems.minips.cli import spec_from_args

    def spec(*extra):
        a = build_parser().parse_args(["ps", "launch", "--app", "mlp", *extra])
        return spec_from_args(a)

    assert spec().config(None)["updater"] == {"name": "sgd", "lr": 0.25}
    cfg = spec("--updater", "l1prox:lr=0.05,lam=0.001").config(None)
    assert cfg["updater"] == {"name": "l1prox", "lr": 0.05, "lam": 0.001}
    assert spec("--updater", "adagrad").config(None)["updater"] == {"name": "adagrad"}
    with pytest.raises(ValueError, match="unknown updater 'adam'; choose from"):
        spec("--updater", "adam")
    with pytest.raises(ValueError, match="bad parameters for updater 'sgd'"):
        spec("--updater", "sgd:momentum=0.9")
    with pytest.raises(ValueError, match="'lr' is not key=number"):
        spec("--updater", "sgd:lr")


def test_sparse_lr_reports_the_objective_its_l1prox_servers_minimise():
    """docs/minips/index.md runs ``--app sparse_lr --updater l1prox:lr=0.05,lam=...``.
    The servers then shrink by that lam; the workers' objective (and the KKT filter) must
    use the same one, or the objective printed is another function (with lam=0.001 on
    the servers and the default 0.005 in the objective it read 10.9). One lam reaches
    both; two different ones are refused; an updater without lam takes ``--lam`` (not
    ``L1Proximal``'s own default, 1e-4)."""
    from common.cli import build_parser
    from systems.minips.apps import SPARSE_LR_LAM as LAM
    from systems.minips.cli import spec_from_args

    def spec(*extra):
        return spec_from_args(build_parser().parse_args(
            ["ps", "launch", "--app", "sparse_lr", *extra]))

    def lams(s):
        return s.app["lam"], s.config(None)["updater"]["lam"]

    assert lams(spec()) == (LAM, LAM)
    assert lams(spec("--updater", "l1prox:lr=0.05,lam=0.001")) == (0.001, 0.001)
    assert lams(spec("--updater", "l1prox:lr=0.05")) == (LAM, LAM)
    assert lams(spec("--lam", "0.02", "--updater", "l1prox:lr=0.05")) == (0.02, 0.02)
    assert lams(spec("--lam", "0.001", "--updater", "l1prox:lam=0.001")) == (0.001, 0.001)
    with pytest.raises(ValueError, match="--lam 0.02 and --updater lam=0.001"):
        spec("--lam", "0.02", "--updater", "l1prox:lam=0.001")
    assert spec("--lam", "0.02").app["lam"] == 0.02  # the app's own rule takes it
    assert spec("--lam", "0.02").config(None)["updater"]["lam"] == 0.02


def test_the_learning_rate_and_the_l1_term_reach_the_updater_the_servers_run():
    """``--lr`` was dropped without a word when ``--updater`` was given (the servers ran
    the updater's default 0.1); ``--filters kkt`` with sgd or adagrad dropped gradients
    those servers apply (474 nonzero weights instead of 41,255), and the objective
    printed added an L1 term they do not minimise; eps=0 made the model NaN, a negative
    lr or lam was taken, all in runs that looked normal."""
    from common.cli import build_parser
    from systems.minips.cli import spec_from_args

    def spec(*extra, app="sparse_lr"):
        return spec_from_args(build_parser().parse_args(["ps", "launch", "--app", app,
                                                         *extra]))

    assert spec("--lr", "0.5", "--updater", "adagrad", app="mlp").config(None)[
        "updater"] == {"name": "adagrad", "lr": 0.5}
    s = spec("--updater", "sgd", app="mlp")  # the app's own rule, at the app's rate
    assert s.config(None)["updater"] == {"name": "sgd", "lr": 0.25} and s.app["lr"] == 0.25
    s = spec("--updater", "adagrad", app="mlp")  # another rule, at its own default
    assert s.config(None)["updater"] == {"name": "adagrad"} and s.app["lr"] == 0.1
    s = spec("--updater", "l1prox:lr=0.05,lam=0.01")  # the spec records what runs
    assert s.app["lr"] == 0.05 == s.config(None)["updater"]["lr"]
    with pytest.raises(ValueError, match="--lr with --updater sum: that rule has no"):
        spec("--lr", "0.5", "--updater", "sum", app="mlp")
    assert spec("--lr", "0.05", "--updater", "l1prox:lr=0.05").config(None)[
        "updater"]["lr"] == 0.05
    with pytest.raises(ValueError, match="--lr 0.5 and --updater lr=0.05"):
        spec("--lr", "0.5", "--updater", "l1prox:lr=0.05")
    s = spec("--updater", "sgd:lr=0.5")
    assert s.app["lam"] == 0.0  # the objective printed is the loss these servers minimise
    for extra in (["--filters", "kkt"], ["--lam", "0.01"]):
        with pytest.raises(ValueError, match="only l1prox has an L1 term"):
            spec(*extra, "--updater", "sgd:lr=0.5")
    for bad, why in (("adagrad:eps=0", "eps must be a finite number above 0"),
                     ("l1prox:eps=0", "eps must be"), ("sgd:lr=-1", "lr must be"),
                     ("l1prox:lam=-1", "lam must be"), ("sgd:lr=inf", "lr must be")):
        with pytest.raises(ValueError, match=why):
            spec("--updater", bad, app="mlp" if bad.startswith("sgd") else "sparse_lr")


@pytest.mark.parametrize("replication", [1, 2])
def test_cli_kill_server_with_and_without_replicas(tmp_path, replication):
    """``--kill-server`` from the command line: with ``--replication 2`` the job
    finishes and its audit is clean; with 1 (the default) it fails at once and says why."""
    cmd = [sys.executable, "-m", "common.cli", "ps", "launch", "--servers", "3", "--workers",
           "2", "--app", "count", "--steps", "300", "--step-sleep", "0.005", "--audit", "2",
           "--replication", str(replication), "--kill-server", "s1@0.4", "--no-progress",
           "--out", str(tmp_path / "run"), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    if replication == 1:
        assert p.returncode == 2
        assert "the job failed: server s1 died" in p.stderr, p.stderr[-2000:]
        assert "no other server keeps a copy" in p.stderr and "replication >= 2" in p.stderr
        return
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert any(e["kind"] == "ring" and "s1" in e["why"] for e in res["events"])
    assert res["audit"]["acked_lost"] == 0 and res["audit"]["acked_duplicated"] == 0
    assert res["clocks"] == {"w0": 300, "w1": 300}


def test_launch_flags_are_checked_before_anything_starts(tmp_path, capsys):
    """Each of these used to fail halfway through a run (an unknown node when its fault
    fired, a checkpoint path after training) or print a worker's traceback."""
    from common.cli import main

    (tmp_path / "file").write_text("x")
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics-s0.json").write_text("{}")
    cases = [(["--kill-server", "s9@0.1"], "no node s9 in this job (s0..s1)"),
             (["--kill-worker", "w1"], "want NAME@SECONDS (a kill has no duration: --freeze "
              "pauses), e.g. w0@1.5"),
             (["--freeze", "s0@1:x"], "want NAME@SECONDS:FOR"),
             (["--kill-server", "s1@3:2"], "a kill has no duration: --freeze pauses"),
             (["--freeze", "w5@1:2"], "no node w5 in this job (w0..w1)"),
             (["--straggler", "w7:2"], "no worker w7 in this job (w0..w1)"),
             (["--straggler", "w0:0.5"], "how many times slower, >= 1"),
             (["--straggler", "slow"], "want RANK:FACTOR"),
             (["--straggler", "w1:4", "--checkpoint", str(tmp_path / "new" / "ck")],
              "slows a worker's --step-sleep, which is 0"),
             (["--kill-server", "s9@0.1", "--checkpoint", str(tmp_path / "new" / "ck")],
              "no node s9 in this job"),
             (["--checkpoint", str(tmp_path / "file")], "exists and is not a directory"),
             (["--out", str(used), "--checkpoint", str(tmp_path / "new" / "ck")],
              "holds an earlier run's files"),
             (["--restore", str(tmp_path / "nockpt"), "--checkpoint",
               str(tmp_path / "new" / "ck")], "has no manifest.json"),
             (["--role", "worker"], "needs --scheduler HOST:PORT"),
             (["--app", "mlp", "--device", "tpu"], "use cpu, cuda or cuda:N"),
             (["--app", "sparse_lr", "--examples", "512", "--workers", "3"],
              "--workers 3 needs --examples > 512")]
    from common.cli import build_parser
    from systems.minips.cli import _faults

    a = build_parser().parse_args(["ps", "launch", "--freeze", "w1@1:2"])  # a worker too
    assert _faults(a) == [{"at": 1.0, "freeze": "w1", "for": 2.0}]
    a = build_parser().parse_args(["ps", "launch", "--kill-server", "s01@0.5"])
    assert _faults(a) == [{"at": 0.5, "kill": "s1"}]  # the node's name, not the flag's
    for extra, msg in cases:
        t0 = time.monotonic()
        assert main(["ps", "launch", "--app", "count", "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
        assert time.monotonic() - t0 < 5  # refused before a process started
    assert not (tmp_path / "new").exists()  # a refused launch made no --checkpoint dir


def test_apps_that_push_one_value_per_key_refuse_another_val_len():
    from systems.minips.cluster import ClusterSpec

    for app, audit in (({"name": "mlp"}, 0), ({"name": "count"}, 1),
                       ({"name": "count", "tally": {"shards": 2, "steps": 2}}, 0)):
        with pytest.raises(ValueError, match="val_len 2: .* push one value per key"):
            ClusterSpec(app=app, audit=audit, val_len=2).config(None)
    ClusterSpec(app={"name": "count"}, val_len=2, key_max=64).config(None)  # the KV tests'


@dataclass
class _Spec:
    steps: int = 5


@dataclass
class _FakeCluster:
    """What summarize() reads from a Cluster: its spec, run_dir and collect()."""
    metrics: dict
    reports: dict
    spec: _Spec = field(default_factory=_Spec)
    run_dir: str = "/nonexistent"

    def collect(self):
        return {"reports": self.reports, "metrics": self.metrics, "trace": None}


def _report(clocks):
    return {"idle_fraction": 0.0, "step_s": 0.1, "clocks": clocks, "filters": {},
            "timeline": [(0.0, 0, 0, 0, 1.0, 0.0)]}


def test_summary_numbers_are_sums_maxima_and_rebased_curves(monkeypatch):
    monkeypatch.setattr("systems.minips.launcher.asdict", lambda spec: {})
    metrics = {"w0": {"bytes_sent": 100, "bytes_received": 1000, "max_recovery_s": 0.5},
               "w1": {"bytes_sent": 20, "bytes_received": 3, "max_recovery_s": 2.5},
               "s0": {"bytes_sent": 7777, "bytes_received": 8888},
               "scheduler": {}}
    cl = _FakeCluster(metrics, {"w0": _report(5), "w1": _report(5)})
    curve = [{"t": 10.0, "objective": 9.0}, {"t": 11.0, "objective": 8.0},
             {"t": 12.5, "objective": 3.0}, {"t": 13.0, "objective": 2.0}]
    status = {"barriers": {"init": 12.0}, "events": [], "epoch": 1, "reports": {}}
    out = summarize(cl, status, curve, None)
    # the workers' traffic both ways; the servers' is not the workers'
    assert out["worker_bytes"] == 100 + 1000 + 20 + 3
    assert out["max_recovery_s"] == 2.5
    # the curve starts at the training start with the last value measured before it
    assert out["curve"] == [{"t": 0.0, "objective": 8.0}, {"t": 0.5, "objective": 3.0},
                            {"t": 1.0, "objective": 2.0}]
    assert out["final"] == {"t": 1.0, "objective": 2.0}


def test_the_curve_ends_where_the_last_worker_pushed_not_where_the_workers_exited(
        monkeypatch):
    # the workers' last pushes at 12.6 and 12.8; the monitor went on sampling the
    # unchanged model until the workers had exited (14.0), then took the final sample
    monkeypatch.setattr("systems.minips.launcher.asdict", lambda spec: {})
    reports = {"w0": {**_report(5), "last_step_at": 12.6},
               "w1": {**_report(5), "last_step_at": 12.8}}
    cl = _FakeCluster({"w0": {}, "w1": {}}, reports)
    curve = [{"t": 11.0, "objective": 8.0}, {"t": 12.5, "objective": 3.0},
             {"t": 13.0, "objective": 2.0}, {"t": 13.5, "objective": 2.0},
             {"t": 14.0, "objective": 2.0}]
    status = {"barriers": {"init": 12.0}, "events": [], "epoch": 1, "reports": {}}
    out = summarize(cl, status, curve, None)
    assert out["curve"] == [{"t": 0.0, "objective": 8.0}, {"t": 0.5, "objective": 3.0},
                            {"t": pytest.approx(0.8), "objective": 2.0}]
    assert out["train_s"] == pytest.approx(0.8)
    # a job with no step taken (or reports from before this field) keeps its samples
    for r in reports.values():
        r.pop("last_step_at")
    assert len(summarize(cl, status, curve, None)["curve"]) == 5


def test_a_failed_launch_leaves_no_monitor_polling_behind(tmp_path):
    """launch() raised (a worker crashed) with a Monitor running: its thread used to poll
    the closed cluster for as long as the process lived, adding a request that nobody
    would answer to its client at each tick (found by a leak audit)."""
    import threading

    app = {"name": "sparse_lr", "features": 1 << 12, "examples": 1024, "nnz": 12,
           "batch": 128, "lam": 5e-3}
    spec = ClusterSpec(servers=1, workers=1, steps=3, app=app,
                       straggler={"mode": "persistent", "rank": 0, "factor": "x"})
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="crashed"):
        launch(spec, run_dir=tmp_path, progress=False, eval_every_s=0.05)
    time.sleep(0.3)
    left = [t.name for t in set(threading.enumerate()) - before
            if not t.name.startswith("tqdm")]  # tqdm's own monitor lives on by design
    assert not left, f"threads outlived the failed launch: {left}"


@pytest.mark.parametrize("argv, why", [
    # each used to start a job: the first two printed the scheduler's 27-line traceback,
    # the third trained for the whole run and then failed with "server s0: INTERNAL",
    # the fourth was ignored
    (["--host", "192.0.2.1"], "is not an address of this machine"),
    (["--host", ""], "--host is empty"),
    (["--checkpoint", "/proc/nope/ck"], "cannot write there"),
    (["--scheduler", "127.0.0.1:5"], "only with --role"),
    # and the other way round: one node alone ignored them (a "restored" job started
    # from scratch)
    (["--role", "scheduler", "--restore", "/nonexistent"], "--restore: only for a job"),
    (["--role", "server", "--scheduler", "127.0.0.1:1", "--kill-worker", "w0@1",
      "--checkpoint", "/tmp/x"], "--kill-worker, --checkpoint: only for a job launched"),
    # a server started alone printed a 40-line AioRpcError and "Event loop is closed"
    (["--role", "server", "--scheduler", "127.0.0.1:1"], "no scheduler answered at"),
    (["--role", "server", "--scheduler", "nohostport"], "want HOST:PORT"),
    # registered as 0.0.0.0:PORT, so every other machine dialled itself, for ever
    (["--role", "server", "--scheduler", "127.0.0.1:1", "--host", "0.0.0.0"],
     "the other nodes dial it"),
    # the audit's key region grows with --steps: the refusal blamed "another app or
    # model size?"
    (["--app", "count", "--audit", "2", "--restore", "/nonexistent"],
     "--audit cannot check a resumed job"),
])
def test_launch_refuses_what_would_fail_later_in_one_line(argv, why, capsys):
    from common.cli import main

    assert main(["ps", "launch", "--no-progress", "--steps", "2", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("casebook ps: error:") and why in err[0], err


def test_a_job_whose_every_worker_was_killed_is_not_reported_as_done(tmp_path):
    """With no worker left to finish the shards, the launch used to print its usual
    summary (and write its checkpoint) as if the job had run."""
    spec = ClusterSpec(servers=2, workers=2, steps=200, step_sleep_s=0.05, hb_timeout=3.0,
                       app={"name": "count"})
    with pytest.raises(RuntimeError, match=r"did not finish: shard\(s\) \[0, 1\] stopped"):
        launch(spec, run_dir=tmp_path / "run", eval_every_s=None, progress=False,
               faults=[{"at": 0.3, "kill": "w0"}, {"at": 0.3, "kill": "w1"}],
               ckpt_dir=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_cli_membership_lines_name_the_dead_worker_and_its_heir(tmp_path):
    cmd = [sys.executable, "-m", "common.cli", "ps", "launch", "--app", "count", "--steps",
           "60", "--step-sleep", "0.02", "--kill-worker", "w0@0.3", "--no-progress", "--out",
           str(tmp_path / "run")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "membership: worker w0 dead (no heartbeat)" in p.stdout, p.stdout
    assert "membership: shard 0 (at step " in p.stdout and ") -> w1" in p.stdout


def test_the_tour_leaves_no_run_directory_behind(monkeypatch, tmp_path):
    import tempfile

    from systems.minips.cli import tour_step

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tour_step(quick=True)
    assert list(tmp_path.iterdir()) == []
