import signal
import time

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
