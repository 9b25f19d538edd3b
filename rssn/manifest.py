"""Append-only JSON-lines manifest that doubles as resume state.

Each record has a ``key``; a record is appended only after the files it names were written
atomically (fsynced, then renamed), so a record in the manifest means finished work. A run
killed while appending can leave a torn last line: it is dropped on load. Re-recording a key
that is already present with the same content is a no-op, so re-runs never duplicate entries.

Memory: only an index is held, key -> where the key's line lies in the file (one int), not
the records; a record is read back from the file and parsed when asked for. A crawl of 50k
URLs (two records each) then holds a few MB instead of a few hundred (issue #28).

Durability (group commit): every appended line is written to the operating system at once,
so a killed process loses nothing it appended; the file is fsynced every ``SYNC_EVERY``
records or ``SYNC_SECONDS`` seconds of appends, at :meth:`sync`, :meth:`close`, at exit, and
by every rewrite, so an operating-system crash or power cut loses at most that unsynced tail.
A record is still written only after the files it names were fsynced and renamed into place,
so no record, durable or not, ever names a file that is not durably written.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .imageio import TMP_PREFIX

SYNC_EVERY = 256  # appended records between fsyncs, at most
SYNC_SECONDS = 1.0  # seconds of appends between fsyncs, at most
_CHANGED = -1  # index entry of a record changed in memory only (see Manifest.replace)


def _line(record: dict[str, Any]) -> bytes:
    """The canonical line of a record (sorted keys, UTF-8), newline included."""
    return (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


class _Files:
    """The manifest's open files, apart from the Manifest so that a finalizer can fsync and close
    them at exit or garbage collection without keeping the Manifest alive."""

    def __init__(self, path: Path):
        self.path = path
        self.writer: io.FileIO | None = None  # append handle, unbuffered
        self.reader: io.FileIO | None = None  # read handle, unbuffered
        self.unsynced = 0
        self.last_sync = time.monotonic()

    def append(self, data: bytes) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = io.FileIO(self.path, "ab")
        view = memoryview(data)
        while view:  # a raw write may be partial
            view = view[self.writer.write(view):]
        self.unsynced += 1

    def read(self, offset: int, length: int) -> bytes:
        if self.reader is None:
            self.reader = io.FileIO(self.path, "rb")
        self.reader.seek(offset)
        chunks, left = [], length
        while left:
            b = self.reader.read(left)
            if not b:
                raise OSError(f"{self.path}: ends before a line the manifest indexed (changed by another "
                              f"process?); run the command again to re-read it")
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)

    def sync(self) -> None:
        if self.writer is not None and self.unsynced:
            os.fsync(self.writer.fileno())
        self.unsynced = 0
        self.last_sync = time.monotonic()

    def close(self) -> None:
        try:
            self.sync()
        finally:
            for f in (self.writer, self.reader):
                if f is not None:
                    f.close()
            self.writer = self.reader = None


class Manifest:
    """The records of ``path`` keyed by their ``key`` field, with durable appends.

    Only the index (key -> offset and length of its line) is kept in memory; :meth:`get` and
    iteration read records back from the file. Records returned are fresh dicts: change a
    record with :meth:`replace` or :meth:`append`, not by mutating what was returned. One
    Manifest object per file at a time: another one's rewrite would move the lines under it
    (each read checks its key, so that shows as an error, never as a wrong record)."""

    def __init__(self, path: str | os.PathLike, sync_every: int = SYNC_EVERY, sync_seconds: float = SYNC_SECONDS):
        self.path = Path(path)
        self.sync_every, self.sync_seconds = sync_every, sync_seconds
        self._index: dict[str, int] = {}  # key -> offset << 32 | length of its line, or _CHANGED
        self._changed: dict[str, bytes] = {}  # key -> line, for records changed in memory only
        self._size = 0  # bytes in the file
        self._files = _Files(self.path)
        self._finalizer = weakref.finalize(self, self._files.close)
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        torn = False
        offset = 0
        with open(self.path, "rb") as f:
            for line in f:
                n = len(line)
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        torn = True  # a line cut by a kill; its work is simply redone
                    else:
                        if not line.endswith(b"\n"):
                            torn = True  # whole JSON without its newline: kept, the file is rewritten
                        self._index[rec["key"]] = offset << 32 | n
                offset += n
        self._size = offset
        if torn:
            self._rewrite(list(self._index))

    def _raw(self, key: str) -> bytes | None:
        """The line of ``key`` (newline not guaranteed for a last line read before a repair)."""
        pos = self._index.get(key)
        if pos is None:
            return None
        if pos == _CHANGED:
            return self._changed[key]
        return self._files.read(pos >> 32, pos & 0xFFFFFFFF)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> list[str]:
        """The keys, in the order they were first recorded (or sorted, after :meth:`compact`)."""
        return list(self._index)

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self._raw(key)
        return None if raw is None else self._parse(key, raw)

    def _parse(self, key: str, raw: bytes) -> dict[str, Any]:
        """The record of ``key`` from its line, checked: a line that is not that key's means the file
        was rewritten under this index (two Manifest objects on one file)."""
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict) or rec.get("key") != key:
            raise RuntimeError(f"{self.path}: the line indexed for {key!r} is not its record: the file was "
                               f"changed by another writer while this run used it; run the command again")
        return rec

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for key in self._index:
            rec = self.get(key)
            if rec is not None:  # every indexed key has a line
                yield rec

    def append(self, record: dict[str, Any]) -> bool:
        """Record ``record`` durably; returns False when an identical record was already there."""
        key = record["key"]
        data = _line(record)
        old = self._raw(key)
        if old is not None and (old == data or self._parse(key, old) == json.loads(data)):
            return False
        if len(data) >= 1 << 32:
            raise ValueError(f"{self.path}: a manifest record of {len(data)} bytes for {key!r} is over 4 GB")
        self._files.append(data)
        self._index[key] = self._size << 32 | len(data)
        self._changed.pop(key, None)
        self._size += len(data)
        if (self._files.unsynced >= self.sync_every
                or time.monotonic() - self._files.last_sync >= self.sync_seconds):
            self._files.sync()
        return True

    def sync(self) -> None:
        """fsync the records appended since the last fsync (call it at the end of a stage)."""
        self._files.sync()

    def close(self) -> None:
        """fsync and close the file (a later append or read opens it again)."""
        self._files.close()

    def discard(self, key: str) -> None:
        """Forget a key (a failure that has since succeeded); rewrites the file atomically."""
        self.discard_many([key])

    def replace(self, record: dict[str, Any]) -> None:
        """Change a record in memory only; the next :meth:`compact` writes it (many changes, one write)."""
        key = record["key"]
        self._changed[key] = _line(record)
        self._index[key] = _CHANGED

    def discard_many(self, keys: Iterable[str]) -> None:
        """Forget several keys with one rewrite of the file."""
        gone = {k for k in keys if k in self._index}
        if gone:
            self._rewrite([k for k in self._index if k not in gone])

    def compact(self) -> None:
        """Rewrite the file sorted by key, so that a finished run's manifest does not depend on
        the order in which workers finished."""
        self._rewrite(sorted(self._index))

    def _rewrite(self, keys: list[str]) -> None:
        """Write the records of ``keys``, in that order, to a temporary file (streamed: one record
        in memory at a time), fsync it and rename it over the manifest; re-index."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{self.path.name}.", dir=self.path.parent)
        index: dict[str, int] = {}
        offset = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for key in keys:
                    raw = self._raw(key)
                    assert raw is not None  # keys come from the index
                    data = _line(self._parse(key, raw))  # canonical, as a record appended now
                    f.write(data)
                    index[key] = offset << 32 | len(data)
                    offset += len(data)
                f.flush()
                os.fsync(f.fileno())
            self._files.close()  # the handles point at the file being replaced
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._index, self._changed, self._size = index, {}, offset
