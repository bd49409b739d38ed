import gc
import os
import signal
import time
import weakref

import pytest

from common.procs import ProcessGroup

SERVER = "tests.common._ready_child"


def test_spawned_child_reports_ready_and_is_stopped(tmp_path):
    with ProcessGroup(tmp_path) as group:
        child = group.spawn("c1", SERVER, ["ok"])
        assert child.info == {"pid_echo": child.pid}
        assert child.alive()
    assert not child.alive()  # leaving the group stopped it


def test_child_that_dies_before_ready_fails_with_its_log(tmp_path):
    with ProcessGroup(tmp_path) as group:
        with pytest.raises(RuntimeError, match="exited with code 3") as e:
            group.spawn("bad", SERVER, ["die"], ready_timeout=20)
        assert "about to fail on purpose" in str(e.value)


def test_stopped_child_is_still_cleaned_up(tmp_path):
    with ProcessGroup(tmp_path) as group:
        child = group.spawn("frozen", SERVER, ["ok"])
        child.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        group.stop("frozen", timeout=5)
        assert not child.alive() and time.monotonic() - t0 < 10


def _gone(pid: int, timeout: float = 10.0) -> bool:
    import os

    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_parent_stopped_by_sigterm_takes_its_children_along(tmp_path):
    """Children run in their own sessions, so only the parent's clean-up stops them;
    SIGTERM (``timeout``, CI) must go through it instead of killing the parent on the
    spot."""
    with ProcessGroup(tmp_path) as group:
        parent = group.spawn("parent", SERVER, ["parent", str(tmp_path / "inner")])
        grandchild = parent.info["grandchild"]
        parent.popen.send_signal(signal.SIGTERM)  # the parent alone, not its group
        assert parent.popen.wait(20) == 128 + signal.SIGTERM
        assert _gone(grandchild), "the parent's child outlived it"


def test_duplicate_names_are_refused_and_silent_children_never_block(tmp_path):
    with ProcessGroup(tmp_path) as group:
        group.spawn("c1", SERVER, ["ok"])
        with pytest.raises(ValueError, match="'c1' .* is still running"):
            group.spawn("c1", SERVER, ["ok"])
        chatty = group.spawn("chatty", SERVER, ["chatty"], announces=False)
        assert chatty.popen.wait(30) == 0  # ~1 MB of output did not fill a pipe
        t_end = time.monotonic() + 10  # the drain thread may still be writing the end
        while "line 19999" not in chatty.log_tail(1) and time.monotonic() < t_end:
            time.sleep(0.05)
        assert "line 19999" in chatty.log_tail(1)


def test_output_after_ready_is_logged_and_a_child_is_stopped_only_once(tmp_path):
    with ProcessGroup(tmp_path) as group:
        child = group.spawn("c", SERVER, ["ready-and-more"])
        assert child.info == {"pid_echo": child.pid}
        t_end = time.monotonic() + 10
        while "printed right after ready" not in child.log_tail() and time.monotonic() < t_end:
            time.sleep(0.05)
        assert "printed right after ready" in child.log_tail()  # was lost with READY
        group.stop("c")
        assert child.stopped and not child.alive()
        group.stop("c")  # again (stop_all at exit does): no signal to a reused pid


def test_a_garbled_ready_line_fails_at_once_with_the_line_in_the_log(tmp_path):
    with ProcessGroup(tmp_path) as group:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="garbled READY line") as e:
            group.spawn("g", SERVER, ["garbled"], ready_timeout=60)
        assert time.monotonic() - t0 < 30  # not the whole ready_timeout
        assert "READY {not json" in str(e.value)


def test_a_stopped_child_is_continued_and_ends_by_sigterm_not_sigkill(tmp_path):
    """SIGCONT first: a stopped process cannot run its SIGTERM handler (the 'parent'
    child has one: ProcessGroup's exit_on_termination), so without it the stop waits out
    its whole timeout and ends in SIGKILL, skipping the child's own clean-up."""
    with ProcessGroup(tmp_path) as group:
        child = group.spawn("frozen", SERVER, ["parent", str(tmp_path / "inner")])
        child.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        group.stop("frozen", timeout=5)
        assert child.popen.returncode == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 4


def test_stopping_a_child_also_kills_what_it_started_in_its_group(tmp_path):
    with ProcessGroup(tmp_path) as group:
        child = group.spawn("parent", SERVER, ["stubborn-kid"])
        kid = child.info["kid"]
        group.stop("parent", timeout=2)
        assert _gone(kid, 5), "a process of the child's group outlived the stop"


@pytest.mark.parametrize("then", ["respawn", "forget"])
def test_a_child_that_crashed_takes_what_it_started_with_it(tmp_path, then):
    """A child that died by itself, then replaced under its name (a supervisor's
    restart) or forgotten, left the helpers of its group running past the group."""
    with ProcessGroup(tmp_path) as group:
        kid = group.spawn("node", SERVER, ["crash-leaving-kid"]).info["kid"]
        deadline = time.monotonic() + 10
        while group.children["node"].alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if then == "respawn":
            group.spawn("node", SERVER, ["ok"])
        else:
            group.forget("node")
        assert _gone(kid, 5), f"the crashed child's helper outlived its {then}"


def test_stopped_children_leave_no_open_pipe_behind(tmp_path):
    """A supervisor starts each replica under a new name; every start used to keep the
    child's stdout pipe open for as long as the group lived (one fd per start: a Clipper
    frontend went from 18 to 58 fds over 40 scale-ups)."""
    def drained(children) -> None:
        # a drain thread closes its child's pipe (and log) once it reads EOF: wait for
        # that, not a fixed time (0.3 s was the margin), so a late thread is no leak
        deadline = time.monotonic() + 10
        while not all(c.popen.stdout.closed for c in children) and \
                time.monotonic() < deadline:
            time.sleep(0.02)

    with ProcessGroup(tmp_path) as group:
        warm = group.spawn("warm", SERVER, ["ok"])
        group.stop("warm", 1)
        drained([warm])
        before = len(os.listdir("/proc/self/fd"))
        started = []
        for i in range(8):
            started.append(group.spawn(f"c{i}", SERVER, ["ok"]))
            group.stop(f"c{i}", 2)
            group.forget(f"c{i}")
        with pytest.raises(RuntimeError):  # dies before READY: nobody drains it
            group.spawn("bad", SERVER, ["die"], ready_timeout=20)
        drained(started)
        assert len(os.listdir("/proc/self/fd")) - before <= 1, "an fd per child started"
        assert sorted(group.children) == ["bad", "warm"]  # forgotten records are gone


def test_a_stopped_group_is_not_kept_alive_by_atexit(tmp_path):
    """Each group registered stop_all with atexit for good, so every Cluster or Clipper
    ever started in a process lived on, with its children's pipes, until exit."""
    for i in range(3):
        with ProcessGroup(tmp_path / f"g{i}") as group:
            group.spawn("c", SERVER, ["ok"])
        ref = weakref.ref(group)
        del group
        gc.collect()
        assert ref() is None, "a stopped group lives on until the interpreter exits"


def test_a_parent_killed_by_sigkill_takes_its_children_along(tmp_path):
    """SIGKILL (kill -9, the OOM killer) runs no clean-up in the parent: its children, in
    their own sessions, must notice on their own (a Clipper frontend and its container,
    and a minips scheduler and servers, were all alive 8 s later, holding their ports)."""
    with ProcessGroup(tmp_path) as group:
        parent = group.spawn("parent", SERVER, ["parent", str(tmp_path / "inner")])
        grandchild = parent.info["grandchild"]
        parent.popen.send_signal(signal.SIGKILL)
        parent.popen.wait(20)
        if not _gone(grandchild, timeout=10):
            os.killpg(grandchild, signal.SIGKILL)
            raise AssertionError("the SIGKILLed parent's child outlived it")


def test_a_child_stopped_while_another_thread_waits_for_it_fails_that_wait_cleanly(tmp_path):
    """A supervisor's stop_all (a thread) may stop a replica that another thread is still
    waiting for: the wait must end in RuntimeError ('exited ...'), as for any child that
    dies before READY, not in a ValueError on a pipe closed under it."""
    import threading

    with ProcessGroup(tmp_path) as group:
        child = group.spawn("slow", SERVER, ["slow-helper"], wait_ready=False)
        got = []

        def wait() -> None:
            try:
                group.wait_ready(child, 20)
            except Exception as e:  # noqa: BLE001 - the test looks at which
                got.append(e)
        t = threading.Thread(target=wait)
        t.start()
        # stop once the other thread is in its wait (a fixed 0.5 s was not always enough
        # on a loaded machine: a wait begun after the stop found the pipe already closed)
        deadline = time.monotonic() + 20
        while not child.reading:
            assert time.monotonic() < deadline, "the other thread never began its wait"
            time.sleep(0.01)
        group.stop("slow", 2)
        t.join(10)
        assert len(got) == 1 and isinstance(got[0], RuntimeError), got
        assert child.popen.stdout.closed  # and no fd is left behind
        # and a wait that begins only after the stop says so too, not ValueError
        late = group.spawn("late", SERVER, ["slow-helper"], wait_ready=False)
        group.stop("late", 2)
        with pytest.raises(RuntimeError, match="late was stopped before it was ready"):
            group.wait_ready(late, 20)


def test_a_child_starts_in_a_parent_holding_over_a_thousand_descriptors(tmp_path):
    """A Clipper frontend with a thousand client connections open still starts a
    container: the READY wait used select(), which refuses a descriptor past 1024
    (ValueError, and the child ran on, unsupervised)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files is {hard}")
    if soft != resource.RLIM_INFINITY and soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with ProcessGroup(tmp_path) as group:
            child = group.spawn("c1", SERVER, ["ok"])
            assert child.popen.stdout.fileno() > 1024  # the case this test is about
            assert child.info == {"pid_echo": child.pid}
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_child_whose_ready_wait_fails_in_any_way_is_stopped(tmp_path, monkeypatch):
    """Not only "exited" or "not ready": any exception out of the READY wait stops the
    child, so a failed start never leaves a process nobody supervises."""
    with ProcessGroup(tmp_path) as group:
        child = group.spawn("c1", SERVER, ["slow-helper"], wait_ready=False)

        def broken(*a, **kw):
            raise ValueError("something unexpected")
        monkeypatch.setattr(group, "_read_ready", broken)
        with pytest.raises(ValueError, match="something unexpected"):
            group.wait_ready(child, 20)
        assert _gone(child.pid, timeout=10)


def test_remove_orphans_removes_only_what_no_live_writer_holds(tmp_path):
    """A process killed by SIGKILL leaves its temporaries (a checkpoint's, a frontend's
    own model store). A live writer holds a lock on what it writes, in whatever pid
    namespace it runs (a pid was judged dead there, and a live store deleted); a
    temporary younger than a minute may not be locked yet, and stays too."""
    from common.procs import hold_lock, remove_orphans

    old = time.time() - 120
    for name in ("store-dead", "store-live", "store-new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model").write_text("x")
    (tmp_path / "ck.tmp-dead").write_text("x")
    (tmp_path / "store-link").symlink_to(tmp_path / "store-dead")
    for name in ("store-dead", "store-live", "ck.tmp-dead"):
        os.utime(tmp_path / name, (old, old))
    live = hold_lock(tmp_path / "store-live")  # another open file: the lock excludes it
    try:
        remove_orphans(tmp_path.glob("store-*"))
        remove_orphans(tmp_path.glob("*.tmp-*"))
    finally:
        os.close(live)
    assert {p.name for p in tmp_path.iterdir()} == {"store-live", "store-new", "store-link"}
