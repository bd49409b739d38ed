"""A child process for tests/common/test_procs.py."""

import os
import sys
import time

from common.procs import announce_ready

if sys.argv[1] == "die":
    print("about to fail on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
announce_ready(pid_echo=os.getpid())
while True:
    time.sleep(0.1)
