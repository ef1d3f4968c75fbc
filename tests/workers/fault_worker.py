"""A rank for the fault tests: one child process, and its own copy of every byte it prints.

    fault_worker.py --copy-dir DIR [--run-for S] [--interval S] [--pad N]
                    [--trigger FILE --on-trigger fail|burst|finish [--fail-rank R] [--code C]
                     [--burst-bytes N]]

Each line goes to DIR/rank-<RANK>.log, then to stdout (the launcher's log file), with
SIGTERM, SIGINT and SIGHUP blocked in between: a rank stopped by a signal leaves both copies
equal (a SIGKILL in between leaves the own copy one line ahead), so a test can check the
console's run directory byte for byte against this copy. After "ready rank R" it logs a
numbered line (padded with N more bytes) every --interval seconds (with wide characters,
so decoding is checked too)
until --run-for ends it, or until FILE exists; then --on-trigger
    fail    rank --fail-rank exits with --code (the others go on)
    burst   every rank writes --burst-bytes at once and exits 0 (a large last output)
    finish  every rank exits 0
Ending cleanly it ends its child too; failing, it leaves the child to the launcher.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int)
parser.add_argument("--copy-dir", required=True)
parser.add_argument("--run-for", type=float, default=600.0)
parser.add_argument("--interval", type=float, default=0.02)
parser.add_argument("--pad", type=int, default=0)
parser.add_argument("--trigger")
parser.add_argument("--on-trigger", choices=("fail", "burst", "finish"))
parser.add_argument("--fail-rank", type=int)
parser.add_argument("--code", type=int, default=7)
parser.add_argument("--burst-bytes", type=int, default=50_000)
args = parser.parse_args()
rank = int(os.environ["RANK"])
STOPPERS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

os.makedirs(args.copy_dir, exist_ok=True)
copy = os.open(os.path.join(args.copy_dir, f"rank-{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def say(text: str) -> None:
    data = text.encode()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPERS)
    try:
        for fd in (copy, 1):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
say(f"ready rank {rank} on {os.uname().nodename} child {child.pid}\n")
start = time.monotonic()
line = 0
while True:
    if args.trigger and os.path.exists(args.trigger):
        if args.on_trigger == "fail" and rank == args.fail_rank:
            say(f"rank {rank} failing with {args.code}\n")
            sys.exit(args.code)
        if args.on_trigger == "burst":
            row = f"rank {rank} burst " + "x" * 90 + "\n"
            say(row * (args.burst_bytes // len(row) + 1))
            break
        if args.on_trigger == "finish":
            say(f"rank {rank} finished after {line} lines\n")
            break
    if time.monotonic() - start >= args.run_for:
        say(f"rank {rank} done after {line} lines\n")
        break
    say(f"rank {rank} line {line} \u00e9t\u00e9 {'.' * (line % 50)}{'p' * args.pad}\n")
    line += 1
    time.sleep(args.interval)
child.kill()  # a clean end leaves nothing behind; a failing rank (above) leaves its child
child.wait()
