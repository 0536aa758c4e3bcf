"""The 413 body limit over real sockets: every client reads the answer, and no client can hold the server.

A client that writes its whole over-limit body before reading (urllib, a plain socket) used to get a
connection reset instead of the 413; these tests send bodies the way such clients do.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest
from server_process import ServerProcess

from adamix_deploy.serving.middleware import LINGER_MAX_BYTES, LINGER_SECONDS

LIMIT = 65536
PATH = "/v1/models/sentiment/classify"
BIG = json.dumps({"inputs": ["good " * 100] * 2100}).encode()  # about 1 MiB of valid JSON


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    options = ["--max-body-bytes", str(LIMIT), "--threads", "1"]
    with ServerProcess([exports["sentiment"]], *options, log_dir=tmp_path_factory.mktemp("logs")) as srv:
        yield srv


def assert_413(status: int, body: bytes) -> None:
    assert status == 413, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code"} and error["code"] == 413
    assert str(LIMIT) in error["message"]


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


def test_urllib_writes_the_whole_body_then_reads_the_413(server):
    request = urllib.request.Request(server.url + PATH, data=BIG, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert_413(caught.value.code, caught.value.read())
    assert caught.value.headers["connection"] == "close"
    assert_still_answers(server)


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


def test_raw_socket_sends_everything_then_reads(server):
    with connect(server) as sock:
        sock.sendall(request_head(server, f"Content-Length: {len(BIG)}\r\n") + BIG)
        status, headers, body = read_response(sock)
        assert headers["connection"] == "close"
        assert sock.recv(65536) == b""  # then a clean close (EOF), not a reset
    assert_413(status, body)
    assert_still_answers(server)


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


def test_expect_100_continue_gets_the_413_without_a_continue(server):
    with connect(server) as sock:
        sock.sendall(request_head(server, f"Content-Length: {len(BIG)}\r\nExpect: 100-continue\r\n"))
        status, _, body = read_response(sock)
    assert_413(status, body)  # not "100 Continue": the client is not invited to send the body


def test_huge_content_length_then_stall_does_not_hold_the_server(server):
    """1 GiB announced, a little sent, then nothing: the 413 comes at once and the server closes promptly
    (the body cannot be drained within the bound, so it does not wait for it); other requests go on."""
    with connect(server) as sock:
        sock.sendall(request_head(server, f"Content-Length: {1 << 30}\r\n") + BIG[:1000])
        start = time.monotonic()
        status, _, body = read_response(sock)
        assert_413(status, body)
        assert_still_answers(server)
        sock.settimeout(LINGER_SECONDS + 5)
        try:
            assert sock.recv(65536) == b""
        except ConnectionResetError:
            pass  # the 1000 unread bytes may make the close a reset: the answer was read already
        assert time.monotonic() - start < LINGER_SECONDS + 2


def test_slightly_over_the_limit_then_stall_is_released_after_the_linger_time(server):
    """A drainable size announced, then the client stalls: the server waits at most LINGER_SECONDS."""
    with connect(server) as sock:
        sock.sendall(request_head(server, f"Content-Length: {LIMIT + 10_000}\r\n") + BIG[:1000])
        start = time.monotonic()
        status, _, body = read_response(sock)
        assert_413(status, body)
        assert_still_answers(server)  # while that connection lingers
        sock.settimeout(LINGER_SECONDS + 10)
        assert sock.recv(65536) == b""
        assert time.monotonic() - start < LINGER_SECONDS + 3


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
    assert time.monotonic() - start < LINGER_SECONDS + 10
    # what the server took is bounded (the kernel buffers on both sides add a few MiB at most)
    assert sent[0] < LIMIT + LINGER_MAX_BYTES + (32 << 20)
    assert_still_answers(server)
