"""common.stalls: the time an event loop did not run, seen by the watchdog."""

import asyncio
import time

from common.stalls import LoopWatchdog


def test_a_blocked_loop_is_counted_as_stalled_while_it_lasts_and_after():
    """A stall shows while it is in progress (the first timer to run after a resume
    may run before the watchdog's tick) and once recorded; a loop that runs does not."""
    async def main():
        dog = LoopWatchdog(period=0.05, slack=0.1)
        dog.start()
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        quiet = dog.stalled_since(t0 - 0.3)
        time.sleep(0.8)  # the loop is blocked: nothing else runs
        during = dog.stalled_since(t0)  # asked before the watchdog ticks again
        await asyncio.sleep(0.2)
        after, before = dog.stalled_since(t0), dog.stalled_since(time.monotonic())
        dog.stop()
        return quiet, during, after, before
    quiet, during, after, before = asyncio.run(main())
    assert quiet < 0.3 and before < 0.3  # (a busy machine may starve the loop a little)
    assert 0.6 < during < 1.5 and 0.6 < after < 1.5
