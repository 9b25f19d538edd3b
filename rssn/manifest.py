"""Append-only JSON-lines manifest that doubles as resume state.

Each record has a ``key``; a record is appended only after the files it names were written
atomically, so a record in the manifest means finished work. A run killed while appending
can leave a torn last line: it is dropped on load. Re-recording a key that is already present
with the same content is a no-op, so re-runs never duplicate entries.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from .imageio import atomic_write_bytes


class Manifest:
    """The records of ``path`` keyed by their ``key`` field, with durable appends."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good_lines: list[bytes] = []
        torn = False
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                torn = True  # a line cut by a kill; its work is simply redone
                continue
            good_lines.append(line)
            self.records[rec["key"]] = rec
        if torn or (raw and not raw.endswith(b"\n")):
            atomic_write_bytes(self.path, b"".join(l + b"\n" for l in good_lines))

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records.values())

    def append(self, record: dict[str, Any]) -> bool:
        """Record ``record`` durably; returns False when an identical record was already there."""
        key = record["key"]
        if self.records.get(key) == record:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[key] = json.loads(line)
        return True

    def discard(self, key: str) -> None:
        """Forget a key (a failure that has since succeeded); rewrites the file atomically."""
        if key in self.records:
            del self.records[key]
            self._rewrite(self.records.values())

    def replace(self, record: dict[str, Any]) -> None:
        """Change a record in memory only; the next :meth:`compact` writes it (many changes, one write)."""
        self.records[record["key"]] = json.loads(json.dumps(record, sort_keys=True, ensure_ascii=False))

    def discard_many(self, keys) -> None:
        """Forget several keys with one rewrite of the file."""
        keys = [k for k in keys if k in self.records]
        for k in keys:
            del self.records[k]
        if keys:
            self._rewrite(self.records.values())

    def compact(self) -> None:
        """Rewrite the file sorted by key, so that a finished run's manifest does not depend on
        the order in which workers finished."""
        self.records = dict(sorted(self.records.items()))
        self._rewrite(self.records.values())

    def _rewrite(self, records) -> None:
        data = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
        atomic_write_bytes(self.path, data.encode("utf-8"))
