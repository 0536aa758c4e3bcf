"""The 413 body limit over real sockets: every client reads the answer, and no client can hold the server.

A client that writes its whole over-limit body before reading (urllib, a plain socket) used to get a
connection reset instead of the 413; these tests send bodies the way such clients do. The drain's three
bounds (total time, idle time, bytes) are also checked in-process with shortened constants, since the real
ones take up to LINGER_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest

from adamix_deploy.serving.http import middleware
from adamix_deploy.serving.http.middleware import LINGER_IDLE_SECONDS, LINGER_MAX_BYTES, LINGER_SECONDS
from adamix_deploy.testing.processes import ServerProcess

LIMIT = 65536
DEFAULT_LIMIT = 1 << 20  # adamix-serve's --max-body-bytes default
PATH = "/v1/models/sentiment/classify"
BIG = json.dumps({"inputs": ["good " * 100] * 2100}).encode()  # about 1 MiB of valid JSON


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    options = ["--max-body-bytes", str(LIMIT), "--threads", "1"]
    with ServerProcess([exports["sentiment"]], *options, log_dir=tmp_path_factory.mktemp("logs")) as srv:
        yield srv


@pytest.fixture(scope="module")
def default_server(exports, tmp_path_factory):
    """A server with the default body limit (no --max-body-bytes)."""
    with ServerProcess([exports["sentiment"]], "--threads", "1", log_dir=tmp_path_factory.mktemp("logs")) as srv:
        yield srv


def assert_413(status: int, body: bytes, limit: int = LIMIT) -> None:
    assert status == 413, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code"} and error["code"] == 413
    assert f"over the {limit} byte limit" in error["message"]


def assert_still_answers(server, within: float = 5.0) -> None:
    start = time.monotonic()
    ok = httpx.post(server.url + PATH, json={"inputs": ["the film was great"]}, timeout=within)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1
    assert time.monotonic() - start < within


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """Status, headers and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the response head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return status, headers, body


def request_head(server, extra: str) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


@pytest.mark.integration
def test_urllib_writes_the_whole_body_then_reads_the_413(server):
    request = urllib.request.Request(server.url + PATH, data=BIG, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert_413(caught.value.code, caught.value.read())
    assert caught.value.headers["connection"] == "close"
    assert_still_answers(server)


@pytest.mark.integration
def test_urllib_chunked_body_over_the_limit(server):
    # an iterable body without a Content-Length: http.client sends it chunked, all of it before reading
    pieces = [BIG[i : i + 8192] for i in range(0, len(BIG), 8192)]
    request = urllib.request.Request(
        server.url + PATH, data=iter(pieces), headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert_413(caught.value.code, caught.value.read())
    assert_still_answers(server)


@pytest.mark.integration
def test_raw_socket_sends_everything_then_reads(server):
    with connect(server) as sock:
        sock.sendall(request_head(server, f"Content-Length: {len(BIG)}\r\n") + BIG)
        status, headers, body = read_response(sock)
        assert headers["connection"] == "close"
        assert sock.recv(65536) == b""  # then a clean close (EOF), not a reset
    assert_413(status, body)
    assert_still_answers(server)


@pytest.mark.integration
def test_raw_socket_chunked_body_sends_everything_then_reads(server):
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(p), p) for p in (BIG[i : i + 4096] for i in range(0, len(BIG), 4096))
    )
    with connect(server) as sock:
        sock.sendall(request_head(server, "Transfer-Encoding: chunked\r\n") + chunked + b"0\r\n\r\n")
        status, _, body = read_response(sock)
        assert sock.recv(65536) == b""
    assert_413(status, body)
    assert_still_answers(server)


@pytest.mark.integration
def test_expect_100_continue_gets_the_413_without_a_continue(server):
    with connect(server) as sock:
        sock.sendall(request_head(server, f"Content-Length: {len(BIG)}\r\nExpect: 100-continue\r\n"))
        status, _, body = read_response(sock)
    assert_413(status, body)  # not "100 Continue": the client is not invited to send the body


@pytest.mark.integration
@pytest.mark.parametrize("megabytes", [6, 40], ids=["6MB", "40MB"])
def test_urllib_reads_the_413_of_a_large_body_under_the_default_limit(default_server, megabytes):
    """Several MB over the default limit, written whole before reading (urllib): the server drains it all
    (far below LINGER_MAX_BYTES) and the client reads the 413 instead of a connection reset; draining over
    loopback takes well under the idle bound, so it ends with the body, not with a bound."""
    data = b"x" * (megabytes * 1_000_000)
    request = urllib.request.Request(
        default_server.url + PATH, data=data, headers={"Content-Type": "application/json"}
    )
    start = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    body = caught.value.read()
    elapsed = time.monotonic() - start
    print(f"urllib {megabytes} MB body over the default limit: 413 read after {elapsed:.3f} s")
    assert_413(caught.value.code, body, DEFAULT_LIMIT)
    assert caught.value.headers["connection"] == "close"
    assert elapsed < LINGER_IDLE_SECONDS
    assert_still_answers(default_server)


@pytest.mark.integration
def test_huge_content_length_then_stall_does_not_hold_the_server(server):
    """1 GiB announced (over LINGER_MAX_BYTES), a little sent, then nothing: the 413 comes at once and the
    server closes promptly (the body cannot be drained within the bound, so it does not wait for it, not even
    the idle bound); other requests go on."""
    with connect(server) as sock:
        sock.sendall(request_head(server, f"Content-Length: {1 << 30}\r\n") + BIG[:1000])
        start = time.monotonic()
        status, _, body = read_response(sock)
        assert_413(status, body)
        assert_still_answers(server)
        sock.settimeout(LINGER_IDLE_SECONDS + 5)
        try:
            assert sock.recv(65536) == b""
        except ConnectionResetError:
            pass  # the 1000 unread bytes may make the close a reset: the answer was read already
        assert time.monotonic() - start < LINGER_IDLE_SECONDS


@pytest.mark.integration
def test_slightly_over_the_limit_then_stall_is_released_after_the_idle_time(server):
    """A drainable size announced, then the client stalls: the server waits LINGER_IDLE_SECONDS for more of
    the body, not the whole LINGER_SECONDS, then closes."""
    with connect(server) as sock:
        sock.sendall(request_head(server, f"Content-Length: {LIMIT + 10_000}\r\n") + BIG[:1000])
        start = time.monotonic()
        status, _, body = read_response(sock)
        assert_413(status, body)
        assert_still_answers(server)  # while that connection lingers
        sock.settimeout(LINGER_SECONDS + 10)
        assert sock.recv(65536) == b""
        elapsed = time.monotonic() - start
    assert LINGER_IDLE_SECONDS - 1 < elapsed < LINGER_IDLE_SECONDS + 3


@pytest.mark.integration
def test_endless_chunked_sender_is_cut_off_after_the_byte_bound(server):
    """A client streaming without end (chunked, no length) is read up to the bound, then the server closes."""
    sent, stop, error = [0], threading.Event(), []
    piece = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)

    def stream(sock):
        try:
            while not stop.is_set():
                sock.sendall(piece)
                sent[0] += 65536
        except OSError as e:
            error.append(e)

    with connect(server) as sock:
        sock.sendall(request_head(server, "Transfer-Encoding: chunked\r\n"))
        writer = threading.Thread(target=stream, args=(sock,), daemon=True)
        start = time.monotonic()
        writer.start()
        writer.join(LINGER_SECONDS + 10)
        stop.set()
        writer.join(5)
    assert error, f"the server still read after {sent[0]} bytes"
    assert time.monotonic() - start < LINGER_SECONDS + 10  # over loopback the byte bound comes much sooner
    # what the server took is bounded (the kernel buffers on both sides add a few MiB at most)
    assert sent[0] < LIMIT + LINGER_MAX_BYTES + (32 << 20)
    assert_still_answers(server)


# -- the drain's bounds, in-process with shortened constants -------------------------------------------------
def drain_with(monkeypatch, receive, total: float = 0.6, idle: float = 0.2, max_bytes: int = 1 << 20) -> float:
    """Seconds `_drain` spends on ``receive`` with these bounds."""
    monkeypatch.setattr(middleware, "LINGER_SECONDS", total)
    monkeypatch.setattr(middleware, "LINGER_IDLE_SECONDS", idle)
    monkeypatch.setattr(middleware, "LINGER_MAX_BYTES", max_bytes)
    start = time.monotonic()
    asyncio.run(middleware._drain(receive))
    return time.monotonic() - start


def test_drain_reads_a_refused_body_to_its_end(monkeypatch):
    messages = [{"type": "http.request", "body": b"x" * 1000, "more_body": True}] * 5
    messages.append({"type": "http.request", "body": b"x", "more_body": False})
    read = []

    async def receive():
        read.append(1)
        return messages[len(read) - 1]

    assert drain_with(monkeypatch, receive) < 0.2
    assert len(read) == len(messages)


def test_drain_stops_after_the_idle_time_without_bytes(monkeypatch):
    async def receive():
        await asyncio.sleep(3600)  # a stalled client

    assert 0.2 <= drain_with(monkeypatch, receive, total=5, idle=0.2) < 1


def test_drain_stops_after_the_total_time_when_the_client_never_pauses(monkeypatch):
    async def receive():  # a trickle: a byte every 50 ms, never idle for the idle bound
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}

    assert 0.6 <= drain_with(monkeypatch, receive, total=0.6, idle=0.2) < 1.2


def test_drain_stops_after_the_byte_bound_when_the_client_is_fast(monkeypatch):
    read = [0]

    async def receive():
        read[0] += 65536
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    assert drain_with(monkeypatch, receive, total=5, idle=1, max_bytes=1 << 20) < 1
    assert (1 << 20) <= read[0] <= (1 << 20) + 65536
