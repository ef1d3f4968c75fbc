"""A stand-in Job for UI tests, snapshots and benchmarks: same surface, no processes.

FakeJob satisfies flextui.job.JobProtocol, what FlexApp needs from a job (the model,
world, run id, grace, run directory, `async run()` and the controls). It records every
control call in `calls` and ends its run() when stopped or killed.
"""

from __future__ import annotations

import asyncio
import signal as signals

from flextui.job import DEFAULT_GRACE, STACKS_TIMEOUT, LaunchError
from flextui.model import JobModel, RankState, RankStatus
from flextui.stacks import StackDump, build_dump, rank_stack
from flextui.world import World


class FakeJob:
    def __init__(self, hosts: dict[str, int] | None = None, run_id: str = "20250101-120000-abcdef",
                 t0: float = 1_000_000.0, tail_lines: int = 5000, finish_on_stop: bool = True,
                 launch_error: str | None = None, run_forever: bool = True) -> None:
        hosts = hosts or {"localhost": 4}
        self.world = World.from_slots({h: list(range(n)) for h, n in hosts.items()})
        self.run_id = run_id
        self.model = JobModel(self.world, run_id, tail_lines)
        self.model.started_at = t0
        self.t0 = t0
        self.grace = DEFAULT_GRACE
        self.run_path = f"flextui-runs/{run_id}"
        self.log_files: dict[int, str] = {}  # rank -> its log file (tests of the file-backed view)
        self.calls: list = []
        self.finish_on_stop = finish_on_stop
        self.launch_error = launch_error
        self.run_forever = run_forever
        self._done = asyncio.Event()
        # What dump_stacks answers: launcher "stack" events by node rank, and per-host errors.
        self.stack_events: list[tuple[int, dict]] = []
        self.stack_errors: dict[str, str] = {}

    # -- the Job surface ----------------------------------------------------------------

    async def run(self) -> int:
        if self.launch_error:
            self.model.error = self.launch_error
            self.model.finish()
            raise LaunchError(self.launch_error)
        if self.run_forever:
            await self._done.wait()
        if not self.model.state.finished:
            self.model.finish()
        return self.model.exit_code

    def stop(self, reason: str, by_user: bool = False) -> None:
        self.calls.append(("stop", reason))
        if self.model.begin_stop(reason, self.grace, by_user) and self.finish_on_stop:
            self.end_all(signal=15, stopped=True)

    def abort(self, signum: int = signals.SIGINT) -> None:
        self.calls.append(("abort", signum))
        if self.model.stop_started_at is None:
            self.model.abort_signal = signum
            self.stop(f"aborted by user ({signals.Signals(signum).name})", by_user=True)
        else:
            self.kill()

    def kill(self) -> None:
        self.calls.append(("kill",))
        self.model.aborted_by_user = self.model.aborted_by_user or self.model.first_failure is None
        self.model.begin_stop("killed by user", 0.0, by_user=True)
        self.end_all(signal=9, stopped=True)

    def stop_rank(self, rank: int) -> None:
        self.calls.append(("stop_rank", rank))

    def kill_rank(self, rank: int) -> None:
        self.calls.append(("kill_rank", rank))

    def stop_node(self, node_rank: int) -> None:
        self.calls.append(("stop_node", node_rank))

    async def dump_stacks(self, timeout: float = STACKS_TIMEOUT) -> StackDump:
        self.calls.append(("dump_stacks",))
        running = [r.rank for r in self.model.ranks if r.status is RankStatus.RUNNING]
        stacks = [rank_stack(event, self.model.nodes[node].host) for node, event in self.stack_events]
        dump = build_dump(self.t0 + 20, stacks, self.stack_errors, running)
        dump.path = f"{self.run_path}/stacks-120020.txt"
        return dump

    def log_file(self, state: RankState) -> str | None:
        return self.log_files.get(state.rank)

    # -- driving the model ---------------------------------------------------------------

    def start_all(self, t: float | None = None) -> None:
        t = self.t0 + 1 if t is None else t
        for r in self.model.ranks:
            self.model.apply(r.info.node_rank, {"ev": "started", "rank": r.rank,
                                                "pid": 4000 + r.rank, "t": t})

    def out(self, rank: int, data: str) -> None:
        self.model.apply(self.world.ranks[rank].node_rank, {"ev": "out", "rank": rank, "data": data})

    def exit(self, rank: int, code: int | None = 0, signal: int | None = None,
             t: float | None = None, stopped: bool = False) -> None:
        self.model.apply(self.world.ranks[rank].node_rank, {
            "ev": "exited", "rank": rank, "code": code, "signal": signal,
            "t": self.t0 + 10 if t is None else t, "stopped": stopped,
        })

    def end_all(self, signal: int | None = None, stopped: bool = False) -> None:
        for r in self.model.ranks:
            if not r.status.finished:
                self.exit(r.rank, None if signal else 0, signal, stopped=stopped)
        self.finish()

    def finish(self) -> None:
        for node in self.model.nodes:
            node.done = True
        if not self.model.state.finished:
            self.model.finish()
            self.model.ended_at = self.t0 + 12
        self._done.set()


def demo_job(run_forever: bool = True) -> FakeJob:
    """A fixed, clock-free job state for snapshots: 8 ranks on 2 nodes, one failure."""
    job = FakeJob({"node-a": 4, "node-b": 4}, run_forever=run_forever, finish_on_stop=False)
    job.start_all()
    for step in range(1, 41):
        for rank in range(8):
            job.out(rank, f"rank {rank} step {step}/100 loss {2.5 - step * 0.01 - rank * 0.001:.3f} "
                          f"lr 3.0e-04 {1500 + rank * 3} tokens/s\n")
        if step % 10 == 0:
            for rank in range(8):
                job.out(rank, f"checkpoint saved: ckpt/step-{step}.pt\n")
    job.out(3, "[W] NCCL watchdog: collective timed out after 600000 ms\n")
    for rank in range(8):
        job.out(rank, "evaluating |" if rank != 5 else "")
    job.out(0, "\revaluating |████      | 40%")
    job.out(5, "Traceback (most recent call last):\n"
               '  File "train.py", line 57, in main\n'
               "    loss.backward()\n"
               "RuntimeError: CUDA error: an illegal memory access was encountered\n")
    job.exit(5, code=1, t=job.t0 + 8)
    job.exit(7, code=None, signal=15, t=job.t0 + 9, stopped=True)
    job.model.begin_stop("rank 5 failed", DEFAULT_GRACE)
    job.model.stop_started_at = job.t0 + 8.5
    return job


#: The fixed "now" for demo_job(): 2.5 s into the stop, so "SIGKILL in 8s".
DEMO_NOW = 1_000_000.0 + 11.0


def finished_demo_job() -> FakeJob:
    job = demo_job(run_forever=False)
    for rank in (0, 1, 2, 3, 4, 6):
        job.exit(rank, code=None, signal=15, t=job.t0 + 11, stopped=True)
    job.finish()
    job.model.ended_at = job.t0 + 11.5
    return job


