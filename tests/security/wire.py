"""How hostile requests go on the wire: through httpx, or through a raw socket that keeps
sending a large body and notes whether the answer came before the body was all sent."""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from tests.security.payloads import Sent

SEND_CHUNK = 64 << 10


def send(http: httpx.Client, sent: Sent) -> httpx.Response:
    headers = dict(sent.headers)
    if sent.key is not None:
        headers["authorization"] = f"Bearer {sent.key}"
    if sent.files is not None:
        return http.request(
            sent.method, sent.path, headers=headers, files=sent.files, data=sent.data
        )
    return http.request(sent.method, sent.path, headers=headers, content=sent.content or None)


@dataclass(frozen=True)
class RawAnswer:
    """What came back to a raw request: the status line's code, the whole answer, how many
    body bytes had been sent when it arrived, and how long it took."""

    status: int
    text: str
    body_bytes_sent: int
    seconds: float


def send_streaming_body(
    url: str, head: dict[str, str], body_size: int, path: str, timeout_s: float = 30.0
) -> RawAnswer:
    """POST `body_size` bytes (`x`, in 64 KiB chunks) announced in Content-Length, reading the
    answer as soon as the server sends one; stops sending once it has."""
    parts = urlsplit(url)
    lines = [f"POST {path} HTTP/1.1", f"host: {parts.netloc}", f"content-length: {body_size}"]
    lines += [f"{name}: {value}" for name, value in head.items()]
    chunk = b"x" * SEND_CHUNK
    sent = 0
    answer = b""
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while time.monotonic() - started < timeout_s:
            readable, writable, _ = select.select([sock], [sock] if sent < body_size else [], [], 1)
            if readable:
                answer = _read_answer(sock, started + timeout_s)
                break
            if writable:
                try:
                    sent += sock.send(chunk[: body_size - sent])
                except (BrokenPipeError, ConnectionResetError):
                    answer = _read_answer(sock, started + timeout_s)
                    break
    seconds = time.monotonic() - started
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return RawAnswer(status, answer.decode(errors="replace"), sent, seconds)


def _read_answer(sock: socket.socket, deadline: float) -> bytes:
    """The status line, headers and the Content-Length body (or whatever arrives by then)."""
    data = b""
    while time.monotonic() < deadline:
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not part:
            break
        data += part
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = _content_length(head)
            if length is not None and len(body) >= length:
                break
    return data


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None
