"""A child process for tests/common/test_procs.py."""

import os
import sys
import time

from common.procs import announce_ready

if sys.argv[1] == "die":
    print("about to fail on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
if sys.argv[1] == "chatty":  # never announces; writes far more than a pipe buffers
    for i in range(20000):
        print(f"line {i} " + "x" * 40)
    sys.exit(0)
if sys.argv[1] == "parent":  # a parent with a child of its own, then waits for a signal
    from common.procs import ProcessGroup

    group = ProcessGroup(sys.argv[2])
    kid = group.spawn("grandchild", "tests.common._ready_child", ["ok"])
    announce_ready(grandchild=kid.pid)
    while True:
        time.sleep(0.1)
if sys.argv[1] == "garbled":  # a READY line that is not JSON, then stays alive
    print("READY {not json", flush=True)
    while True:
        time.sleep(0.1)
if sys.argv[1] == "ready-and-more":  # READY and another line in one write
    os.write(1, b'READY {"pid_echo": %d}\nprinted right after ready\n' % os.getpid())
    while True:
        time.sleep(0.1)
if sys.argv[1] == "stubborn-kid":  # a child of its own group that ignores SIGTERM
    import subprocess

    kid = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                            "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                            "print('ignoring', flush=True); time.sleep(120)"],
                           stdout=subprocess.PIPE)
    kid.stdout.readline()  # its handler is installed
    announce_ready(kid=kid.pid)
    while True:
        time.sleep(0.1)
if sys.argv[1] == "crash-leaving-kid":  # a helper in its group, READY, then it crashes
    import subprocess

    kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    announce_ready(kid=kid.pid)
    time.sleep(0.3)
    sys.exit(1)
if sys.argv[1] == "slow-helper":  # never ready; a helper in its own session keeps our
    import subprocess  # stdout open for 5 s after we are gone

    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"],
                     start_new_session=True)
    time.sleep(30)
    sys.exit(0)
announce_ready(pid_echo=os.getpid())
while True:
    time.sleep(0.1)
