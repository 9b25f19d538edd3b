"""Bounded HTTP(S) downloads: only http and https, a wall-clock deadline per attempt whatever
the sender's rate, a size cap, a bounded number of redirects (each checked for its scheme) and
bounded retries with back-off. Every outcome is returned, never raised.

The deadline: each connection an attempt opens (redirects included) is registered with a timer
that shuts its socket down when the attempt's time is up, so a server that drips its headers or
body one byte at a time, or sends headers and then stalls, cannot hold a read past it. A server
that never answers the TCP handshake is bounded by the connect timeout (the remaining time).
One URL therefore takes at most (retries + 1) x timeout plus the back-off sleeps.
"""
from __future__ import annotations

import csv
import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

USER_AGENT = "gfm-toolkit-bg20k/0.1 (+https://example.invalid/gfm-toolkit)"
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class Fetched:
    url: str
    ok: bool
    status: int | None = None
    error: str | None = None
    bytes: int = 0
    seconds: float = 0.0
    attempts: int = 0
    data: bytes | None = None

    def record(self) -> dict:
        return {"url": self.url, "ok": self.ok, "status": self.status, "error": self.error, "bytes": self.bytes,
                "seconds": round(self.seconds, 3), "attempts": self.attempts}


class _FetchError(Exception):
    def __init__(self, msg: str, status: int | None = None, retry: bool = False):
        super().__init__(msg)
        self.status, self.retry = status, retry


def _redirect_handler(max_redirects: int) -> urllib.request.HTTPRedirectHandler:
    class Handler(urllib.request.HTTPRedirectHandler):
        max_redirections = max_redirects
        max_repeats = 2

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if urlsplit(newurl).scheme not in ("http", "https"):
                raise _FetchError(f"redirect to a non-http(s) URL: {newurl[:200]}", code)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return Handler()


class _Deadline:
    """Shuts down every socket registered with it once ``seconds`` have passed."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(self.at - time.monotonic(), 0.001)

    def register(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            for s in self._socks:
                _shutdown(s)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _deadline_handlers(deadline: _Deadline) -> list[urllib.request.BaseHandler]:
    """HTTP and HTTPS handlers whose connections register their sockets with ``deadline`` and
    connect within the time that is left."""

    class OnDeadline:  # before HTTP(S)Connection in the bases: its connect wraps theirs
        def connect(self) -> None:
            self.timeout = deadline.remaining()
            super().connect()
            deadline.register(self.sock)

    class Conn(OnDeadline, http.client.HTTPConnection):
        pass

    class SecureConn(OnDeadline, http.client.HTTPSConnection):
        pass

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Conn, req)

    class Secure(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(SecureConn, req, context=self._context)

    return [Plain(), Secure()]


ATTRIBUTION_FIELDS = ("license", "author", "source")
_FIELD_ALIASES = {"license": ("license", "licence"), "author": ("author", "creator", "artist"),
                  "source": ("source", "page", "source_url", "page_url")}


def _attribution(row: dict) -> dict[str, str]:
    """The licence, author and source page of one list row (keys matched case-insensitively)."""
    low = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    out = {}
    for field, names in _FIELD_ALIASES.items():
        for n in names:
            v = low.get(n)
            if v is not None and str(v).strip():
                out[field] = str(v).strip()
                break
    return out


def read_url_records(path: str | Path) -> list[tuple[str, dict[str, str]]]:
    """(url, attribution) from a text file (one URL per line), a CSV with a ``url`` column or
    JSON lines with a ``url`` key; CSV and JSON lines may also carry ``license``, ``author``
    and ``source`` (the page the image came from), which follow the image to the outputs."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if not lines:
        return []
    first = lines[0].strip()
    if first.startswith("{"):
        out = []
        for l in lines:
            try:
                rec = json.loads(l)
                out.append((str(rec["url"]).strip(), _attribution(rec)))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                out.append((l.strip(), {}))  # kept so that it is reported as an invalid URL
        return out
    header = [h.strip().lower() for h in next(csv.reader([first]))]
    if "url" in header and len(header) > 1 or first.lower() == "url":
        rows = csv.DictReader(io.StringIO("\n".join(lines)))
        col = next(h for h in rows.fieldnames or [] if h.strip().lower() == "url")
        return [(str(r[col]).strip(), _attribution(r)) for r in rows if r.get(col)]
    return [(l.strip(), {}) for l in lines]


def read_url_list(path: str | Path) -> list[str]:
    """The URLs of a list (see `read_url_records`)."""
    return [u for u, _ in read_url_records(path)]


def check_url(url: str) -> str | None:
    """None when the URL may be fetched, else the reason."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"only http and https URLs are fetched, not {parts.scheme or 'a relative path'!r}"
    if not parts.netloc:
        return "URL has no host"
    return None


def _attempt(max_redirects: int, url: str, timeout: float, max_bytes: int) -> tuple[int, bytes]:
    deadline = _Deadline(timeout)
    try:
        return _attempt_until(deadline, max_redirects, url, timeout, max_bytes)
    except _FetchError as exc:
        if deadline.expired:
            raise _FetchError(f"download took longer than {timeout:g} s (server too slow)", exc.status, retry=True) from None
        raise
    finally:
        deadline.cancel()


def _attempt_until(deadline: _Deadline, max_redirects: int, url: str, timeout: float,
                   max_bytes: int) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(_redirect_handler(max_redirects), *_deadline_handlers(deadline))
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    try:
        resp = opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code in (301, 302, 303, 307, 308):
            if "not allowed" in str(exc.reason):
                raise _FetchError(f"redirect to a non-http(s) URL: {str(exc.reason)[:200]}", exc.code) from None
            raise _FetchError(f"too many redirects or a redirect loop (HTTP {exc.code})", exc.code) from None
        raise _FetchError(f"HTTP {exc.code} {exc.reason}", exc.code, exc.code in RETRY_STATUS) from None
    except _FetchError:
        raise
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, _FetchError):
            raise reason from None
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise _FetchError(f"no response within {timeout:g} s", retry=True) from None
        raise _FetchError(f"cannot connect: {reason}", retry=True) from None
    except (socket.timeout, TimeoutError):
        raise _FetchError(f"no response within {timeout:g} s", retry=True) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _FetchError(f"{exc.__class__.__name__}: {exc}", retry=True) from None
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise _FetchError(f"body of {int(length)} bytes is over the limit of {max_bytes}", status)
        chunks, total = [], 0
        while True:
            try:
                chunk = resp.read1(65536)  # whatever has arrived: the deadline is checked between reads
            except (socket.timeout, TimeoutError):
                raise _FetchError(f"server stopped sending for {timeout:g} s", status, retry=True) from None
            except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, IncompleteRead, shut down
                raise _FetchError(f"connection broke: {exc.__class__.__name__}: {exc}", status, retry=True) from None
            if deadline.expired:
                raise _FetchError(f"download took longer than {timeout:g} s (server too slow)", status, retry=True)
            if not chunk:
                if resp.length:  # the sender closed before the length it announced
                    raise _FetchError(f"connection closed after {total} of {total + resp.length} bytes", status, retry=True)
                break
            total += len(chunk)
            if total > max_bytes:
                raise _FetchError(f"body is over the limit of {max_bytes} bytes", status)
            chunks.append(chunk)
        return status, b"".join(chunks)


def fetch(url: str, *, timeout: float = 30.0, max_bytes: int = 50_000_000, max_redirects: int = 5,
          retries: int = 2, backoff: float = 0.5, sleep=time.sleep) -> Fetched:
    """Download ``url``; retries connection errors, timeouts, 429 and 5xx with back-off."""
    t0 = time.monotonic()
    bad = check_url(url)
    if bad:
        return Fetched(url, False, error=bad)
    result = Fetched(url, False)
    for attempt in range(retries + 1):
        result.attempts = attempt + 1
        try:
            status, data = _attempt(max_redirects, url, timeout, max_bytes)
            result.ok, result.status, result.data, result.bytes, result.error = True, status, data, len(data), None
            break
        except _FetchError as exc:
            result.status, result.error = exc.status, str(exc)
            if not exc.retry or attempt == retries:
                break
            sleep(backoff * (2**attempt))
    result.seconds = time.monotonic() - t0
    return result
