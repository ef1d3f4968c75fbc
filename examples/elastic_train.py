"""A small checkpoint-resuming torch.distributed job (gloo, CPU) for `flextui --elastic`.

Each step all-reduces a tensor across every rank and rank 0 saves the next step to a
checkpoint file in a directory every node can read (a shared filesystem: --ckpt-dir,
default ./elastic-ckpt/<run id>). When torch's elastic agents restart the workers — a
rank failed, a node was lost, a node joined — every rank resumes from the checkpoint,
whatever the new world size:

    flextui --elastic --min_nodes 1 --max_restarts 3 hostfile examples/elastic_train.py --steps 100

--fail-rank R makes rank R fail once at --fail-step, to see a restart.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--step-time", type=float, default=0.2, help="seconds of 'compute' per step")
    parser.add_argument("--ckpt-dir", help="shared by all nodes (default ./elastic-ckpt/<run id>)")
    parser.add_argument("--fail-rank", type=int, help="this rank fails once, at --fail-step")
    parser.add_argument("--fail-step", type=int, default=3)
    return parser.parse_args()


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"step": 0}


def save(path, state):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)  # a reader sees the old or the new checkpoint, never half of one


def main():
    args = parse_args()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "local")
    ckpt_dir = args.ckpt_dir or os.path.join("elastic-ckpt", run_id)
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, "checkpoint.json")
    host = os.uname().nodename
    dist.init_process_group("gloo")
    start = load(path)["step"]  # after the group formed: every rank of this attempt agrees
    what = f"resumed from step {start}" if start else "starting"
    print(f"rank {rank}/{world_size} local_rank {args.local_rank} on {host} restart {restart}: {what}",
          flush=True)
    value = torch.ones(1)
    for step in range(start, args.steps):
        time.sleep(args.step_time)
        failed_once = os.path.join(ckpt_dir, f"rank-{rank}-failed")
        if args.fail_rank == rank and step == args.fail_step and not os.path.exists(failed_once):
            open(failed_once, "w").close()
            print(f"rank {rank}: failing at step {step}", flush=True)
            sys.exit(1)
        total = value.clone()
        dist.all_reduce(total)
        if rank == 0:
            save(path, {"step": step + 1, "world_size": world_size})
        print(f"rank {rank}/{world_size} step {step + 1}/{args.steps} sum {total.item():.0f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: done", flush=True)


if __name__ == "__main__":
    main()
