"""The ``race`` fixture (conftest.py) that the thread-safety tests stand on: it must
fail a test whose threads deadlock, not pass it with the threads left running."""

import threading

import pytest


def test_a_thread_still_running_after_the_timeout_fails_the_test(race):
    release = threading.Event()

    def stuck():
        release.wait(30)

    def quick():
        pass

    try:
        with pytest.raises(TimeoutError, match="still running after 0.3 s: stuck$"):
            race(stuck, quick, timeout=0.3)
    finally:
        release.set()


def test_the_first_error_of_any_thread_is_raised(race):
    def bad():
        raise KeyError("from a thread")

    with pytest.raises(KeyError, match="from a thread"):
        race(bad, lambda: None)
