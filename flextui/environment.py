"""Which of the console's environment reaches remote workers (DeepSpeed-compatible).

Remote workers start from their login environment, so like DeepSpeed we export the
variables whose names start with one of EXPORT_PREFIXES, then the KEY=VALUE lines of
`.deepspeed_env` / `.flextui_env` found in the home and the working directory (later
files win), then `--env KEY=VALUE` from the command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

EXPORT_PREFIXES = ("NCCL", "PYTHON", "UCX", "MV2", "MLFLOW")
ENV_FILE_NAMES = (".deepspeed_env", ".flextui_env")


def exported_from(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith(EXPORT_PREFIXES)}


def parse_env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep and key.strip():
            env[key.strip()] = value.strip()
    return env


def env_file_paths(cwd: str, home: str) -> list[str]:
    return [os.path.join(d, name) for d in (home, cwd) for name in ENV_FILE_NAMES]


def worker_exports(environ: Mapping[str, str], cwd: str, cli_env: Mapping[str, str]) -> dict[str, str]:
    env = exported_from(environ)
    for path in env_file_paths(cwd, os.path.expanduser("~")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                env.update(parse_env_file(f.read()))
    env.update(cli_env)
    return env
