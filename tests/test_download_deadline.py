"""Downloads end on time whatever the sender does: loopback servers that drip bytes, send
headers and stall, or never answer the TCP handshake. The bounds are many times what a
correct client needs (about the timeout) and many times less than what the drip would last."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from bg20k.download import FetchPolicy, fetch

from .conftest import run_cli

LOCAL = FetchPolicy(allow_private=True)  # the test servers are on 127.0.0.1

DRIP_SECONDS = 120  # how long each dripping server would keep a naive client busy


class RawServer:
    """A loopback TCP server that runs ``behaviour(conn)`` for every connection."""

    def __init__(self, behaviour):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.behaviour = behaviour
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)  # the request
            self.behaviour(conn, self.stop)
        except OSError:
            pass
        finally:
            conn.close()

    def url(self, path: str = "/x.jpg") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def drip_body(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n")
    end = time.monotonic() + DRIP_SECONDS
    while time.monotonic() < end and not stop.is_set():
        conn.sendall(b"\xff")
        time.sleep(0.3)


def drip_headers(conn: socket.socket, stop: threading.Event) -> None:
    end = time.monotonic() + DRIP_SECONDS
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while time.monotonic() < end and not stop.is_set():
        conn.sendall(b"X-Slow: a\r\n")  # one header line after another, never the blank line
        time.sleep(0.3)


def stall_after_headers(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\nabc")
    stop.wait(DRIP_SECONDS)


@pytest.fixture
def servers():
    made = []

    def make(behaviour) -> RawServer:
        s = RawServer(behaviour)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.mark.parametrize("behaviour,words", [(drip_body, "longer than"), (drip_headers, "longer than"),
                                             (stall_after_headers, "")])
def test_one_attempt_ends_at_its_deadline(servers, behaviour, words):
    server = servers(behaviour)
    t = time.monotonic()
    r = fetch(server.url(), timeout=1.0, retries=0, policy=LOCAL)
    took = time.monotonic() - t
    assert not r.ok and r.attempts == 1
    assert words in r.error
    assert took < 15, took  # about 1 s; the server would go on for DRIP_SECONDS


def test_retries_are_bounded_by_retries_plus_one_timeouts(servers):
    server = servers(drip_body)
    t = time.monotonic()
    slept = []
    r = fetch(server.url(), timeout=1.0, retries=2, backoff=0.1, sleep=slept.append, policy=LOCAL)
    took = time.monotonic() - t
    assert not r.ok and r.attempts == 3 and len(slept) == 2
    assert took < 30, took  # about 3 s


def _unanswering_port() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full and never drained: the kernel drops
    further handshakes, so a connect to it waits for an answer that never comes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except (BlockingIOError, OSError):
            pass
        fillers.append(c)
    time.sleep(0.2)
    return listener, fillers


def test_a_server_that_never_answers_the_handshake_is_bounded():
    listener, fillers = _unanswering_port()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.jpg"
        t = time.monotonic()
        r = fetch(url, timeout=1.0, retries=1, backoff=0.1, policy=LOCAL)
        took = time.monotonic() - t
        assert not r.ok and r.attempts == 2
        assert "1 s" in r.error or "timed out" in r.error, r.error
        assert took < 20, took  # about 2 s
    finally:
        for c in fillers:
            c.close()
        listener.close()


@pytest.mark.slow
def test_bg20k_build_never_waits_on_slow_servers(tmp_path, servers):
    """The finding: `--timeout 5 --retries 0` kept downloading for over two minutes."""
    urls = [servers(drip_body).url("/a.jpg"), servers(drip_headers).url("/b.jpg"),
            servers(stall_after_headers).url("/c.jpg")]
    lst = tmp_path / "urls.txt"
    lst.write_text("\n".join(urls) + "\n")
    t = time.monotonic()
    proc = run_cli("bg20k", "build", "--urls", str(lst), "--allow-private-networks",
                   "--out", str(tmp_path / "bg"), "--no-screen", "--timeout", "2",
                   "--retries", "0", "--workers", "1", "--quiet", timeout=DRIP_SECONDS)
    took = time.monotonic() - t
    assert proc.returncode == 1, proc.stderr  # nothing could be kept
    assert took < 60, took  # three URLs of 2 s each, plus start-up; the drips would last 120 s
