"""A configurable test worker: reports its identity, then misbehaves on request."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int)
parser.add_argument("--children", type=int, default=0, help="child processes to start")
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--fail-rank", type=int)
parser.add_argument("--fail-after", type=float, default=0.5)
parser.add_argument("--code", type=int, default=3)
parser.add_argument("--run-for", type=float, default=600.0)
parser.add_argument("--lines", type=int, default=0, help="print this many numbered lines, then exit")
parser.add_argument("rest", nargs="*")
args = parser.parse_args()
rank = int(os.environ["RANK"])
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(args.children):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
env = {k: os.environ.get(k) for k in (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "CROSS_RANK", "CROSS_SIZE",
    "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", "FLEXTUI_TEST")}
print("ENV " + json.dumps({"env": env, "argv": sys.argv[1:], "host": os.uname().nodename,
                           "local_rank_arg": args.local_rank, "rest": args.rest}), flush=True)
if args.lines:
    for i in range(args.lines):
        print(f"rank {rank} line {i}")
    sys.exit(0)
print(f"ready rank {rank}", flush=True)
start = time.time()
while time.time() - start < args.run_for:
    if args.fail_rank == rank and time.time() - start >= args.fail_after:
        print(f"rank {rank} failing with {args.code}", flush=True)
        sys.exit(args.code)
    time.sleep(0.05)
