"""A small torch.distributed job (gloo, CPU) for trying flextui and for its tests.

Each step takes a batch from a (fake) data loader, all-reduces a tensor across every rank
and prints a progress line. Options make it misbehave the way real jobs do: one rank
failing, floods of log lines, a rank ignoring SIGTERM, a child process (like a dataloader
worker), a tqdm-style progress bar, and a hang: one rank stuck in its data loader while
the others wait for it in all_reduce (one of them from another place in the code).
"""

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import torch
import torch.distributed as dist


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-time", type=float, default=0.25, help="seconds of 'compute' per step")
    parser.add_argument("--fail-rank", type=int, default=None, help="this rank raises at --fail-step")
    parser.add_argument("--fail-step", type=int, default=5)
    parser.add_argument("--exit-code", type=int, default=1, help="exit code of the failing rank")
    parser.add_argument("--lines-per-step", type=int, default=1, help="extra log lines per step")
    parser.add_argument("--ignore-sigterm", action="store_true", help="rank(s) ignore SIGTERM")
    parser.add_argument("--ignore-rank", type=int, default=None, help="only this rank ignores SIGTERM")
    parser.add_argument("--spawn-child", action="store_true", help="start a child process per rank")
    parser.add_argument("--progress", action="store_true", help="draw a carriage-return progress bar")
    parser.add_argument("--no-dist", action="store_true", help="skip torch.distributed (log tests)")
    parser.add_argument("--hang-rank", type=int, default=None,
                        help="this rank's data loader never delivers from --hang-step on (the others "
                             "then wait for it in all_reduce)")
    parser.add_argument("--hang-step", type=int, default=2)
    parser.add_argument("--stray-rank", type=int, default=None,
                        help="at --hang-step this rank all-reduces from sync_metrics, not train_step")
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="worker processes of each rank's data loader (children of the rank)")
    return parser.parse_args()


def loader_worker(rank, index):
    """A data loader worker process: it waits for work that the fake loader never sends."""
    while True:
        time.sleep(3600)


class FakeLoader:
    """Batches as a DataLoader hands them out; on the hanging rank, from --hang-step on,
    a batch that never comes."""

    def __init__(self, args, rank):
        self.args, self.rank, self.step = args, rank, 0
        self.workers = []
        for index in range(args.loader_workers):
            worker = multiprocessing.Process(target=loader_worker, args=(rank, index), daemon=True)
            worker.start()
            self.workers.append(worker)

    def __iter__(self):
        return self

    def __next__(self):
        if self.args.hang_rank == self.rank and self.step >= self.args.hang_step:
            while True:  # waiting on a worker's queue that stays empty
                time.sleep(3600)
        self.step += 1
        time.sleep(self.args.step_time)  # "compute"
        return torch.ones(4)


def train_step(value, world_size):
    dist.all_reduce(value)
    return value / world_size


def sync_metrics(value, world_size):
    dist.all_reduce(value)
    return value / world_size


def main():
    args = parse_args()
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    host = os.uname().nodename
    if args.ignore_sigterm and args.ignore_rank in (None, rank):
        signal.signal(signal.SIGTERM, lambda *_: print(f"rank {rank}: ignoring SIGTERM", flush=True))
    child = None
    if args.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print(f"rank {rank}: started child pid {child.pid}", flush=True)
    print(f"rank {rank}/{world_size} local_rank {args.local_rank} on {host} pid {os.getpid()} "
          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
    if not args.no_dist:
        dist.init_process_group("gloo")
    value = torch.ones(4)
    loader = FakeLoader(args, rank)
    for step in range(args.steps):
        next(loader)
        if args.fail_rank == rank and step == args.fail_step:
            print(f"rank {rank}: failing at step {step}", flush=True)
            if args.exit_code == 1:
                raise RuntimeError(f"rank {rank} hit a simulated fault at step {step}")
            sys.exit(args.exit_code)
        if not args.no_dist:
            if args.stray_rank == rank and step == args.hang_step:
                value = sync_metrics(value, world_size)
            else:
                value = train_step(value, world_size)
        for i in range(args.lines_per_step - 1):
            print(f"rank {rank} step {step} detail {i}")
        if args.progress:
            bar = "#" * (step + 1) + "." * (args.steps - step - 1)
            sys.stderr.write(f"\rrank {rank} [{bar}] {step + 1}/{args.steps}")
            sys.stderr.flush()
        else:
            print(f"rank {rank} step {step + 1}/{args.steps} value {value[0].item():.3f}", flush=True)
    if args.progress:
        sys.stderr.write("\n")
    if not args.no_dist:
        dist.barrier()
        dist.destroy_process_group()
    print(f"rank {rank}: done", flush=True)
    if child is not None:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    main()
