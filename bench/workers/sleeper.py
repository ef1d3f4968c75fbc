"""Long-running benchmark worker for abort and idle runs.

Prints "ready rank R", optionally starts child processes (like dataloader workers),
then sleeps quietly. --ignore-term-rank R makes only that rank ignore SIGTERM.
Works under flextui, DeepSpeed and pdsh (RANK from the environment).
"""
import argparse
import os
import signal
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int)
parser.add_argument("--children", type=int, default=0)
parser.add_argument("--ignore-term-rank", type=int, default=None)
parser.add_argument("--run-for", type=float, default=600.0)
args = parser.parse_args()
rank = int(os.environ.get("RANK", "0"))
if args.ignore_term_rank == rank:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(args.children):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"ready rank {rank} t={time.time():.6f}", flush=True)
time.sleep(args.run_for)
