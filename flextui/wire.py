"""The supervisor's socket: frames, peer credentials, and addresses in deep directories.

A frame is a 4-byte big-endian length, then the body: one kind byte and the payload.
Consoles send JSON (b"J") and nothing else, so the supervisor never unpickles what a
client wrote; the supervisor sends pickle (b"P", see mirror.py) or JSON. Each side checks
the other's uid with SO_PEERCRED before it reads a frame: only the user who started the
job (not even root) talks to its supervisor. There is no TCP listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import socket
import struct
from collections.abc import Iterator

HEADER = struct.Struct("!I")
JSON, PICKLE = b"J", b"P"
MAX_REQUEST = 1 << 20  # a console's request: a few hundred bytes
MAX_MESSAGE = 1 << 30  # a supervisor's message: a snapshot's combined ring is ~5 MB
SOCKET_NAME = "supervisor.sock"
#: sun_path holds 108 bytes; a longer path is reached through /proc/self/fd/N/NAME.
MAX_SOCKET_PATH = 100


class ProtocolError(Exception):
    """The other side sent something that is not a frame of this protocol."""


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(len(payload) + 1) + kind + payload


def json_frame(message: dict) -> bytes:
    return frame(JSON, json.dumps(message).encode())


def pickle_frame(message: object) -> bytes:
    return frame(PICKLE, pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


async def read_frame(reader: asyncio.StreamReader, limit: int, allow_pickle: bool) -> object | None:
    """The next message, or None at the end of the stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("stream ended inside a frame header") from None
        return None
    (size,) = HEADER.unpack(header)
    if not 1 <= size <= limit:
        raise ProtocolError(f"frame of {size} bytes (at most {limit})")
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise ProtocolError("stream ended inside a frame") from None
    return decode(body, allow_pickle)


def decode(body: bytes, allow_pickle: bool) -> object:
    kind, payload = body[:1], body[1:]
    if kind == JSON:
        try:
            return json.loads(payload)
        except ValueError as exc:
            raise ProtocolError(f"bad JSON: {exc}") from None
    if kind == PICKLE and allow_pickle:
        return pickle.loads(payload)
    raise ProtocolError(f"unexpected frame kind {kind!r}")


def recv_frame_blocking(sock: socket.socket, limit: int = MAX_MESSAGE) -> object | None:
    """read_frame for a blocking socket (the command waiting for its supervisor's report)."""
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if not 1 <= size <= limit:
        raise ProtocolError(f"frame of {size} bytes (at most {limit})")
    body = _recv_exactly(sock, size)
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return decode(body, allow_pickle=False)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            if data:
                raise ProtocolError("stream ended inside a frame")
            return None
        data += chunk
    return data


def peer_uid(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def same_user(sock: socket.socket) -> bool:
    return peer_uid(sock)[1] == os.geteuid()


@contextlib.contextmanager
def socket_address(path: str) -> Iterator[str]:
    """An address for `path` that fits sun_path: the path itself, or, in a deep
    directory, the same file reached through an open descriptor of its directory."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield path
        return
    directory, name = os.path.split(os.path.abspath(path))
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def listen(path: str) -> socket.socket:
    """A listening socket at `path`, 0600 (its directory is 0700 as well)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old_umask = os.umask(0o177)
        try:
            with socket_address(path) as address:
                sock.bind(address)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(path: str) -> socket.socket:
    """A connected, non-blocking socket to the supervisor at `path` (OSError if none)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_address(path) as address:
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
