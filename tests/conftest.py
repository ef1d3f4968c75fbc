"""Shared pytest fixtures.  Keep each part self-contained; others may add theirs below."""

# --------------------------------------------------------------------------- #
# SSH test cluster (tests/sshcluster.py): real OpenSSH nodes in namespaces.
#
#   ssh_cluster   session: 3-node SSHCluster (started on first use, stopped at end)
#   cluster       function: the same cluster, every node up (crashed ones restarted)
#                 and free of job processes before the test; after the test, job
#                 processes still on any node (after a short grace) fail the test.
#   make_cluster  function: make_cluster(n) -> an n-node SSHCluster (shared per n
#                 for the session, same up/clean checks as `cluster`).
#
# Node names depend on the prefix (normally ftn1.., but another prefix is picked
# if a concurrent run owns "ftn"): use cluster.nodes[k].name, not literals.
# --------------------------------------------------------------------------- #
import sys as _sc_sys
import time as _sc_time
from pathlib import Path as _ScPath

import pytest

_sc_sys.path.insert(0, str(_ScPath(__file__).resolve().parent))
import sshcluster as _sshcluster  # noqa: E402

SSH_CLUSTER_NODES = 3
SSH_CLUSTER_LEAK_GRACE_S = 3.0  # time the code under test gets to finish its cleanup


def _sc_new_cluster(n: int, base_dir, prefix: str) -> "_sshcluster.SSHCluster":
    try:
        _sshcluster.check_prerequisites()
    except _sshcluster.ClusterError as e:
        pytest.fail(f"{e}\n(the project's setup installs openssh-server and runs tests as root)", pytrace=False)
    c = _sshcluster.SSHCluster(n, base_dir, prefix=prefix, auto_prefix=True)
    try:
        c.start()
    except _sshcluster.ClusterError as e:
        pytest.fail(f"could not start the {n}-node SSH test cluster: {e}", pytrace=False)
    return c


def _sc_leaks(c: "_sshcluster.SSHCluster") -> dict:
    return {n.name: procs for n in c.nodes if (procs := c.job_processes(n))}


def _sc_format(leaks: dict) -> str:
    return "\n".join(f"  {name}: pid {pid} (ppid {ppid}): {args}"
                     for name, procs in leaks.items() for pid, ppid, args in procs)


def _sc_kill_leaks(c: "_sshcluster.SSHCluster", leaks: dict) -> None:
    for name, procs in leaks.items():
        c.kill_node_processes(name, [pid for pid, _, _ in procs])


def _sc_prepare(c: "_sshcluster.SSHCluster") -> None:
    """Before a test: every node up, no job process anywhere."""
    c.ensure_up()
    leaks = _sc_leaks(c)
    if leaks:
        _sc_kill_leaks(c, leaks)
        pytest.fail("job processes were already running on the SSH test cluster before this test "
                    "(leaked by an earlier test that did not use the `cluster` fixture?); killed them:\n"
                    + _sc_format(leaks), pytrace=False)


def _sc_check_after(c: "_sshcluster.SSHCluster") -> None:
    """After a test: no job process may survive (a leak is a bug in the code under test)."""
    deadline = _sc_time.monotonic() + SSH_CLUSTER_LEAK_GRACE_S
    while (leaks := _sc_leaks(c)) and _sc_time.monotonic() < deadline:
        _sc_time.sleep(0.05)
    if leaks:
        _sc_kill_leaks(c, leaks)
        pytest.fail(f"LEAK: job processes still running on the SSH test cluster "
                    f"{SSH_CLUSTER_LEAK_GRACE_S:.0f}s after the test (killed them now):\n" + _sc_format(leaks),
                    pytrace=False)


@pytest.fixture(scope="session")
def ssh_cluster(tmp_path_factory):
    c = _sc_new_cluster(SSH_CLUSTER_NODES, tmp_path_factory.mktemp("ssh_cluster"), "ftn")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(ssh_cluster):
    _sc_prepare(ssh_cluster)
    yield ssh_cluster
    _sc_check_after(ssh_cluster)


@pytest.fixture(scope="session")
def _ssh_cluster_pool(tmp_path_factory):
    pool: dict[int, _sshcluster.SSHCluster] = {}

    def get(n: int) -> "_sshcluster.SSHCluster":
        if n not in pool:
            pool[n] = _sc_new_cluster(n, tmp_path_factory.mktemp(f"ssh_cluster{n}"), "ftm")
        return pool[n]

    try:
        yield get
    finally:
        for c in pool.values():
            c.stop()


@pytest.fixture
def make_cluster(request, _ssh_cluster_pool):
    handed_out = []

    def make(n: int) -> "_sshcluster.SSHCluster":
        # n == 3 is the session cluster itself (one cluster fewer to start)
        c = request.getfixturevalue("ssh_cluster") if n == SSH_CLUSTER_NODES else _ssh_cluster_pool(n)
        _sc_prepare(c)
        if c not in handed_out:
            handed_out.append(c)
        return c

    yield make
    for c in handed_out:
        _sc_check_after(c)


# --------------------------------------------------------------------------- #
# Slurm test cluster (tests/slurmcluster.py): slurmctld + munged on the host, one real
# slurmd per node in the SSH cluster's namespaces.
#
#   slurm_cluster   session: 3-node SlurmCluster (started on first use, stopped at end)
#   slurm           function: the same cluster with no job queued and every node idle
#                   before the test; after it, a job still queued (an allocation not
#                   released) or a process left on any node (slurmstepd included) fails
#                   the test, after a short grace, and is cleaned up.
# --------------------------------------------------------------------------- #
import slurmcluster as _slurmcluster  # noqa: E402

SLURM_CLUSTER_NODES = 3
SLURM_LEAK_GRACE_S = 5.0  # slurmstepd outlives its tasks by 1-3 s


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    try:
        _slurmcluster.check_prerequisites()
    except _slurmcluster.ClusterError as e:
        pytest.fail(f"{e}\n(./dev test installs slurmctld, slurmd and munge and runs tests as root)", pytrace=False)
    c = _slurmcluster.SlurmCluster(SLURM_CLUSTER_NODES, tmp_path_factory.mktemp("slurm_cluster"), "fts")
    try:
        c.start()
    except _slurmcluster.ClusterError as e:
        pytest.fail(f"could not start the Slurm test cluster: {e}", pytrace=False)
    try:
        yield c
    finally:
        c.stop()


def _slurm_leftovers(c) -> tuple[list[str], dict]:
    procs = {n.name: p for n in c.nodes if (p := c.job_processes(n))}
    return c.jobs(), procs


def _slurm_clean(c, jobs, procs) -> None:
    if jobs:
        c.slurm("scancel", *jobs, check=False)
    for name, ps in procs.items():
        c.kill_node_processes(name, [pid for pid, _, _ in ps])


@pytest.fixture
def slurm(slurm_cluster):
    c = slurm_cluster
    jobs, procs = _slurm_leftovers(c)
    if jobs or procs:
        _slurm_clean(c, jobs, procs)
        pytest.fail(f"the Slurm test cluster was not clean before this test (killed): jobs {jobs}, "
                    f"processes {procs}", pytrace=False)
    c.wait_idle()
    yield c
    deadline = _sc_time.monotonic() + SLURM_LEAK_GRACE_S
    while any(leftovers := _slurm_leftovers(c)) and _sc_time.monotonic() < deadline:
        _sc_time.sleep(0.05)
    if any(leftovers):
        _slurm_clean(c, *leftovers)
        pytest.fail(f"LEAK on the Slurm test cluster {SLURM_LEAK_GRACE_S:.0f}s after the test (cleaned now): "
                    f"jobs still queued {leftovers[0]}, processes on nodes {leftovers[1]}", pytrace=False)
    c.wait_idle()


# --------------------------------------------------------------------------- #
# MPI runtimes on the SSH test cluster (tests/mpicluster.py).
#
#   mpi_cluster   function, parametrized "openmpi" / "mpich": the `cluster` fixture (same
#                 up/clean/leak checks) with the options that let that runtime reach its
#                 nodes: mpi_cluster.args() are flextui's `--launcher mpirun ...` options.
# --------------------------------------------------------------------------- #
import mpicluster as _mpicluster  # noqa: E402


@pytest.fixture(params=sorted(_mpicluster.RUNTIMES))
def mpi_cluster(request, cluster):
    if (why := _mpicluster.missing(request.param)) is not None:
        pytest.fail(why, pytrace=False)
    return _mpicluster.MPICluster(cluster, request.param)


# --------------------------------------------------------------------------- #
# Test tiers.  `cluster`: the test uses a real sshd/Slurm/MPI test cluster (applied
# automatically from its fixtures; by hand where a test looks its cluster up itself).
# `slow`: a local test that takes a second or more on 2 quiet cores: real torch jobs, real
# timeouts and grace periods, Pilot tests of 64-512-rank jobs (marked by hand, from
# `pytest --durations=0`).  The quick loop is
#     ./dev quick        = pytest -q -n 2 -m "not cluster and not slow" (pytest-xdist)
# and `./dev test` (CI) runs everything: the tests without a cluster with -n 2, then the
# cluster tests one at a time (./dev run_tests). A process count in a test that is not
# `cluster` must be the test's own (a marker in argv), since another test runs beside it.
# --------------------------------------------------------------------------- #
_CLUSTER_FIXTURES = {"cluster", "make_cluster", "ssh_cluster", "slurm", "slurm_cluster", "mpi_cluster"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
