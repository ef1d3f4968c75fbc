"""Trivial launch-benchmark worker: one line naming its rank, then exit.

Works under flextui, DeepSpeed (RANK from its launcher) and pdsh (RANK exported by the
command line); accepts and ignores --local_rank.
"""
import os
import time

print(f"rank {os.environ.get('RANK', '?')} up t={time.time():.6f}", flush=True)
