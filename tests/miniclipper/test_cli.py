"""``casebook clipper ...`` (systems/miniclipper/cli.py) from a shell, as a student runs it."""

import json
import subprocess
import sys
import time

import psutil
import pytest

from common.cli import main
from systems.miniclipper import deploy_python_closure


def _shell(*args, timeout=120):
    """``casebook clipper ARGS --json`` in a new process, as from a shell."""
    out = subprocess.run([sys.executable, "-m", "common.cli", "clipper", *args, "--json"],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _exits(pid: int, within_s: float = 15.0) -> bool:
    """Whether the process ``pid`` is gone within ``within_s`` (``stop`` is asynchronous)."""
    deadline = time.monotonic() + within_s
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not psutil.pid_exists(pid)


def test_start_deploy_query_load_stop(tmp_path, capsys):
    def _casebook(*args):  # the same entry point, in this process (saves a start-up each)
        assert main(["clipper", *args, "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # 127.0.0.2 is loopback too, but not the default: every command must pass it along,
    # and the frontend must listen on it alone (never on every interface)
    info = _shell("start", "--host", "127.0.0.2", "--query-port", "0", "--mgmt-port", "0",
                  "--grpc-port", "0", "--trace-sample", "1.0")
    ports = ["--host", "127.0.0.2", "--query-port", str(info["query_port"]), "--mgmt-port",
             str(info["mgmt_port"])]
    try:
        assert psutil.pid_exists(info["pid"])  # it outlived the command that started it
        listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)  # gRPC's socket
                     for c in psutil.Process(info["pid"])  # is dual-stack, v4-mapped
                     .net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.2", info[k]) for k in ("query_port", "mgmt_port",
                                                              "grpc_port")}, listening
        import glob
        import tempfile

        saved = set(glob.glob(f"{tempfile.gettempdir()}/*-clipper-model"))
        model = _casebook("deploy", "--name", "adder", "--builtin", "sum", "--app", "add",
                          "--slo-micros", "500000", *ports)
        assert model["replicas"] == 1 and model["batching"]["policy"] == "aimd"
        # the store took its own copy: the temporary model directory is gone again
        assert set(glob.glob(f"{tempfile.gettempdir()}/*-clipper-model")) <= saved
        assert main(["clipper", "query", "--app", "add", "--input", "[1.5, 2.5, 4]", *ports,
                     "--json"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1  # --json prints the answer once
        out = json.loads(lines[0])
        assert out["output"] == 8.0 and out["default"] is False
        batch = _casebook("query", "--app", "add", "--input-batch", "[[1], [2, 3]]", *ports)
        assert [r["output"] for r in batch["batch_predictions"]] == [1.0, 5.0]
        assert main(["clipper", "load", "--app", "add", "--rate", "100", "--duration", "1",
                     "--slo-ms", "500", "--inputs", "random:3", "--out", str(tmp_path),
                     *ports, "--json"]) == 0
        *text, last = capsys.readouterr().out.strip().splitlines()
        load = json.loads(last)
        # the summary line counts every kind of answer a student should see
        assert (f"{load['default']} answered with the default output, "
                f"{load['rejected']} rejected, {load['errors']} errors") in text[-1]
        assert load["sent"] > 50 and load["errors"] == 0 and load["goodput_qps"] > 40
        assert (tmp_path / "latency_cdf_add.png").stat().st_size > 1000
        trace = _casebook("trace", "--out", str(tmp_path / "t.json"), *ports)
        events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
        assert trace["events"] == len(events) > 10
        assert any(e["name"].startswith("container predict") for e in events)
    finally:
        _casebook("stop", *ports)
    assert _exits(info["pid"])


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_an_ipv6_loopback_host_works_from_start_to_stop(capsys):
    """``--host ::1``: every address the commands build must bracket the literal
    (``http://[::1]:PORT``); unbracketed, its colons read as a port and nothing connects.
    Started without ``--trace-sample``, ``trace`` fails and names the flag that turns
    tracing on."""
    info = _shell("start", "--host", "::1", "--query-port", "0", "--mgmt-port", "0",
                  "--grpc-port", "0")
    ports = ["--host", "::1", "--query-port", str(info["query_port"]), "--mgmt-port",
             str(info["mgmt_port"])]
    try:
        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(info["pid"])
                     .net_connections("inet6") if c.status == psutil.CONN_LISTEN}
        assert listening == {("::1", info[k]) for k in ("query_port", "mgmt_port",
                                                        "grpc_port")}, listening
        _shell("deploy", "--name", "adder", "--builtin", "sum", "--app", "add",
               "--slo-micros", "500000", *ports)
        out = _shell("query", "--app", "add", "--input", "[1, 2]", *ports)
        assert out["output"] == 3.0 and out["default"] is False
        assert main(["clipper", "trace", "--out", "unused.json", *ports]) == 2
        assert "tracing is off" in (err := capsys.readouterr().err), err
        assert "casebook clipper start --trace-sample" in err
    finally:
        _shell("stop", *ports)
    assert _exits(info["pid"])


def test_load_varies_an_integers_app_by_whole_numbers_and_refuses_a_strings_app(
        clipper, tmp_path, capsys):
    """``load`` asks the app's input type: an "integers" app gets whole numbers (a float
    is a 400 there), and a "strings" app is refused up front, naming its type."""
    c = clipper
    c.register_application("intsum", "integers", -1, 500_000)
    deploy_python_closure(c, "intsum", 1, "integers", lambda xs: [int(sum(x)) for x in xs])
    c.link_model_to_app("intsum", "intsum")
    c.register_application("words", "strings", "", 500_000)
    ports = ["--query-port", str(c.cm.ports["query_port"]), "--mgmt-port",
             str(c.cm.ports["mgmt_port"])]
    for inputs in ("random:3", "digits"):
        assert main(["clipper", "load", "--app", "intsum", "--rate", "100", "--duration",
                     "0.6", "--slo-ms", "500", "--inputs", inputs, "--out", str(tmp_path),
                     "--json", *ports]) == 0
        load = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert load["sent"] > 25 and load["ok"] == load["sent"], (inputs, load)
        assert load["errors"] == load["default"] == 0
    assert main(["clipper", "load", "--app", "words", "--out", str(tmp_path), *ports]) == 2
    assert "cannot load an application of input_type 'strings'" in capsys.readouterr().err


def test_query_and_deploy_need_exactly_one_input_and_one_model(capsys):
    """A query without an input is refused, not sent with a made-up one, and so is one
    with both --input and --input-batch; a deploy names one model source."""
    for argv, msg in ((["query", "--app", "a"], "one of the arguments --input --input-batch"),
                      (["query", "--app", "a", "--input", "[1]", "--input-batch", "[[1]]"],
                       "not allowed with argument --input"),
                      (["deploy", "--name", "m"], "one of the arguments --path --builtin"),
                      (["deploy", "--name", "m", "--path", "d", "--builtin", "sum"],
                       "not allowed with argument --path")):
        with pytest.raises(SystemExit) as e:
            main(["clipper", *argv, "--mgmt-port", "1", "--query-port", "1"])
        assert e.value.code == 2 and msg in capsys.readouterr().err, argv


def test_load_and_query_flags_are_checked_before_any_query(capsys):
    """No Clipper runs here: each refusal must come before a connection is tried."""
    for argv, msg in ((["load", "--app", "a", "--inputs", "random:0"], "random:DIM"),
                      (["load", "--app", "a", "--inputs", "random"], "random:DIM"),
                      (["query", "--app", "a", "--input", "[1, 2"], "--input '[1, 2'"),
                      # drawn up front and sent by one process: it ran for minutes, then
                      # died on a TimeoutExpired traceback
                      (["load", "--app", "a", "--rate", "1e6"], "at most 20000 q/s"),
                      # the query cap, named as such (it used to blame the rate)
                      (["load", "--app", "a", "--rate", "1000", "--duration", "2000"],
                       "is 2,000,000 queries, and each one's latency is recorded"),
                      (["query", "--app", "a", "--input", "[1e999]"], "overflows a float"),
                      (["query", "--app", "a", "--input", "hello"],
                       "a text input is a JSON string too: --input '\"hello\"'"),
                      # a numeric built-in on a strings app deployed, then failed each query
                      (["deploy", "--name", "s", "--builtin", "sum", "--input-type",
                        "strings"], "--builtin sum takes numbers")):
        assert main(["clipper", *argv, "--mgmt-port", "1", "--query-port", "1"]) == 2
        err = capsys.readouterr().err
        assert msg in err and "refused" not in err.lower(), err


def test_a_port_that_does_not_speak_http_is_one_clear_line(capsys):
    """A typo among the three adjacent ports (1337/1338/1339) pointed a command at
    Clipper's gRPC port: http.client's BadStatusLine came out as a traceback full of
    binary bytes. Here a listener answers binary bytes and hangs up."""
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def answer():
        for _ in range(2):
            try:
                conn, _ = srv.accept()
            except OSError:  # closed by the test: the command asked once, not twice
                return
            conn.recv(65536)
            conn.sendall(b"\x00\x00\x18\x04\x00\x00\x00\x00\x00\xfe\xff garbage\r\n")
            conn.close()
    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        assert main(["clipper", "stop", "--mgmt-port", str(port)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "does not answer HTTP" in err[0], err
        assert "--query-port and --mgmt-port" in err[0]
    finally:
        srv.close()


def test_a_deploy_interrupted_leaves_no_new_application_behind(clipper, monkeypatch,
                                                               capsys):
    """Ctrl-C during ``deploy --app NEW`` left the application registered with no model
    linked: its queries got the default, and the rollback (for exceptions) never ran,
    since KeyboardInterrupt is not an Exception."""
    from systems.miniclipper.admin import ClipperConnection

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(ClipperConnection, "deploy_model", interrupted)
    ports = ["--mgmt-port", str(clipper.cm.ports["mgmt_port"]),
             "--query-port", str(clipper.cm.ports["query_port"])]
    assert main(["clipper", "deploy", "--name", "kb", "--builtin", "sum", "--app", "kbapp",
                 *ports]) == 130
    err = capsys.readouterr().err
    assert "casebook: interrupted" in err and "casebook clipper remove --model kb:1" in err
    assert "kbapp" not in clipper.get_all_apps()

    # Ctrl-C while the built-in model still trains (before anything reached the server)
    import systems.miniclipper.cli as clipper_cli
    real_builtin = clipper_cli._builtin_model
    monkeypatch.setattr(clipper_cli, "_builtin_model", interrupted)
    assert main(["clipper", "deploy", "--name", "kb", "--builtin", "sum", "--app", "kbapp2",
                 *ports]) == 130
    assert "may still finish" not in capsys.readouterr().err  # nothing was sent
    assert "kbapp2" not in clipper.get_all_apps()

    # a second Ctrl-C, while the rollback waits behind the server's deploy: the
    # application stays, and the user is told how to remove it (it was left silently)
    # (deploy_model still raises KeyboardInterrupt: that is the first Ctrl-C)
    monkeypatch.setattr(clipper_cli, "_builtin_model", real_builtin)
    monkeypatch.setattr(ClipperConnection, "unregister_application", interrupted)
    assert main(["clipper", "deploy", "--name", "kb", "--builtin", "sum", "--app", "kbapp3",
                 *ports]) == 130
    err = capsys.readouterr().err
    assert "Ctrl-C again to leave it registered" in err
    assert "application kbapp3 is still registered" in err
    assert "casebook clipper remove --app kbapp3" in err
    monkeypatch.undo()
    assert main(["clipper", "remove", "--app", "kbapp3", *ports]) == 0
    assert "kbapp3" not in clipper.get_all_apps()

    # Ctrl-C while the link is in flight (the server linked): the deploy is done, and
    # the model may be linked; both messages said otherwise
    real_link = ClipperConnection.link_model_to_app

    def link_then_interrupt(self, *a, **kw):
        real_link(self, *a, **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(ClipperConnection, "link_model_to_app", link_then_interrupt)
    monkeypatch.setattr(ClipperConnection, "unregister_application", interrupted)
    assert main(["clipper", "deploy", "--name", "lk", "--builtin", "sum", "--app", "lkapp",
                 *ports]) == 130
    err = capsys.readouterr().err
    assert "lk:1 is deployed; see casebook clipper list" in err and "may still" not in err
    assert "lkapp is still registered, perhaps with the model linked" in err
    monkeypatch.undo()
    assert clipper.get_linked_models("lkapp") == ["lk"]
    assert main(["clipper", "remove", "--app", "lkapp", "--model", "lk", *ports]) == 0


def test_a_failed_start_names_a_log_that_still_exists():
    """The one-line error pointed at a log in the group's temporary directory, which was
    removed with the group (at the latest when the command exited) before anyone could
    read it."""
    import re
    import shutil
    import socket
    from pathlib import Path

    busy = socket.create_server(("127.0.0.1", 0))
    try:
        out = subprocess.run([sys.executable, "-m", "common.cli", "clipper", "start",
                              "--query-port", str(busy.getsockname()[1]), "--mgmt-port", "0",
                              "--grpc-port", "0"], capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    assert out.returncode == 2 and "a port is already in use" in out.stderr
    log = Path(re.search(r"its log: (\S+)", out.stderr)[1])
    try:
        assert log.is_file() and "in use" in log.read_text()
    finally:
        shutil.rmtree(log.parent, ignore_errors=True)


def test_list_shows_a_deploy_and_remove_undoes_it_checking_every_name_first(clipper, capsys):
    """A shell user had no way to see what runs, or to undo a deploy (say one the server
    finished after Ctrl-C): ``list`` and ``remove`` are clipper_admin's
    ``get_all_*(verbose=True)``, ``stop_versioned_models`` and ``unregister_application``."""
    ports = ["--mgmt-port", str(clipper.cm.ports["mgmt_port"]),
             "--query-port", str(clipper.cm.ports["query_port"])]

    def run(*args):
        code = main(["clipper", *args, *ports, "--json"])
        out, err = capsys.readouterr()
        if code:
            return code, err
        *text, doc = out.strip().splitlines()
        return code, {**json.loads(doc), "text": "\n".join(text)}

    for version in ("1", "2"):
        assert main(["clipper", "deploy", "--name", "rm", "--version", version, "--builtin",
                     "sum", "--app", "rmapp", "--slo-micros", "500000", *ports]) == 0
    code, listed = run("list")
    assert code == 0 and "app rmapp: doubles, SLO 500000 us, exp3" in listed["text"], listed
    assert "model rm:2 (current): 1 replica, aimd batching" in listed["text"]
    mine = {(m["model_name"], m["model_version"], m["is_current_version"])
            for m in listed["models"] if m["model_name"] == "rm"}
    assert mine == {("rm", "1", False), ("rm", "2", True)}
    assert [a["linked_models"] for a in listed["applications"] if a["name"] == "rmapp"] == \
        [["rm"]]

    # a typo anywhere removes nothing
    code, err = run("remove", "--model", "rm:1", "--model", "rm:3")
    assert code == 2 and "--model rm:3: not deployed" in err and "rm:1" in err
    code, err = run("remove", "--model", "rm:1", "--app", "rmap")
    assert code == 2 and "--app rmap: no such application" in err
    code, err = run("remove")
    assert code == 2 and "name what to remove" in err
    assert {"rm:1", "rm:2"} <= set(clipper.get_all_models())

    code, out = run("remove", "--model", "rm:1")  # the old version only
    assert code == 0 and out["models"] == ["rm:1"] and out["text"] == "removed model rm:1"
    assert "rm:1" not in clipper.get_all_models() and "rm:2" in clipper.get_all_models()
    assert clipper.predict("rmapp", [1.0, 2.0])["output"] == 3.0  # still served by 2

    code, out = run("remove", "--model", "rm", "--app", "rmapp", "--app", "rmapp")  # all of rm
    assert code == 0 and out["applications"] == ["rmapp"] and out["models"] == ["rm:2"]
    assert "rmapp" not in clipper.get_all_apps()
    assert not [m for m in clipper.get_all_models() if m.startswith("rm:")]


def test_one_port_given_for_two_endpoints_is_refused_before_anything_starts():
    """The frontend would bind it twice and the message blamed a running Clipper (and
    'casebook clipper stop' then found none)."""
    import glob
    import os
    import tempfile

    # where the child's ProcessGroup would make its folder: tests/conftest.py points
    # TMPDIR at pytest's own folder, so /tmp/casebook-procs-* never changes here
    procs = os.path.join(tempfile.gettempdir(), "casebook-procs-*")
    before = set(glob.glob(procs))
    out = subprocess.run([sys.executable, "-m", "common.cli", "clipper", "start",
                          "--query-port", "21437", "--mgmt-port", "21437", "--grpc-port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "query_port and mgmt_port are both 21437: give three different ports" in out.stderr
    assert set(glob.glob(procs)) <= before  # nothing was started


def test_deploy_offers_every_controller_batching_py_lists(monkeypatch, capsys):
    """The CLI had its own frozen list of batching policies (and selection policies), so
    a controller added to CONTROLLERS, as exercise 1 says, could not be chosen there.
    Names are now checked against the registries, before any Clipper is contacted."""
    from common.cli import main
    from systems.miniclipper import batching

    argv = ["clipper", "deploy", "--name", "m", "--builtin", "sum", "--mgmt-port", "1"]
    assert main([*argv, "--batching", "smooth"]) == 2
    assert "batching policy must be one of ['aimd', 'quantile', 'static'], got 'smooth'" in \
        capsys.readouterr().err
    monkeypatch.setitem(batching.CONTROLLERS, "smooth", batching.AIMDBatcher)
    assert main([*argv, "--batching", "smooth"]) == 2  # accepted: now it looks for Clipper
    err = capsys.readouterr().err
    assert "batching policy" not in err and "127.0.0.1:1" in err, err


def test_a_deploy_whose_link_would_be_refused_deploys_nothing(clipper, capsys):
    """m:1 takes strings; ``deploy --name m --version 2 ... --app NEW`` (doubles)
    deployed m:2, made it m's current version, then had its link refused: the version
    stayed, and a retry was told "already deployed"."""
    from systems.miniclipper import deploy_python_closure

    deploy_python_closure(clipper, "mixed", 1, "strings", lambda xs: ["x" for _ in xs])
    ports = ["--mgmt-port", str(clipper.cm.ports["mgmt_port"]),
             "--query-port", str(clipper.cm.ports["query_port"])]
    assert main(["clipper", "deploy", "--name", "mixed", "--version", "2", "--builtin",
                 "sum", "--app", "mixed-app", *ports]) == 2
    assert "has versions taking input_type ['strings']" in capsys.readouterr().err
    assert "mixed-app" not in clipper.get_all_apps()
    assert "mixed:2" not in clipper.get_all_models()
    assert clipper.get_current_model_version("mixed") == "1"
