"""The manifest holds an index, not records (issue #28), appends reach the file at once, and
fsyncs are grouped; the executor keeps a bounded window of tasks in flight."""
from __future__ import annotations

import concurrent.futures as cf
import json
import tracemalloc

import pytest

from rssn import manifest as manifest_mod
from rssn.executor import TASKS_IN_FLIGHT_PER_WORKER, Executor
from rssn.manifest import Manifest


def _rec(k: int, payload: int = 0) -> dict:
    return {"key": f"source:http://example.org/{k}.jpg", "type": "source", "status": "rejected", "n": k,
            "blob": "x" * payload}


def test_memory_held_does_not_depend_on_record_size(tmp_path):
    """200 records of 10 kB each: the manifest holds well under 1 kB per record (a key and an
    int), where holding the records would take over 10 kB each. tracemalloc counts exactly the
    Python allocations, so the bound does not depend on the machine."""
    m = Manifest(tmp_path / "m.jsonl")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(200):
            m.append(_rec(k, 10_000))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 200 * 1000, held
    assert all(isinstance(v, int) for v in m._index.values()) and not m._changed
    # and every record reads back as written, from this object and from a fresh load
    assert m.get(_rec(7)["key"]) == _rec(7, 10_000)
    assert [r["n"] for r in Manifest(tmp_path / "m.jsonl")] == list(range(200))


def test_records_returned_are_copies(tmp_path):
    m = Manifest(tmp_path / "m.jsonl")
    m.append(_rec(1))
    m.get(_rec(1)["key"])["status"] = "changed"
    assert m.get(_rec(1)["key"])["status"] == "rejected"
    assert not m.append(_rec(1)), "an identical record is a no-op"


def test_appends_reach_the_file_before_any_fsync(tmp_path, monkeypatch):
    """A killed process loses nothing it appended: each line is written to the OS at once, even
    when its fsync is still pending (group commit)."""
    syncs = []
    monkeypatch.setattr(manifest_mod.os, "fsync", lambda fd: syncs.append(fd))
    m = Manifest(tmp_path / "m.jsonl", sync_every=4, sync_seconds=1e9)
    for k in range(3):
        m.append(_rec(k))
    assert syncs == []
    lines = (tmp_path / "m.jsonl").read_bytes().splitlines()
    assert [json.loads(l)["n"] for l in lines] == [0, 1, 2]
    m.append(_rec(3))  # the 4th record: one fsync for the group
    assert len(syncs) == 1
    for k in range(4, 6):
        m.append(_rec(k))
    m.sync()  # a stage end: the tail is fsynced
    assert len(syncs) == 2
    m.sync()  # nothing new: no fsync
    assert len(syncs) == 2


def test_time_bounds_the_unsynced_tail(tmp_path, monkeypatch):
    syncs = []
    monkeypatch.setattr(manifest_mod.os, "fsync", lambda fd: syncs.append(fd))
    m = Manifest(tmp_path / "m.jsonl", sync_every=10**9, sync_seconds=0.0)
    m.append(_rec(0))
    m.append(_rec(1))
    assert len(syncs) == 2


def test_torn_tail_is_dropped_and_the_index_stays_right(tmp_path):
    p = tmp_path / "m.jsonl"
    m = Manifest(p)
    for k in range(3):
        m.append(_rec(k))
    m.close()
    with open(p, "ab") as f:
        f.write(b'{"key": "source:torn", "n')
    m = Manifest(p)
    assert len(m) == 3 and "source:torn" not in m
    assert p.read_bytes().endswith(b"\n")
    m.append(_rec(3))
    assert [r["n"] for r in m] == [0, 1, 2, 3]
    m.replace({**_rec(0), "n": 10})  # in memory until compact
    assert m.get(_rec(0)["key"])["n"] == 10
    assert json.loads(p.read_bytes().splitlines()[0])["n"] == 0
    m.discard(_rec(1)["key"])
    m.compact()
    keys = [json.loads(l)["key"] for l in p.read_bytes().splitlines()]
    assert keys == sorted(keys) and len(keys) == 3
    assert Manifest(p).get(_rec(0)["key"])["n"] == 10


def _square(x: int) -> int:
    return x * x


def test_executor_keeps_a_bounded_window_in_flight():
    """Tasks are submitted as others finish, never all at once: a long task list holds no
    future or result per task (threads stand in for the process pool)."""
    ex = Executor(workers=2)
    submitted = []
    pool = cf.ThreadPoolExecutor(2)
    real_submit = pool.submit

    def submit(fn, *a):
        submitted.append(a)
        return real_submit(fn, *a)

    pool.submit = submit
    ex._pool = pool
    window = TASKS_IN_FLIGHT_PER_WORKER * 2
    got = {}
    with ex:
        for n_yielded, (i, r, exc) in enumerate(ex.run(_square, [(k,) for k in range(200)]), start=1):
            assert exc is None
            got[i] = r
            assert len(submitted) - n_yielded <= 2 * window  # pending, plus one finished batch being handed over
    assert got == {k: k * k for k in range(200)}


def test_a_line_moved_under_the_index_is_an_error_not_a_wrong_record(tmp_path):
    p = tmp_path / "m.jsonl"
    m = Manifest(p)
    for k in range(3):
        m.append(_rec(k))
    m.close()
    other = Manifest(p)
    other.discard(_rec(0)["key"])  # rewrites the file: m's offsets now point at other lines
    with pytest.raises(RuntimeError, match="m.jsonl"):
        m.get(_rec(1)["key"])
