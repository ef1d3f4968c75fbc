"""Which of the console's environment reaches the workers (DeepSpeed-compatible).

Remote workers start from their login environment, so like DeepSpeed's multi-node launch
we export the variables whose names start with one of EXPORT_PREFIXES, PYTHONPATH with the
working directory first, then the KEY=VALUE lines of the env files, then `--env KEY=VALUE`
from the command line (each later one wins).

Env files, in the home directory, then the working directory (later wins):
* `.deepspeed_env` (or the name in $DS_ENV_FILE, as DeepSpeed reads it): applied as
  DeepSpeed applies it, to a multi-node launch only (more than one node, a node that is
  not this machine, or --force_multi), on every node; a job on this machine alone runs
  with the user's shell as it is (a one-line note says the file was skipped);
* `.flextui_env`: flextui's own, applied to every job.

An env file is UTF-8 text, one variable a line:

    # a comment
    NCCL_DEBUG=INFO
    export NCCL_SOCKET_IFNAME=eth0     (the shell form DeepSpeed's files are often
                                        written in: "export " is dropped)
    PATH=/opt/x/bin:$PATH              ($VAR and ${VAR}: the NODE's value, as the remote
    DATA="$HOME/my data"                shell expands DeepSpeed's exports; one level of
                                        quotes is stripped; $(...) and `...` are kept as
                                        written: nothing is ever run)

Values are expanded by each node's launcher against its own environment
(flextui.launch.expand_env_value). Blank lines and lines starting with # are skipped;
whitespace around the name and the value is dropped. Anything else is refused with a
one-line EnvFileError naming the file and line, before any node is touched: a line that is
not KEY=VALUE, a name that is not a shell variable name ([A-Za-z_][A-Za-z0-9_]*), a quote
that is never closed, a value holding a NUL byte (no process environment can carry one),
bytes that are not UTF-8.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from flextui.launch import expand_env_value

EXPORT_PREFIXES = ("NCCL", "PYTHON", "UCX", "MV2", "MLFLOW")
DEEPSPEED_ENV_FILE = ".deepspeed_env"  # $DS_ENV_FILE names another, as for DeepSpeed
FLEXTUI_ENV_FILE = ".flextui_env"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPORT = re.compile(r"export\s+")
# Only real newlines count, so line numbers agree with the user's editor.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class EnvFileError(ValueError):
    """One-line, user-facing: `FILE:LINE: what is wrong`."""


def exported_from(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith(EXPORT_PREFIXES)}


def parse_env_file(text: str, source: str = "<env file>") -> dict[str, str]:
    """KEY -> VALUE as written (expanded later, on each node)."""
    env = {}
    for number, line in enumerate(_LINE_BREAK.split(text), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = _parse_line(line, f"{source}:{number}")
        env[key] = value
    return env


def _parse_line(line: str, where: str) -> tuple[str, str]:
    assignment = line[_EXPORT.match(line).end():] if _EXPORT.match(line) else line
    key, sep, value = assignment.partition("=")
    key, value = key.strip(), value.strip()
    if not sep:
        raise EnvFileError(f"{where}: expected KEY=VALUE, got {line!r}")
    if not _NAME.fullmatch(key):
        raise EnvFileError(f"{where}: {key!r} is not a variable name (letters, digits, _)")
    if "\0" in value:
        raise EnvFileError(f"{where}: the value of {key} holds a NUL byte, which no environment can carry")
    try:
        expand_env_value(value, {})
    except ValueError as exc:
        raise EnvFileError(f"{where}: in the value of {key}, {exc}") from None
    return key, value


def read_env_file(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise EnvFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = len(_LINE_BREAK.split(data[:exc.start].decode("utf-8")))
        raise EnvFileError(f"{path}:{number}: not UTF-8 text (byte {data[exc.start]:#04x})") from None
    return parse_env_file(text, path)


def env_files(cwd: str, home: str, deepspeed_name: str) -> list[tuple[str, bool]]:
    """(path, applies to every job) of each env file, in the order they are read: the home
    directory's, then the working directory's; an absolute $DS_ENV_FILE is read once."""
    found: dict[str, bool] = {}
    for directory in (home, cwd):
        found.setdefault(os.path.join(directory, deepspeed_name), False)
        found.setdefault(os.path.join(directory, FLEXTUI_ENV_FILE), True)
    return list(found.items())


@dataclass
class WorkerEnvironment:
    """What the console adds to every worker's environment (the launcher applies it)."""

    exports: dict[str, str] = field(default_factory=dict)  # as they are in the console
    env_file: dict[str, str] = field(default_factory=dict)  # VALUEs expanded on each node
    env: dict[str, str] = field(default_factory=dict)  # --env: as given, last word
    skipped: list[str] = field(default_factory=list)  # env files found but not applied

    def spec(self) -> dict:
        """The node spec's part (flextui.launch: "exports", "env_file"; "env" is merged
        with the mode's own by the job)."""
        return {"exports": self.exports, "env_file": [[k, v] for k, v in self.env_file.items()]}


def worker_environment(environ: Mapping[str, str], cwd: str, cli_env: Mapping[str, str], *,
                       multi_node: bool, workdir: str | None = None) -> WorkerEnvironment:
    """The console's part of every worker's environment (see the module docs). `workdir`:
    the working directory on the nodes, put first on PYTHONPATH for a multi-node launch.
    Raises EnvFileError for an env file that cannot be read or parsed."""
    result = WorkerEnvironment(exports=exported_from(environ), env=dict(cli_env))
    if multi_node:
        result.exports["PYTHONPATH"] = os.pathsep.join(filter(None, [workdir or cwd, environ.get("PYTHONPATH")]))
    home = environ.get("HOME") or os.path.expanduser("~")
    for path, always in env_files(cwd, home, environ.get("DS_ENV_FILE") or DEEPSPEED_ENV_FILE):
        if not os.path.isfile(path):
            continue
        if always or multi_node:
            result.env_file.update(read_env_file(path))
        else:
            result.skipped.append(path)
    return result
