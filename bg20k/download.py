"""Bounded HTTP(S) downloads: only http and https, a total time limit per attempt, a size
cap, a bounded number of redirects (each checked for its scheme) and bounded retries with
back-off. Every outcome is returned, never raised."""
from __future__ import annotations

import csv
import io
import json
import socket
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


def read_url_list(path: str | Path) -> list[str]:
    """URLs from a text file (one per line), a CSV with a ``url`` column, or JSON lines."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    if not lines:
        return []
    first = lines[0].strip()
    if first.startswith("{"):
        out = []
        for l in lines:
            try:
                out.append(str(json.loads(l)["url"]).strip())
            except (json.JSONDecodeError, KeyError, TypeError):
                out.append(l.strip())  # kept so that it is reported as an invalid URL
        return out
    header = [h.strip().lower() for h in next(csv.reader([first]))]
    if "url" in header and len(header) > 1 or first.lower() == "url":
        rows = csv.DictReader(io.StringIO("\n".join(lines)))
        col = next(h for h in rows.fieldnames or [] if h.strip().lower() == "url")
        return [str(r[col]).strip() for r in rows if r.get(col)]
    return [l.strip() for l in lines]


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


def _attempt(opener, url: str, timeout: float, max_bytes: int) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
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
        raise _FetchError(f"cannot connect: {reason}", retry=True) from None
    except (socket.timeout, TimeoutError):
        raise _FetchError(f"no response within {timeout:g} s", retry=True) from None
    except (OSError, ValueError) as exc:
        raise _FetchError(f"{exc.__class__.__name__}: {exc}", retry=True) from None
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise _FetchError(f"body of {int(length)} bytes is over the limit of {max_bytes}", status)
        chunks, total = [], 0
        while True:
            if time.monotonic() > deadline:
                raise _FetchError(f"download took longer than {timeout:g} s (server too slow)", status, retry=True)
            try:
                chunk = resp.read(65536)
            except (socket.timeout, TimeoutError):
                raise _FetchError(f"server stopped sending for {timeout:g} s", status, retry=True) from None
            except (OSError, ValueError) as exc:  # connection reset, IncompleteRead
                raise _FetchError(f"connection broke: {exc.__class__.__name__}: {exc}", status, retry=True) from None
            if not chunk:
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
    opener = urllib.request.build_opener(_redirect_handler(max_redirects))
    result = Fetched(url, False)
    for attempt in range(retries + 1):
        result.attempts = attempt + 1
        try:
            status, data = _attempt(opener, url, timeout, max_bytes)
            result.ok, result.status, result.data, result.bytes, result.error = True, status, data, len(data), None
            break
        except _FetchError as exc:
            result.status, result.error = exc.status, str(exc)
            if not exc.retry or attempt == retries:
                break
            sleep(backoff * (2**attempt))
    result.seconds = time.monotonic() - t0
    return result
