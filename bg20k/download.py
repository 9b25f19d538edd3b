"""Bounded HTTP(S) downloads: only http and https, a wall-clock deadline per attempt whatever
the sender's rate, a size cap, a bounded number of redirects (each checked for its scheme) and
bounded retries with back-off. Every outcome is returned, never raised.

The deadline: each connection an attempt opens (redirects included) is registered with a timer
that shuts its socket down when the attempt's time is up, so a server that drips its headers or
body one byte at a time, or sends headers and then stalls, cannot hold a read past it. A server
that never answers the TCP handshake is bounded by the connect timeout (the remaining time).
One URL therefore takes at most (retries + 1) x timeout plus the back-off sleeps.

Crawling responsibly (`FetchPolicy`): every connection, redirect hops included, goes to an
address checked to be globally routable (the address connected to is checked again, so DNS
rebinding cannot slip past) unless private networks are allowed; a response whose
``X-Robots-Tag`` carries an opt-out directive is dropped before its body is read; requests
carry an identifiable user agent; at most ``max_per_host`` connections reach one host at a
time (`HostSlots`); a 429 or 503 ``Retry-After`` is honoured while it fits in the URL's time.
"""
from __future__ import annotations

import builtins
import csv
import email.utils
import http.client
import io
import ipaddress
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from urllib.parse import urlsplit

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
RETRY_AFTER_STATUS = {429, 503}
AGENT_TOKEN = "gfm-toolkit-bg20k"
# img2dataset's default set (its README, "Opt-out directives")
DEFAULT_DISALLOWED_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gfm-toolkit")
    except Exception:  # not installed (run from a checkout): still a recognisable token
        return "0+unknown"


def user_agent(contact: str | None = None) -> str:
    """``gfm-toolkit-bg20k/<version>``, with ``(+contact)`` when the operator gives one, so that a
    host can recognise this crawler, opt out of it, and reach whoever runs it."""
    ua = f"{AGENT_TOKEN}/{_version()}"
    return f"{ua} (+{contact})" if contact else ua


USER_AGENT = user_agent()


def default_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(str(ai[4][0]) for ai in infos))


def default_connect(ip: str, port: int, timeout: float) -> tuple[socket.socket, str]:
    """A TCP connection to ``ip`` and the peer address the socket reports."""
    sock = socket.create_connection((ip, port), timeout)
    try:
        return sock, str(sock.getpeername()[0])
    except OSError:
        sock.close()
        raise


@dataclass(frozen=True)
class FetchPolicy:
    """What a crawl may fetch and how it presents itself. ``resolve`` and ``connect`` are the
    network seen by the address checks (tests give a stub; no real network)."""

    allow_private: bool = False
    disallowed_directives: tuple[str, ...] = DEFAULT_DISALLOWED_DIRECTIVES
    user_agent: str = USER_AGENT
    resolve: Callable[[str, int], list[str]] = default_resolve
    connect: Callable[[str, int, float], tuple[socket.socket, str]] = default_connect


DEFAULT_POLICY = FetchPolicy()


def address_problem(ip: str) -> str | None:
    """None for a globally routable address, else what it is ("a loopback address", ...).
    IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are judged by the IPv4 address they carry."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for kind, test in (("an unspecified", addr.is_unspecified), ("a loopback", addr.is_loopback),
                       ("a link-local", addr.is_link_local), ("a multicast", addr.is_multicast)):
        if test:
            return f"{kind} address"
    if addr.version == 6 and addr in ipaddress.ip_network("fc00::/7"):
        return "a unique-local address"
    if addr.is_private:
        return "a private address"
    if not addr.is_global:
        return "a reserved (not globally routable) address"
    return None


def _private_refusal(host: str, ip: str, kind: str, verb: str = "resolves to") -> _FetchError:
    what = f"{host} is {kind}" if ip == host else f"{host} {verb} {ip}, {kind}"
    return _FetchError(f"{what}; pass --allow-private-networks to fetch it", code="private_network")


def checked_connect(host: str, port: int, timeout: float, policy: FetchPolicy) -> socket.socket:
    """A connection to ``host`` whose every resolved address, and the address actually
    connected to, is globally routable; else a `_FetchError` with code ``private_network``.
    The resolved address is connected to directly: nothing is resolved twice."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        addrs = [host]
    except ValueError:
        addrs = policy.resolve(host, port)
    if not addrs:
        raise OSError(f"cannot resolve {host}: no address")
    for ip in addrs:
        kind = address_problem(ip)
        if kind is not None:
            raise _private_refusal(host, ip, kind)
    err: OSError | None = None
    for ip in addrs:
        try:
            sock, peer = policy.connect(ip, port, timeout)
        except OSError as exc:
            err = exc
            continue
        kind = address_problem(peer)
        if kind is not None:
            sock.close()
            raise _private_refusal(host, peer, kind, "connected to")
        return sock
    raise err if err is not None else OSError(f"cannot connect to {host}")


class HostSlots:
    """At most ``per_host`` connections to one host at a time, shared by the download threads."""

    def __init__(self, per_host: int):
        self.per_host = per_host
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}

    def _sem(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            return self._sems.setdefault(host, threading.BoundedSemaphore(self.per_host))

    def acquire(self, host: str, timeout: float | None = None) -> bool:
        return self._sem(host).acquire(timeout=timeout)

    def release(self, host: str) -> None:
        self._sem(host).release()


class _HostHold:
    """The one host slot an attempt holds: taken for the URL's host before its deadline
    starts (waiting for a slot is not download time), moved to the next host when a redirect
    leaves it (urllib has closed the previous response by then), released at the end."""

    def __init__(self, slots: HostSlots | None):
        self.slots = slots
        self.host: str | None = None

    def take(self, host: str, timeout: float | None = None) -> None:
        host = host.lower()
        if self.slots is None or host == self.host:
            return
        self.release()
        if not self.slots.acquire(host, timeout):
            raise _FetchError(f"no free connection to {host} in time (--max-per-host)", retry=True, kind="host_busy")
        self.host = host

    def release(self) -> None:
        if self.slots is not None and self.host is not None:
            self.slots.release(self.host)
            self.host = None


def opt_out_directives(values: list[str], disallowed: tuple[str, ...]) -> list[str]:
    """The disallowed directives among ``X-Robots-Tag`` header values, case-insensitively;
    a directive scoped to a user agent (``googlebot: noai``) counts whatever the agent: an
    opt-out said to one crawler is read as the site's wish."""
    bad = {d.strip().lower() for d in disallowed}
    hits = []
    for value in values:
        for part in str(value).split(","):
            d = part.split(":", 1)[-1].strip().lower()
            if d in bad and d not in hits:
                hits.append(d)
    return hits


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` value in seconds (delta seconds, or an HTTP date relative to ``now``,
    Unix time); None when absent or unreadable."""
    if value is None:
        return None
    v = value.strip()
    if v.isdigit():
        return float(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


@dataclass
class Fetched:
    url: str
    ok: bool
    status: int | None = None
    error: str | None = None
    bytes: int = 0
    seconds: float = 0.0
    attempts: int = 0
    data: builtins.bytes | None = None  # (the field ``bytes`` shadows the type here)
    code: str | None = None  # "private_network" or "opt_out": refused by the crawl policy
    error_code: str | None = None  # why it failed, one of DOWNLOAD_ERROR_CODES (None when ok)
    directives: list[str] = field(default_factory=list)  # the opt-out directives seen
    retry_after: list[float] = field(default_factory=list)  # Retry-After waits honoured, s

    def record(self) -> dict:
        rec = {"url": self.url, "ok": self.ok, "status": self.status, "error": self.error, "bytes": self.bytes,
               "seconds": round(self.seconds, 3), "attempts": self.attempts}
        if self.code:
            rec["code"] = self.code
        if self.error_code:
            rec["error_code"] = self.error_code
        if self.directives:
            rec["directives"] = self.directives
        if self.retry_after:
            rec["retry_after"] = [round(w, 3) for w in self.retry_after]
        return rec


# Stable failure codes of a download (Fetched.error_code), beside the human sentence.
DOWNLOAD_ERROR_CODES = ("bad_url", "host_busy", "bad_redirect", "http_error", "timeout", "connect_error",
                        "too_large", "connection_broke", "opt_out", "private_network")


class _FetchError(Exception):
    """``code``: a crawl-policy refusal (private_network, opt_out); ``kind``: the failure code
    (one of DOWNLOAD_ERROR_CODES) that grouping and reports use."""

    def __init__(self, msg: str, status: int | None = None, retry: bool = False, code: str | None = None,
                 retry_after: float | None = None, directives: list[str] | None = None, kind: str | None = None):
        super().__init__(msg)
        self.status, self.retry, self.code = status, retry, code
        self.retry_after, self.directives = retry_after, directives or []
        self.kind = kind or code or "connect_error"


def _redirect_handler(max_redirects: int) -> urllib.request.HTTPRedirectHandler:
    class Handler(urllib.request.HTTPRedirectHandler):
        max_redirections = max_redirects
        max_repeats = 2

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if urlsplit(newurl).scheme not in ("http", "https"):
                raise _FetchError(f"redirect to a non-http(s) URL: {newurl[:200]}", code, kind="bad_redirect")
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


def _deadline_handlers(deadline: _Deadline, policy: FetchPolicy, hold: _HostHold) -> list[urllib.request.BaseHandler]:
    """HTTP and HTTPS handlers whose connections take their host's slot, go only to checked
    addresses (unless private networks are allowed), register their sockets with ``deadline``
    and connect within the time that is left."""

    class OnDeadline(http.client.HTTPConnection):  # before HTTPSConnection in the bases: its connect wraps theirs
        def connect(self) -> None:
            hold.take(self.host, deadline.remaining())
            self.timeout = deadline.remaining()
            if not policy.allow_private:  # HTTPConnection.connect opens its socket through this
                self._create_connection = lambda addr, timeout, *_: checked_connect(addr[0], addr[1], timeout, policy)
            super().connect()
            deadline.register(self.sock)

    class Conn(OnDeadline):
        pass

    class SecureConn(OnDeadline, http.client.HTTPSConnection):
        pass

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Conn, req)

    class Secure(urllib.request.HTTPSHandler):
        def https_open(self, req):
            context = self._context  # type: ignore[attr-defined]  # set by HTTPSHandler.__init__, not in the stubs
            return self.do_open(SecureConn, req, context=context)

    return [Plain(), Secure()]


ATTRIBUTION_FIELDS = ("license", "author", "source")
_FIELD_ALIASES = {"license": ("license", "licence"), "author": ("author", "creator", "artist"),
                  "source": ("source", "page", "source_url", "page_url")}


def _attribution(row: dict) -> dict[str, str]:
    """The licence, author and source page of one list row (keys matched case-insensitively)."""
    low = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    out = {}
    for name, names in _FIELD_ALIASES.items():
        for n in names:
            v = low.get(n)
            if v is not None and str(v).strip():
                out[name] = str(v).strip()
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


def _attempt(max_redirects: int, url: str, timeout: float, max_bytes: int, policy: FetchPolicy = DEFAULT_POLICY,
             slots: HostSlots | None = None) -> tuple[int, bytes]:
    hold = _HostHold(slots)
    hold.take(urlsplit(url).hostname or "")  # before the deadline: queueing for a host is not download time
    deadline = _Deadline(timeout)
    try:
        return _attempt_until(deadline, max_redirects, url, timeout, max_bytes, policy, hold)
    except _FetchError as exc:
        if deadline.expired and exc.code is None:
            raise _FetchError(f"download took longer than {timeout:g} s (server too slow)", exc.status, retry=True,
                              kind="timeout") from None
        raise
    finally:
        deadline.cancel()
        hold.release()


def _attempt_until(deadline: _Deadline, max_redirects: int, url: str, timeout: float, max_bytes: int,
                   policy: FetchPolicy, hold: _HostHold) -> tuple[int, bytes]:
    handlers = [_redirect_handler(max_redirects), *_deadline_handlers(deadline, policy, hold)]
    if not policy.allow_private:  # a proxy would resolve and connect where the checks cannot see
        handlers.append(urllib.request.ProxyHandler({}))
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, headers={"User-Agent": policy.user_agent, "Accept": "image/*,*/*;q=0.5"})
    try:
        resp = opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code in (301, 302, 303, 307, 308):
            if "not allowed" in str(exc.reason):
                raise _FetchError(f"redirect to a non-http(s) URL: {str(exc.reason)[:200]}", exc.code,
                                  kind="bad_redirect") from None
            raise _FetchError(f"too many redirects or a redirect loop (HTTP {exc.code})", exc.code,
                              kind="bad_redirect") from None
        wait = None
        if exc.code in RETRY_AFTER_STATUS and exc.headers is not None:
            wait = retry_after_seconds(exc.headers.get("Retry-After"))
        raise _FetchError(f"HTTP {exc.code} {exc.reason}", exc.code, exc.code in RETRY_STATUS,
                          retry_after=wait, kind="http_error") from None
    except _FetchError:
        raise
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, _FetchError):
            raise reason from None
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise _FetchError(f"no response within {timeout:g} s", retry=True, kind="timeout") from None
        raise _FetchError(f"cannot connect: {reason}", retry=True) from None
    except TimeoutError:
        raise _FetchError(f"no response within {timeout:g} s", retry=True, kind="timeout") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _FetchError(f"{exc.__class__.__name__}: {exc}", retry=True) from None
    with resp:
        status = resp.status
        hits = opt_out_directives(resp.headers.get_all("X-Robots-Tag") or [], policy.disallowed_directives)
        if hits:  # dropped before the body is read: an opted-out image is never on disk
            raise _FetchError(f"opted out: X-Robots-Tag {', '.join(hits)} (set --disallowed-header-directives "
                              f"to change which directives are honoured)", status, code="opt_out", directives=hits)
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise _FetchError(f"body of {int(length)} bytes is over the limit of {max_bytes}", status, kind="too_large")
        chunks, total = [], 0
        while True:
            try:
                chunk = resp.read1(65536)  # whatever has arrived: the deadline is checked between reads
            except TimeoutError:
                raise _FetchError(f"server stopped sending for {timeout:g} s", status, retry=True, kind="timeout") from None
            except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, IncompleteRead, shut down
                raise _FetchError(f"connection broke: {exc.__class__.__name__}: {exc}", status, retry=True,
                                  kind="connection_broke") from None
            if deadline.expired:
                raise _FetchError(f"download took longer than {timeout:g} s (server too slow)", status, retry=True,
                                  kind="timeout")
            if not chunk:
                if resp.length:  # the sender closed before the length it announced
                    raise _FetchError(f"connection closed after {total} of {total + resp.length} bytes", status, retry=True,
                                      kind="connection_broke")
                break
            total += len(chunk)
            if total > max_bytes:
                raise _FetchError(f"body is over the limit of {max_bytes} bytes", status, kind="too_large")
            chunks.append(chunk)
        return status, b"".join(chunks)


def fetch(url: str, *, timeout: float = 30.0, max_bytes: int = 50_000_000, max_redirects: int = 5,
          retries: int = 2, backoff: float = 0.5, sleep=time.sleep, policy: FetchPolicy = DEFAULT_POLICY,
          slots: HostSlots | None = None) -> Fetched:
    """Download ``url``; retries connection errors, timeouts, 429 and 5xx with back-off, or
    after the server's ``Retry-After`` on 429 and 503. A wait for ``Retry-After`` is an attempt
    like any other, and is honoured only when it and one more attempt fit in the URL's time,
    (retries + 1) x timeout plus the back-off sleeps (the bound it always had); otherwise the
    URL ends at once."""
    t0 = time.monotonic()
    bad = check_url(url)
    if bad:
        return Fetched(url, False, error=bad, error_code="bad_url")
    url_deadline = t0 + (retries + 1) * timeout + backoff * (2**retries - 1)
    result = Fetched(url, False)
    for attempt in range(retries + 1):
        result.attempts = attempt + 1
        try:
            status, data = _attempt(max_redirects, url, timeout, max_bytes, policy, slots)
            result.ok, result.status, result.data, result.bytes, result.error = True, status, data, len(data), None
            result.code, result.directives, result.error_code = None, [], None
            break
        except _FetchError as exc:
            result.status, result.error, result.code, result.directives = exc.status, str(exc), exc.code, exc.directives
            result.error_code = exc.kind
            if not exc.retry or attempt == retries:
                break
            wait = backoff * (2**attempt)
            if exc.retry_after is not None:
                if time.monotonic() + exc.retry_after + timeout > url_deadline:
                    result.error += (f"; Retry-After {exc.retry_after:g} s is past this URL's deadline "
                                     f"({url_deadline - t0:g} s: --timeout x (--retries + 1) and back-off)")
                    break
                wait = exc.retry_after
                result.retry_after.append(wait)
            sleep(wait)
    result.seconds = time.monotonic() - t0
    return result
