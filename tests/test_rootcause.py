"""rootcause.py and the words diagnosis.py builds on it: a failed rank's last error line,
peer errors, collateral ranks, stalls and resources in a table's few characters."""

from __future__ import annotations

import pytest

from flextui.diagnosis import (
    collateral_text, cpu_text, error_text, gpu_telemetry_note, gpu_text, mem_text, outcome_text, rank_status_text,
    short_duration, silent_text, stall_text, stall_warning, status_text, verdict_line,
)
from flextui.headless import summary_table
from flextui.model import JobModel, JobState
from flextui.rootcause import error_line, is_peer_error
from flextui.world import World

TORCH_TRACEBACK = """\
rank 3 step 2/20 value 1.000
[rank3]: Traceback (most recent call last):
[rank3]:   File "/work/examples/train.py", line 82, in <module>
[rank3]:     main()
[rank3]:   File "/work/examples/train.py", line 57, in main
[rank3]:     raise RuntimeError(f"rank {rank} hit a simulated fault at step {step}")
[rank3]: RuntimeError: rank 3 hit a simulated fault at step 2"""

CHAINED = """\
Traceback (most recent call last):
  File "a.py", line 2, in <module>
    {}["x"]
    ~~^^^^^
KeyError: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "a.py", line 4, in <module>
    raise ValueError("bad config")
ValueError: bad config
flushing logs..."""

GLOO = ("[rank0]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] "
        "Connection closed by peer [127.0.0.1]:12981. This is typically caused by a remote worker crashing.")


@pytest.mark.parametrize("text, killed, expected", [
    (TORCH_TRACEBACK, False, "RuntimeError: rank 3 hit a simulated fault at step 2"),
    (CHAINED, False, "ValueError: bad config"),
    ("[rank0]: Traceback (most recent call last):\n[rank0]:   File \"x.py\", line 1, in f\n" + GLOO, False,
     "RuntimeError: Connection closed by peer [127.0.0.1]:12981. This is typically caused by a remote "
     "worker crashing."),
    ("loading\nerror: config.json not found", False, "error: config.json not found"),
    ("step 1\nstep 2\nready", False, None),  # no error to name: the outcome says it all
    # Killed by a signal: a traceback counts only if it is what the rank printed last.
    (CHAINED.rsplit("\n", 1)[0], True, "ValueError: bad config"),
    (CHAINED + "\nstep 1\nstep 2\nstep 3\nstep 4", True, None),
    ("step 9\nFatal Python error: Segmentation fault", True, "Fatal Python error: Segmentation fault"),
])
def test_a_ranks_last_error_line(text, killed, expected):
    assert error_line(text.splitlines(), killed=killed) == expected


@pytest.mark.parametrize("line, peer", [
    ("RuntimeError: Connection closed by peer [10.0.0.2]:4302", True),
    ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited "
     "or there was a network error, NCCL version 2.19.3", True),
    ("torch.distributed.DistStoreError: Failed to recv, got 0 bytes. Connection was likely closed. "
     "Did the remote server shutdown or crash?", True),
    ("RuntimeError: Connection reset by peer", True),
    ("torch.distributed.elastic.multiprocessing.api.SignalException: Process 17 got signal: 15", True),
    ("RuntimeError: CUDA error: out of memory", False),
    ("ValueError: bad config", False),
    (None, False),
])
def test_peer_errors(line, peer):
    assert is_peer_error(line) is peer


T0 = 1000.0


def cascade(world: World | None = None) -> JobModel:
    """4 ranks on n1, n2: rank 3 raises, 0 and 2 die of gloo errors, 1 is stopped."""
    clock = lambda: T0 + 20  # noqa: E731
    m = JobModel(world or World.from_slots({"n1": [0, 1], "n2": [0, 1]}), "run", clock=clock)
    for r in m.ranks:
        m.apply(r.info.node_rank, {"ev": "started", "rank": r.rank, "pid": 100 + r.rank, "t": T0})
    for rank, text, code, signal, t, stopped in (
        (3, TORCH_TRACEBACK, 1, None, T0 + 5, False),
        (0, "[rank0]: Traceback (most recent call last):\n[rank0]:   File \"t.py\", line 1\n" + GLOO, 1, None,
         T0 + 5.1, False),
        (2, "[rank0]: Traceback (most recent call last):\n[rank0]:   File \"t.py\", line 1\n" + GLOO, None, 15,
         T0 + 5.2, True),
        (1, "step 5\n", None, 15, T0 + 5.2, True),
    ):
        node = m.ranks[rank].info.node_rank
        m.apply(node, {"ev": "out", "rank": rank, "data": text + "\n"})
        m.apply(node, {"ev": "exited", "rank": rank, "code": code, "signal": signal, "t": t, "stopped": stopped})
    m.finish()
    return m


def test_a_cascade_in_words():
    m = cascade()
    texts = [(status_text(r), outcome_text(r), error_text(r) and error_text(r)[:40]) for r in m.ranks]
    assert texts == [
        ("collateral 1", "exit 1 (collateral)", "RuntimeError: Connection closed by peer "),
        ("stopped SIGTERM", "signal 15 (SIGTERM) (stopped)", None),
        ("collateral SIGTERM", "signal 15 (SIGTERM) (collateral)", "RuntimeError: Connection closed by peer "),
        ("failed 1", "exit 1", "RuntimeError: rank 3 hit a simulated fau"),
    ]
    assert verdict_line(m, T0 + 20) == ("job failed (exit code 1); root cause: rank 3 on n2, exit 1: "
                                        "RuntimeError: rank 3 hit a simulated fault at step 2")
    assert collateral_text(m) == "collateral: ranks 0,2 failed after rank 3 with a peer-connection error"
    assert m.summary()["ranks"][0]["collateral"] is True and "error" in m.summary()["ranks"][3]


def test_a_share_of_the_job_names_the_jobs_ranks():
    """--no_ssh --node_rank 2: this console's ranks 0-3 are the job's 4-7."""
    share = World.from_slots({"n0": [0, 1], "n1": [0, 1], "n2": [0, 1, 2, 3]}).share_of(2)
    m = cascade(share)
    assert collateral_text(m) == "collateral: ranks 4,6 failed after rank 7 with a peer-connection error"
    table = summary_table(m).splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("RANK "))
    assert [row.split()[0] for row in table[header + 1: header + 5]] == ["4", "5", "6", "7"]
    assert "root cause: rank 7 on n2" in table[-1]


def running(stall_after: float = 300.0) -> tuple[JobModel, list[float]]:
    now = [T0]
    m = JobModel(World.from_slots({"n1": [0, 1], "n2": [0, 1]}), "run", clock=lambda: now[0])
    m.stall_after = stall_after
    for r in m.ranks:
        m.apply(r.info.node_rank, {"ev": "started", "rank": r.rank, "pid": 100 + r.rank, "t": T0})
    assert m.state is JobState.RUNNING
    return m, now


def test_silence_and_stalls_in_words():
    m, now = running()
    now[0] = T0 + 4
    assert silent_text(m, m.ranks[0], now[0]) == ""  # a rank quiet for a few seconds is no news
    m.apply(0, {"ev": "out", "rank": 1, "data": "step 1\n"})
    now[0] = T0 + 301
    assert [silent_text(m, r, now[0]) for r in m.ranks] == ["5m01s", "4m57s", "5m01s", "5m01s"]
    assert [rank_status_text(m, r, now[0]) for r in m.ranks] == ["stalled?", "running", "stalled?", "stalled?"]
    assert stall_text(m, now[0]) == "⚠ 3 silent > 5m (d: stacks)"
    assert stall_warning(m, m.ranks[2], now[0]) == (
        "rank 2 on n2: silent for 5m01s (--stall_after 300): stalled? (it keeps running)")
    now[0] = T0 + 400
    assert stall_text(m, now[0]) == "⚠ all 4 ranks silent > 5m: a collective hang? (d: stacks)"


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.9, "59s"), (60, "1m"), (330, "5m30s"), (7500, "2h05m")])
def test_short_durations(seconds, text):
    assert short_duration(seconds) == text


def test_resources_in_a_few_characters():
    m, _ = running()
    m.apply(1, {"ev": "sample", "t": 0, "nvml": None, "ranks": [
        {"rank": 2, "cpu": 197.4, "rss": 3 * (1 << 30) + (1 << 29), "threads": 9, "procs": 2,
         "gpu": {"device": "0", "util": 87, "mem_used": 30 << 30, "mem_total": 80 << 30, "proc_mem": 12 << 30}},
        {"rank": 3, "cpu": None, "rss": 900 << 20, "threads": 1, "procs": 1},
    ]})
    m.apply(0, {"ev": "sample", "t": 0, "nvml": "nvidia-ml-py is not installed for /usr/bin/python3",
                "ranks": [{"rank": 0, "cpu": 3.0, "rss": 5 << 10, "threads": 1, "procs": 1}]})
    r = m.ranks
    assert [cpu_text(x.usage) for x in r] == ["3%", "-", "197%", "-"]
    assert [mem_text(x.usage and x.usage.rss) for x in r] == ["5.0K", "-", "3.5G", "900M"]
    assert [gpu_text(x) for x in r] == ["0", "1", "0 87% 12G/80G", "1"]  # the binding only, without NVML
    assert gpu_telemetry_note(m) == "no GPU telemetry on n1 (nvidia-ml-py is not installed for /usr/bin/python3)"
