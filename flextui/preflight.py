"""Checks a node must pass before anything starts on any node (all or nothing).

Self-contained (stdlib only) because the SSH transport runs this file's source with the
node's python: `python -c SOURCE REQUEST_JSON` prints a JSON list of problems.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys

_FIND_MODULE = (
    "import importlib.util, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "sys.exit(0 if importlib.util.find_spec(sys.argv[2]) else 1)"
)


def check(request: dict) -> list[str]:
    """Problems that would stop a job on this node; empty when it can start."""
    problems = []
    cwd = request.get("cwd") or os.getcwd()
    if not os.path.isdir(cwd):
        return [f"working directory {cwd} not found"]
    script = request.get("script")
    if script and request.get("no_python"):
        found = shutil.which(script, path=None if "/" not in script else "") or (
            "/" in script and os.access(os.path.join(cwd, script), os.X_OK)
        )
        if not found:
            problems.append(f"program {script} not found or not executable")
    elif script and request.get("module"):
        # In a child python: finding pkg.mod imports pkg, which must not run inside the
        # console (nor leave the job's directory on its sys.path, nor crash it).
        try:
            found = subprocess.run(
                [sys.executable, "-c", _FIND_MODULE, cwd, script], cwd=cwd, timeout=120,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            found = False
        if not found:
            problems.append(f"module {script} not found")
    elif script and not os.path.isfile(os.path.join(cwd, script)):
        problems.append(f"script {script} not found in {cwd}")
    if request.get("need_psutil"):
        try:
            import psutil  # noqa: F401
        except ImportError:
            problems.append(f"psutil is not installed for {sys.executable}")
    if request.get("need_torch"):  # --elastic runs torch's elastic agent on the node
        import importlib.util

        if importlib.util.find_spec("torch") is None:  # finds it without importing it
            problems.append(f"torch is not installed for {sys.executable} (--elastic needs it)")
    port = request.get("master_port")
    if port and not _port_free(int(port)):
        problems.append(f"master port {port} is already in use")
    return problems


def _port_free(port: int) -> bool:
    """Whether torch's TCPStore could bind the port: on every IPv4 address, and on every
    IPv6 one where the node has IPv6 (it binds `::` first), so a listener on ::1 counts."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with probe:
            # As TCPStore binds it: a port in TIME_WAIT from a previous run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE or family == socket.AF_INET:
                    return False
    return True


if __name__ == "__main__":
    print(json.dumps(check(json.loads(sys.argv[1]))))
