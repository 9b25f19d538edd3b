"""`bg20k build` crawls responsibly: no fetches into private networks (redirects and the
address connected to included), X-Robots-Tag opt-outs honoured, an identifiable user agent,
at most N connections per host, Retry-After honoured within the URL's deadline. Loopback
servers only; a "public" host name is a resolver stub, never the real network."""
from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from bg20k.build import BuildConfig, _fetch_bounded
from bg20k.download import (
    AGENT_TOKEN,
    FetchPolicy,
    address_problem,
    fetch,
    opt_out_directives,
    retry_after_seconds,
    user_agent,
)

from .conftest import run_cli
from .test_bg20k import Site, _jpeg

LOCAL = FetchPolicy(allow_private=True)


@pytest.fixture
def site():
    s = Site()
    yield s
    s.close()


def _image(seed: int) -> bytes:
    """A small distinct JPEG (no two are near duplicates)."""
    return _jpeg(np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8))


def _records(out) -> dict[str, dict]:
    recs = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    return {r["source"]: r for r in recs if r["type"] == "source"}


# ------------------------------------------------------------------ private networks


@pytest.mark.parametrize("ip, kind", [
    ("127.0.0.1", "a loopback address"), ("127.8.9.10", "a loopback address"), ("::1", "a loopback address"),
    ("10.0.0.1", "a private address"), ("172.16.5.4", "a private address"), ("192.168.1.1", "a private address"),
    ("169.254.169.254", "a link-local address"), ("fe80::1", "a link-local address"),
    ("fd12:3456::1", "a unique-local address"), ("224.0.0.1", "a multicast address"), ("ff02::1", "a multicast address"),
    ("0.0.0.0", "an unspecified address"), ("::", "an unspecified address"),
    ("::ffff:127.0.0.1", "a loopback address"), ("::ffff:169.254.169.254", "a link-local address"),
    ("::ffff:10.1.2.3", "a private address"), ("100.64.0.1", "a reserved (not globally routable) address"),
    ("8.8.8.8", None), ("93.184.216.34", None), ("2606:4700:4700::1111", None), ("::ffff:8.8.8.8", None),
])
def test_address_classes(ip, kind):
    assert address_problem(ip) == kind


def test_a_loopback_url_is_refused_by_default_and_fetched_when_allowed(site):
    site.routes["/a.jpg"] = (200, {}, _image(0))
    port = site.server.server_address[1]
    for url in (f"{site.base}/a.jpg", f"http://[::ffff:127.0.0.1]:{port}/a.jpg", f"https://127.0.0.1:{port}/a.jpg"):
        r = fetch(url, retries=2, sleep=lambda s: None)
        assert not r.ok and r.code == "private_network" and r.attempts == 1, r.error  # a refusal is not retried
        assert "127.0.0.1 is a loopback address; pass --allow-private-networks to fetch it" in r.error
    assert not site.hits
    r = fetch(f"{site.base}/a.jpg", policy=LOCAL)
    assert r.ok and r.data == _image(0) and site.hits == {"/a.jpg": 1}


class StubNet:
    """A network in which public names resolve to public addresses that route to the loopback
    server (like a NAT), so that a redirect out of them can be followed; nothing leaves the machine."""

    def __init__(self, port: int, names: dict[str, list[str]], routes: dict[str, str]):
        self.port, self.names, self.routes = port, names, routes  # routes: public ip -> the peer the socket reports

    def resolve(self, host: str, port: int) -> list[str]:
        return self.names[host]

    def connect(self, ip: str, port: int, timeout: float):
        if ip not in self.routes:
            raise OSError(f"stub network: no route to {ip}")
        return socket.create_connection(("127.0.0.1", port), timeout), self.routes[ip]


def test_a_public_name_redirecting_into_the_private_network_is_refused(site):
    port = site.server.server_address[1]
    net = StubNet(port, {"images.example.com": ["93.184.216.34"], "cdn.example.net": ["10.1.2.3"],
                         "rebind.example.com": ["93.184.216.35"], "mixed.example.com": ["93.184.216.34", "127.0.0.1"]},
                  {"93.184.216.34": "93.184.216.34", "93.184.216.35": "127.0.0.1"})
    policy = FetchPolicy(resolve=net.resolve, connect=net.connect)
    site.routes["/img.jpg"] = (200, {}, _image(1))
    site.routes["/ok"] = (302, {"Location": "/img.jpg"}, b"")  # public -> the same public host: fetched
    site.routes["/to-loopback"] = (302, {"Location": f"http://127.0.0.1:{port}/img.jpg"}, b"")
    site.routes["/to-mapped"] = (302, {"Location": f"http://[::ffff:169.254.169.254]:{port}/img.jpg"}, b"")
    site.routes["/to-private-name"] = (302, {"Location": f"http://cdn.example.net:{port}/img.jpg"}, b"")
    r = fetch(f"http://images.example.com:{port}/ok", policy=policy)
    assert r.ok and r.data == _image(1) and site.hits == {"/ok": 1, "/img.jpg": 1}
    site.hits.clear()
    expect = {"to-loopback": "127.0.0.1 is a loopback address",
              "to-mapped": "::ffff:169.254.169.254 is a link-local address",
              "to-private-name": "cdn.example.net resolves to 10.1.2.3, a private address"}
    for path, msg in expect.items():
        r = fetch(f"http://images.example.com:{port}/{path}", policy=policy, retries=2, sleep=lambda s: None)
        assert not r.ok and r.code == "private_network" and r.attempts == 1 and msg in r.error, r.error
    # DNS rebinding: resolved to a public address, but the socket reached a loopback one
    r = fetch(f"http://rebind.example.com:{port}/img.jpg", policy=policy)
    assert not r.ok and r.code == "private_network" and "connected to 127.0.0.1, a loopback address" in r.error
    # one private address among a name's addresses refuses the name
    r = fetch(f"http://mixed.example.com:{port}/img.jpg", policy=policy)
    assert not r.ok and "resolves to 127.0.0.1" in r.error
    assert site.hits == {f"/{p}": 1 for p in expect}  # /img.jpg was never reached


def test_build_refuses_loopback_without_the_flag_and_fetches_it_with_it(tmp_path, site):
    site.routes["/a.jpg"] = (200, {}, _image(2))
    lst = tmp_path / "urls.txt"
    lst.write_text(f"{site.base}/a.jpg\n")
    out = tmp_path / "bg"
    args = ["bg20k", "build", "--urls", str(lst), "--out", str(out), "--no-screen", "--min-short-side", "64",
            "--target-short-side", "64", "--workers", "1", "--quiet"]
    proc = run_cli(*args)
    assert proc.returncode == 1 and not site.hits, proc.stderr  # nothing kept, nothing fetched
    rec = _records(out)[f"{site.base}/a.jpg"]
    assert (rec["status"], rec["stage"]) == ("rejected", "private_network")
    assert rec["reason"] == "127.0.0.1 is a loopback address; pass --allow-private-networks to fetch it"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["rejected_private_network"] == 1 and stats["reasons"] == {"private_network": 1}
    proc = run_cli(*args, "--user-agent-contact", "me at home")
    assert proc.returncode == 2 and "--user-agent-contact 'me at home': give an http(s):// or mailto:" in proc.stderr
    run_cli(*args, "--allow-private-networks", check=True)  # the refusal is re-judged: now fetched and kept
    assert site.hits == {"/a.jpg": 1} and _records(out)[f"{site.base}/a.jpg"]["status"] == "candidate"
    assert len(list((out / "train").glob("*.jpg")) + list((out / "testval").glob("*.jpg"))) == 1


# ------------------------------------------------------------------ opt-out directives


def test_x_robots_tag_parsing():
    d = ("noai", "noimageai", "noindex", "noimageindex")
    assert opt_out_directives(["NoAI"], d) == ["noai"]
    assert opt_out_directives(["nofollow, NOIMAGEINDEX , noarchive"], d) == ["noimageindex"]
    assert opt_out_directives(["googlebot: noindex", "otherbot: noimageai, nofollow"], d) == ["noindex", "noimageai"]
    assert opt_out_directives(["nofollow", "unavailable_after: 25 Jun 2010 15:00:00 PST", "max-image-preview:large"],
                              d) == []
    assert opt_out_directives(["noai"], ()) == []


# X-Robots-Tag values served, each of which opts its image out by default
OPT_OUTS = ["noai", "NOAI", "noimageai", "NoImageAI", "noindex", "NOINDEX", "noimageindex", "NOIMAGEINDEX",
            "nofollow, noai", "noarchive,NoImageIndex", "googlebot: noindex", "GPTBot: noimageai, nofollow"]


def test_opt_outs_are_skipped_recorded_locked_and_kept_when_the_list_is_empty(tmp_path, site):
    seen_agents = []

    def clean(handler):  # an image whose tag opts nothing out; records the user agent
        seen_agents.append(handler.headers.get("User-Agent"))
        body = _image(100)
        handler.send_response(200)
        handler.send_header("X-Robots-Tag", "nofollow, noarchive")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    site.routes["/clean.jpg"] = clean
    urls = [f"{site.base}/clean.jpg"]
    for k, tag in enumerate(OPT_OUTS):
        site.routes[f"/o{k}.jpg"] = (200, {"Content-Type": "image/jpeg", "X-Robots-Tag": tag}, _image(k))
        urls.append(f"{site.base}/o{k}.jpg")
    lst = tmp_path / "urls.txt"
    lst.write_text("".join(u + "\n" for u in urls))
    out = tmp_path / "bg"
    args = ["bg20k", "build", "--urls", str(lst), "--out", str(out), "--no-screen", "--min-short-side", "64",
            "--target-short-side", "64", "--dedup-distance", "0", "--workers", "1", "--quiet",
            "--allow-private-networks", "--user-agent-contact", "mailto:crawl-ops@example.org"]
    run_cli(*args, check=True)
    assert seen_agents == [f"{user_agent()} (+mailto:crawl-ops@example.org)"]
    assert seen_agents[0].startswith(f"{AGENT_TOKEN}/")
    recs = _records(out)
    for k, tag in enumerate(OPT_OUTS):
        r = recs[urls[k + 1]]
        assert (r["status"], r["stage"]) == ("rejected", "opt_out"), tag
        assert r["reason"].startswith("opted out: X-Robots-Tag ") and "id" not in r
    assert recs[urls[0]]["status"] == "candidate"
    # no opted-out byte is on disk: one staged image, no download left, one placed image
    assert len(list((out / ".stage").glob("*.jpg"))) == 1 and not list((out / ".downloads").iterdir())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["rejected_opt_out"] == len(OPT_OUTS) and stats["reasons"]["opt_out"] == len(OPT_OUTS)
    assert stats["counts"]["kept"] == 1
    page = (out / "review.html").read_text()
    assert page.count('data-locked="1" data-reason="opt-out"') == len(OPT_OUTS)
    assert "review/opt-out-" not in page  # no thumbnail: there is no image
    # a re-run does not ask the hosts again while their directives are honoured
    hits = dict(site.hits)
    run_cli(*args, check=True)
    assert site.hits == hits
    # an empty list honours nothing: every image is fetched and kept
    run_cli(*args, "--disallowed-header-directives", "", check=True)
    recs = _records(out)
    assert all(recs[u]["status"] == "candidate" for u in urls)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["kept"] == len(urls) and "rejected_opt_out" not in stats["counts"]


def test_the_directive_set_can_be_narrowed(site):
    site.routes["/a.jpg"] = (200, {"X-Robots-Tag": "noindex"}, _image(3))
    r = fetch(f"{site.base}/a.jpg", policy=FetchPolicy(allow_private=True, disallowed_directives=("noai",)))
    assert r.ok and r.data == _image(3)
    r = fetch(f"{site.base}/a.jpg", policy=LOCAL)
    assert not r.ok and r.code == "opt_out" and r.directives == ["noindex"] and r.data is None


# ------------------------------------------------------------------ politeness


def test_no_more_than_n_connections_reach_one_host(site):
    lock, active, peak = threading.Lock(), [0], [0]

    def held(handler):
        # counted from the request to just before the answer: inside the client's hold of its
        # slot, so the count can only be below the client's, never above it
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        with lock:
            active[0] -= 1
        body = _image(7)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    urls = []
    for k in range(8):
        site.routes[f"/h{k}.jpg"] = held
        urls.append(f"{site.base}/h{k}.jpg")
    cfg = BuildConfig(out_dir=None, download_workers=8, max_per_host=2, allow_private_networks=True, timeout=30)
    results = list(_fetch_bounded(urls, cfg))
    assert all(r.ok for r in results) and len(results) == 8
    assert 1 <= peak[0] <= 2  # without the cap, 8 workers put up to 8 requests at once on the host


def test_a_busy_host_does_not_hold_up_the_others(site):
    """Each request to 127.0.0.1 is held until both requests to localhost (the same server by
    another host name) have arrived: they can only arrive if URLs of a host at its cap wait
    in the read-ahead instead of occupying the download threads (5 s fallback: a failure)."""
    both_seen, seen = threading.Event(), []
    released = []

    def busy(handler):
        released.append(both_seen.wait(5))
        _send(handler, _image(8))

    def other(handler):
        seen.append(handler.path)
        if len(seen) == 2:
            both_seen.set()
        _send(handler, _image(9))

    port = site.server.server_address[1]
    urls = []
    for k in range(6):
        site.routes[f"/a{k}.jpg"] = busy
        urls.append(f"http://127.0.0.1:{port}/a{k}.jpg")
    for k in range(2):
        site.routes[f"/b{k}.jpg"] = other
        urls.append(f"http://localhost:{port}/b{k}.jpg")
    cfg = BuildConfig(out_dir=None, download_workers=4, max_per_host=1, allow_private_networks=True, timeout=30)
    results = list(_fetch_bounded(urls, cfg))
    assert all(r.ok for r in results) and len(results) == 8
    assert released == [True] * 6


def _send(handler, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_retry_after_seconds_and_dates():
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds(" 120 ") == 120.0
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:05 GMT", now=now) == 5.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0  # in the past: now
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_429_retry_after_is_waited_for_and_counts_as_an_attempt(site):
    times = []

    def busy(handler):
        times.append(time.monotonic())
        if len(times) == 1:
            handler.send_response(429)
            handler.send_header("Retry-After", "2")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body = _image(5)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    site.routes["/busy.jpg"] = busy
    r = fetch(f"{site.base}/busy.jpg", timeout=5, retries=1, backoff=0.1, policy=LOCAL)
    assert r.ok and r.attempts == 2 and r.retry_after == [2.0] and r.record()["retry_after"] == [2.0]
    assert times[1] - times[0] >= 2.0  # a sleep never ends early: a lower bound holds on any machine


def test_retry_after_on_503_uses_the_retries_and_past_the_deadline_ends_the_url(site):
    site.routes["/down.jpg"] = (503, {"Retry-After": "1"}, b"")
    slept = []
    r = fetch(f"{site.base}/down.jpg", timeout=5, retries=2, backoff=0.1, sleep=slept.append, policy=LOCAL)
    assert not r.ok and r.attempts == 3 and slept == [1.0, 1.0] and r.retry_after == [1.0, 1.0] and r.status == 503
    # the URL's time is (retries + 1) x timeout plus back-off: 6.3 s here; an hour is not waited for
    site.routes["/later.jpg"] = (429, {"Retry-After": "3600"}, b"")
    slept.clear()
    r = fetch(f"{site.base}/later.jpg", timeout=2, retries=2, backoff=0.1, sleep=slept.append, policy=LOCAL)
    assert not r.ok and r.attempts == 1 and slept == [] and r.status == 429
    assert "Retry-After 3600 s is past this URL's deadline" in r.error
    # without Retry-After, the own back-off as before
    site.routes["/plain.jpg"] = (503, {}, b"")
    slept.clear()
    r = fetch(f"{site.base}/plain.jpg", retries=2, backoff=0.5, sleep=slept.append, policy=LOCAL)
    assert slept == [0.5, 1.0] and r.retry_after == []
