"""DeepSpeed-compatible hostfiles and GPU slot selection.

Hostfile: one ``HOST slots=N`` entry per line (1 <= N <= 4096). Blank lines and
``#`` comments (whole-line or trailing) are ignored::

    # training cluster
    node1 slots=4
    node2 slots=4   # spare box

Resource filters (``--include`` / ``--exclude``) follow DeepSpeed's
documented grammar::

    SPEC      := NODE_SPEC ["@" NODE_SPEC ...]
    NODE_SPEC := HOST | HOST ":" SLOT ["," SLOT ...]

A bare ``HOST`` means all of its slots; slots are physical GPU ids
``0..slots-1``. ``node1@node2:0,2`` selects all of node1 plus GPUs 0 and 2
of node2. Repeating a host merges its slots. Results always follow the
hostfile's order, whatever order the spec names hosts in.

``--num_nodes N`` keeps the first N hosts; ``--num_gpus N`` keeps GPUs
0..N-1 of every kept host. Neither may be combined with a filter.

Every problem is raised as a one-line ``HostfileError``.
"""

from __future__ import annotations

import os
import re

__all__ = ["HostfileError", "parse_hostfile", "read_hostfile", "select_slots"]

# Only real newlines: str.splitlines() also breaks on \v, \f, \x85, \u2028...,
# which would make our line numbers disagree with the user's editor.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SLOTS_FIELD = re.compile(r"slots=([+-]?[0-9]+)")
_SLOT_ID = re.compile(r"[0-9]+")
_NEGATIVE_SLOT_ID = re.compile(r"-[0-9]+")
# These characters are the filter grammar's separators, so a host containing
# one could never be named in --include/--exclude.
_SPEC_SEPARATORS = ("@", ":", ",")
_EXPECTED_LINE = "expected 'HOST slots=N'"
# One worker process per slot: no machine runs more than this many ranks, so a larger
# number is a typo (and materialising 10**22 ranks would exhaust memory, not fail).
MAX_SLOTS = 4096
_EXPECTED_ITEM = "expected HOST or HOST:SLOT[,SLOT...]"


class HostfileError(ValueError):
    """One-line, user-facing message. str(e) is printed as `flextui: error: <msg>`."""


def parse_hostfile(text: str, source: str = "<hostfile>") -> dict[str, int]:
    """Ordered host -> slots (insertion order = hostfile order)."""
    hosts: dict[str, int] = {}
    first_line_of: dict[str, int] = {}
    for line_number, raw_line in enumerate(_LINE_BREAK.split(text), start=1):
        entry = raw_line.split("#", 1)[0].strip()
        if not entry:
            continue
        where = f"{source}:{line_number}"
        offending = raw_line.strip()
        fields = entry.split()
        slots_match = _SLOTS_FIELD.fullmatch(fields[-1]) if len(fields) == 2 else None
        if slots_match is None:
            raise HostfileError(f"{where}: malformed line {offending!r} ({_EXPECTED_LINE})")
        host, slots = fields[0], _slot_count(slots_match.group(1))
        if any(separator in host for separator in _SPEC_SEPARATORS):
            raise HostfileError(
                f"{where}: invalid host name {host!r} in {offending!r} "
                "(must not contain '@', ':' or ',')"
            )
        if slots < 1:
            raise HostfileError(f"{where}: slots must be at least 1 in {offending!r}")
        if slots > MAX_SLOTS:
            raise HostfileError(f"{where}: slots must be at most {MAX_SLOTS} in {offending!r}")
        if host in hosts:
            raise HostfileError(
                f"{where}: duplicate host {host!r} (first on line {first_line_of[host]})"
            )
        hosts[host] = slots
        first_line_of[host] = line_number
    if not hosts:
        raise HostfileError(f"{source}: no hosts")
    return hosts


def _slot_count(digits: str) -> int:
    """int() of a matched count; one too long for int() (over 4300 digits) is just too many."""
    try:
        return int(digits)
    except ValueError:
        return MAX_SLOTS + 1 if not digits.startswith("-") else 0


def read_hostfile(path: str | os.PathLike) -> dict[str, int]:
    """Reads and parses; a missing/unreadable file is a HostfileError (never fall back to localhost)."""
    source = os.fspath(path)
    try:
        # utf-8-sig: a BOM left by a Windows editor would otherwise become
        # part of the first host name.
        with open(source, encoding="utf-8-sig") as hostfile:
            text = hostfile.read()
    except FileNotFoundError:
        raise HostfileError(f"hostfile not found: {source}") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise HostfileError(f"cannot read hostfile {source}: {reason}") from None
    except UnicodeDecodeError:
        raise HostfileError(f"cannot read hostfile {source}: not valid UTF-8 text") from None
    return parse_hostfile(text, source)


def select_slots(
    hosts: dict[str, int],
    *,
    include: str | None = None,
    exclude: str | None = None,
    num_nodes: int | None = None,
    num_gpus: int | None = None,
) -> dict[str, list[int]]:
    """Ordered host -> sorted list of selected slot ids (physical GPU ids 0..slots-1)."""
    if include is not None and exclude is not None:
        raise HostfileError("--include and --exclude are mutually exclusive")
    filter_flag = "--include" if include is not None else "--exclude" if exclude is not None else None
    if filter_flag is not None:
        for count_flag, count in (("--num_nodes", num_nodes), ("--num_gpus", num_gpus)):
            if count is not None:
                raise HostfileError(f"{filter_flag} cannot be combined with {count_flag}")

    if include is not None:
        wanted = _parse_filter(include, hosts, "--include")
        return {host: sorted(wanted[host]) for host in hosts if host in wanted}

    if exclude is not None:
        unwanted = _parse_filter(exclude, hosts, "--exclude")
        remaining = {}
        for host, slots in hosts.items():
            kept = [slot for slot in range(slots) if slot not in unwanted.get(host, ())]
            if kept:
                remaining[host] = kept
        if not remaining:
            raise HostfileError(f"no slots left after --exclude {exclude!r}")
        return remaining

    chosen_hosts = list(hosts)
    if num_nodes is not None:
        if num_nodes < 1:
            raise HostfileError(f"--num_nodes must be at least 1, got {num_nodes}")
        if num_nodes > len(hosts):
            raise HostfileError(
                f"--num_nodes {num_nodes} but the hostfile has only {_plural(len(hosts), 'host')}"
            )
        chosen_hosts = chosen_hosts[:num_nodes]
    if num_gpus is not None:
        if num_gpus < 1:
            raise HostfileError(f"--num_gpus must be at least 1, got {num_gpus}")
        for host in chosen_hosts:
            if num_gpus > hosts[host]:
                raise HostfileError(
                    f"--num_gpus {num_gpus} but host {host!r} has only {_plural(hosts[host], 'slot')}"
                )
    return {host: list(range(num_gpus or hosts[host])) for host in chosen_hosts}


def _parse_filter(spec: str, hosts: dict[str, int], flag: str) -> dict[str, set[int]]:
    """Host -> named slot ids; a bare host name expands to all of its slots."""
    context = f"{flag} {spec!r}"
    if not spec:
        raise HostfileError(f"{flag}: empty spec ({_EXPECTED_ITEM})")
    if spec.startswith("@"):
        raise HostfileError(f"{context}: leading '@'")
    if spec.endswith("@"):
        raise HostfileError(f"{context}: trailing '@'")

    selected: dict[str, set[int]] = {}
    for item in spec.split("@"):
        if not item:
            raise HostfileError(f"{context}: empty entry between '@' separators")
        host, has_slot_list, slot_list = item.partition(":")
        if not host:
            raise HostfileError(f"{context}: missing host name in {item!r}")
        if ":" in slot_list:
            raise HostfileError(f"{context}: malformed entry {item!r} ({_EXPECTED_ITEM})")
        if host not in hosts:
            raise HostfileError(f"{context}: unknown host {host!r} (not in hostfile)")
        slot_count = hosts[host]
        if not has_slot_list:
            selected.setdefault(host, set()).update(range(slot_count))
            continue
        if not slot_list:
            raise HostfileError(f"{context}: empty slot list in {item!r}")
        for token in slot_list.split(","):
            selected.setdefault(host, set()).add(
                _parse_slot_id(token, host, slot_count, item, context)
            )
    return selected


def _parse_slot_id(token: str, host: str, slot_count: int, item: str, context: str) -> int:
    if not token:
        raise HostfileError(f"{context}: empty slot id in {item!r}")
    if _NEGATIVE_SLOT_ID.fullmatch(token):
        raise HostfileError(f"{context}: negative slot {token} in {item!r}")
    # Not int(): it would also accept ' 1', '+1' and '1_0'.
    if not _SLOT_ID.fullmatch(token):
        raise HostfileError(f"{context}: slot {token!r} in {item!r} is not an integer")
    slot = int(token)
    if slot >= slot_count:
        raise HostfileError(
            f"{context}: slot {slot} out of range for host {host!r} "
            f"(it has {_plural(slot_count, 'slot')}: 0..{slot_count - 1})"
        )
    return slot


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
