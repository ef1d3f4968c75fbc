"""The MPI runtimes on the SSH test cluster (tests/sshcluster.py): what each one needs to
reach the nodes, given as flextui's own `--mpi_args` (the pass-through users have too).

Debian installs both Open MPI and MPICH; `mpirun`/`mpiexec` are alternatives that point
at one of them, so each runtime is named by its own binary here:

* Open MPI (`mpirun.openmpi`): its ssh client ignores $HOME, so it gets the cluster's
  ssh config with `--mca plm_rsh_args "-F CONFIG"` (strict host keys stay on).
* MPICH's Hydra (`mpiexec.hydra`): `-launcher-exec` takes one program without arguments,
  so a two-line wrapper runs `ssh -F CONFIG`; its proxies connect back to the console by
  this machine's hostname, which resolves to 127.0.0.1 here, so `-iface <bridge>` names
  the address the nodes can reach.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
from pathlib import Path

from sshcluster import SSHCluster

RUNTIMES = {"openmpi": "/usr/bin/mpirun.openmpi", "mpich": "/usr/bin/mpiexec.hydra"}
PACKAGES = {"openmpi": "openmpi-bin", "mpich": "mpich"}


def missing(flavour: str) -> str | None:
    """Why the runtime cannot be used, or None."""
    if not os.access(RUNTIMES[flavour], os.X_OK):
        return f"{RUNTIMES[flavour]} missing: apt-get install -y {PACKAGES[flavour]} (./dev test does)"
    if shutil.which("ssh") is None:
        return "ssh client missing: apt-get install -y openssh-client"
    return None


@dataclasses.dataclass
class MPICluster:
    cluster: SSHCluster
    flavour: str  # "openmpi" or "mpich"
    ssh_config: Path | None = None  # the ssh client's config; default: the cluster's

    @property
    def program(self) -> str:
        return RUNTIMES[self.flavour]

    @property
    def nodes(self):
        return self.cluster.nodes

    def reach_args(self) -> list[str]:
        """The runtime's own options that let it reach the cluster's nodes."""
        config = str(self.ssh_config or self.cluster.ssh_config)
        if self.flavour == "openmpi":
            return ["--mca", "plm_rsh_args", f"-F {config}"]
        wrapper = Path(config).with_name(Path(config).name + ".mpi-ssh")
        if not wrapper.exists():
            wrapper.write_text(f'#!/bin/sh\nexec ssh -F {shlex.quote(config)} "$@"\n')
            wrapper.chmod(0o755)
        return ["-launcher-exec", str(wrapper), "-iface", self.cluster.bridge]

    def args(self, *more_mpi_args: str) -> list[str]:
        """flextui options: `--launcher mpirun` with this runtime and its --mpi_args."""
        mpi_args = shlex.join([*self.reach_args(), *more_mpi_args])
        return ["--launcher", "mpirun", "--mpirun", self.program, "--mpi_args", mpi_args]

    def env_args(self, name: str, value: str) -> list[str]:
        """The runtime's own option that exports NAME=VALUE to what it starts."""
        if self.flavour == "openmpi":
            return ["-x", f"{name}={value}"]
        return ["-genv", name, value]

    def env(self, **extra: str) -> dict[str, str]:
        return self.cluster.env(**extra)
