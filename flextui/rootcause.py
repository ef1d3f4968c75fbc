"""Why a rank failed, from the text it wrote: its last error line, and whether that error
was a peer's (a connection to another rank closed under it). Pure text, no I/O, no model.

The job model (model.py) calls these when a rank ends, to label collateral failures and
find the root cause of a cascade; diagnosis.py re-exports ERROR_RE and TRACEBACK.

- error_line(lines, killed): the exception line at the end of the rank's last traceback
  (where Python prints the exception itself, after the frames), else the last line that
  reads like an error near the end of its output; None when neither is there.
- is_peer_error(line): the rank died of losing a peer, not of its own fault: gloo's
  "Connection closed by peer", NCCL's "remote process exited", a c10d store connection
  that broke, a SIGTERM that torch's agent turned into an exception.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: A line worth jumping to: a traceback header or an error/exception.
ERROR_RE = re.compile(
    r"Traceback \(most recent call last\)|\b[A-Za-z_]*(?:Error|Exception)\b(?!\w)"
    r"|\bERROR\b|\bFATAL\b|\bCRITICAL\b|\berror:|Segmentation fault|core dumped"
)
TRACEBACK = "Traceback (most recent call last)"

#: Errors a rank gets when a peer rank (or its node) went away first.
PEER_ERROR_RE = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe"  # gloo, c10d TCPStore
    r"|remote process exit|ncclRemoteError|NCCL communicator was aborted"  # NCCL
    r"|Connection was likely closed|Did the remote server shutdown or crash"  # c10d store (torch >= 2.2)
    r"|failed to recv, got 0 bytes|client socket has failed to connect"
    r"|got signal: (?:15|SIGTERM)\b",  # torch's SignalException (a SIGTERM it caught)
    re.IGNORECASE,
)

#: What a rank prints when it ends because it was signalled (a SIGTERM handler's exit).
SIGNALLED_RE = re.compile(r"KeyboardInterrupt|SystemExit|SignalException|Terminated|SIGTERM|SIGINT|signal:? ?15\b",
                          re.IGNORECASE)

#: How far from the end of a rank's output its traceback or error line may be.
ERROR_WINDOW = 400
#: Where, without a traceback, an error-looking line still counts as the rank's last error.
FALLBACK_WINDOW = 20
#: For a rank killed by a signal: how near its end its error must be.
KILLED_WINDOW = 3
#: Characters of an error line kept (gloo's run to a paragraph).
MAX_ERROR_LINE = 1000


def is_error_line(text: str) -> bool:
    return ERROR_RE.search(text) is not None


def is_peer_error(line: str | None) -> bool:
    return bool(line) and PEER_ERROR_RE.search(line) is not None


def is_signalled_error(line: str | None) -> bool:
    return bool(line) and SIGNALLED_RE.search(line) is not None


def error_line(lines: Sequence[str], killed: bool = False) -> str | None:
    """The rank's last error line (see the module docs). `killed`: it died of a signal,
    so only what it printed at its very end counts (a traceback it was printing when the
    signal came, a crash report), not an error it survived long before."""
    end = len(lines)
    start = max(0, end - ERROR_WINDOW)
    for i in range(end - 1, start - 1, -1):
        if TRACEBACK in lines[i]:
            prefix = lines[i][: lines[i].index(TRACEBACK)]  # torch's "[rank3]: ", a logger's
            found = _exception_after(lines, i + 1, prefix)
            if found is not None and (not killed or found[0] >= end - KILLED_WINDOW):
                return found[1]
            break
    for i in range(end - 1, max(0, end - (KILLED_WINDOW if killed else FALLBACK_WINDOW)) - 1, -1):
        text = lines[i].strip()
        if text and ERROR_RE.search(text) and TRACEBACK not in text:
            return _clean(text)
    return None


#: A C++ source location inside a message: gloo's "[/pytorch/third_party/gloo/.../pair.cc:553] ".
_SOURCE_LOCATION = re.compile(r"\[[^\]\s]*\.(?:cc|cpp|cxx|c|h|hpp|cu):\d+\] ?")


def _clean(line: str) -> str:
    return _SOURCE_LOCATION.sub("", line.strip())[:MAX_ERROR_LINE]


def _exception_after(lines: Sequence[str], start: int, prefix: str) -> tuple[int, str] | None:
    """The first line after a traceback's frames: the exception, `RuntimeError: boom`.
    Frames and their source lines are indented; a chained exception's "During handling of
    the above exception" comes after the exception, so the first unindented line is it.
    `prefix`: what stood before the traceback's header on its line (torch prints every
    line of a rank's traceback as "[rank3]: ..."), taken off each line first."""
    for i in range(start, len(lines)):
        line = lines[i]
        if prefix and line.startswith(prefix):
            line = line[len(prefix):]
        if not line.strip() or line[:1] in (" ", "\t"):
            continue
        return i, _clean(line)
    return None
