"""Which of the console's environment reaches remote workers (DeepSpeed-compatible).

Remote workers start from their login environment, so like DeepSpeed we export the
variables whose names start with one of EXPORT_PREFIXES, then the KEY=VALUE lines of
`.deepspeed_env` / `.flextui_env` found in the home and the working directory (later
files win), then `--env KEY=VALUE` from the command line.

An env file is UTF-8 text, one variable a line:

    # a comment
    NCCL_DEBUG=INFO
    export NCCL_SOCKET_IFNAME=eth0     (the shell form DeepSpeed's files are often
                                        written in: "export " is dropped)

Blank lines and lines starting with # are skipped; whitespace around the name and the
value is dropped. Anything else is refused with a one-line EnvFileError naming the file
and line, before any node is touched: a line that is not KEY=VALUE, a name that is not
a shell variable name ([A-Za-z_][A-Za-z0-9_]*), a value holding a NUL byte (no process
environment can carry one), bytes that are not UTF-8.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

EXPORT_PREFIXES = ("NCCL", "PYTHON", "UCX", "MV2", "MLFLOW")
ENV_FILE_NAMES = (".deepspeed_env", ".flextui_env")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPORT = re.compile(r"export\s+")
# Only real newlines count, so line numbers agree with the user's editor.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class EnvFileError(ValueError):
    """One-line, user-facing: `FILE:LINE: what is wrong`."""


def exported_from(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith(EXPORT_PREFIXES)}


def parse_env_file(text: str, source: str = "<env file>") -> dict[str, str]:
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


def env_file_paths(cwd: str, home: str) -> list[str]:
    return [os.path.join(d, name) for d in (home, cwd) for name in ENV_FILE_NAMES]


def worker_exports(environ: Mapping[str, str], cwd: str, cli_env: Mapping[str, str]) -> dict[str, str]:
    """Raises EnvFileError for an env file that cannot be read or parsed."""
    env = exported_from(environ)
    for path in env_file_paths(cwd, os.path.expanduser("~")):
        if os.path.isfile(path):
            env.update(read_env_file(path))
    env.update(cli_env)
    return env
