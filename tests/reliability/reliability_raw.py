"""A raw-socket HTTP/1.1 client for what httpx cannot do: keep sending a body while reading the answer.

httpx writes the whole body before it reads, so an endless chunked upload never sees the server's early
413, and a server that reads forever cannot be told from one that stopped reading.
"""

from __future__ import annotations

import re
import select
import socket
import time
from dataclasses import dataclass

CHUNK = b"x" * 65536
FRAME = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)


@dataclass(frozen=True)
class RawExchange:
    """The response (if one came), bytes sent before it and in all, and how the connection ended."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    sent_before_response: int
    sent_total: int
    ending: str  # "closed" (reset, EOF or broken pipe), "open" (still accepting bytes), "timeout"
    seconds_to_response: float | None


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, body) once a whole response with a Content-Length has arrived."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "-1"))
    if length < 0 or len(body) < length:
        return None
    return status, headers, body[:length]


def upload(port: int, path: str, headers: dict[str, str], *, chunked: bool, max_bytes: int,
           keep_sending_after_response: bool, timeout_s: float = 30.0, preamble: bytes = b"") -> RawExchange:
    """POST to 127.0.0.1:port, sending body bytes until max_bytes (or the server closes).

    chunked: Transfer-Encoding chunked (no Content-Length); otherwise the caller declares a Content-Length
    in `headers` and raw bytes follow. `preamble` goes first (a multipart header, say). With
    keep_sending_after_response, sending goes on after the answer, to see whether the server closes the
    connection or keeps reading.
    """
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    frame = FRAME if chunked else CHUNK
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    received, sent, sent_before, answered_at = b"", 0, 0, None
    response: tuple[int, dict[str, str], bytes] | None = None
    can_write, ending = True, "timeout"
    try:
        sock.sendall(head.encode("latin-1"))
        if preamble:
            sock.sendall(b"%x\r\n%s\r\n" % (len(preamble), preamble) if chunked else preamble)
        sock.setblocking(False)
        while time.monotonic() - started < timeout_s:
            if response is not None and (not keep_sending_after_response or sent >= max_bytes):
                ending = "open" if keep_sending_after_response else "answered"
                break
            writing = can_write and sent < max_bytes
            readable, writable, _ = select.select([sock], [sock] if writing else [], [], 0.5)
            if readable:  # read first: a reset discards what was received but not yet read
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                if not data:
                    ending = "closed"
                    break
                received += data
                if response is None and (response := _parse(received)) is not None:
                    sent_before, answered_at = sent, time.monotonic() - started
            if writable:
                try:
                    sent += sock.send(frame)
                except (BrokenPipeError, ConnectionResetError):
                    can_write = False  # keep reading: the answer may still be on its way
                    if response is not None:
                        ending = "closed"
                        break
    finally:
        sock.close()
    status, resp_headers, body = response if response is not None else (None, {}, b"")
    return RawExchange(status, resp_headers, body, sent_before, sent, ending, answered_at)


def declared_length_only(port: int, path: str, length: int, timeout_s: float = 10.0) -> RawExchange:
    """Headers declaring `length` body bytes, and no body at all: the answer must not wait for it."""
    headers = {"Content-Length": str(length), "Content-Type": "application/json"}
    return upload(port, path, headers, chunked=False, max_bytes=0, keep_sending_after_response=False,
                  timeout_s=timeout_s)


def status_line_of(exchange: RawExchange) -> str:
    """A short description for assertion messages."""
    body = re.sub(rb"\s+", b" ", exchange.body[:200]).decode("utf-8", "replace")
    return (f"status={exchange.status} ending={exchange.ending} sent_before={exchange.sent_before_response} "
            f"sent_total={exchange.sent_total} body={body!r}")
