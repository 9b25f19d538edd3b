"""WebDataset-style tar shards of composites, the layout large training jobs stream from.

Each sample is five members sharing a key: ``KEY.image.png`` (or .jpg), ``KEY.alpha.png``,
``KEY.fg.png``, ``KEY.bg.png`` and ``KEY.json`` (the manifest record). Shards are packed in
sorted key order with fixed metadata (mtime 0, uid 0), so the same composites give the
same bytes, and each shard is written atomically.
"""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .imageio import MemoryFile, atomic_write_bytes

PARTS = ("image", "alpha", "fg", "bg")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def pack_shards(out_dir: Path, records: Iterable[dict[str, Any]], shard_size: int = 1000) -> list[Path]:
    """Pack the composites of ``records`` (manifest lines) into OUT/shards/shard-NNNNNN.tar."""
    recs = sorted((r for r in records if r.get("type") == "composite"), key=lambda r: r["id"])
    shards = []
    for n, start in enumerate(range(0, len(recs), shard_size)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for r in recs[start : start + shard_size]:
                for part in PARTS:
                    rel = r["outputs"][part]
                    _add(tar, f"{r['id']}.{part}{Path(rel).suffix}", (out_dir / rel).read_bytes())
                _add(tar, f"{r['id']}.json", (json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n").encode())
        path = out_dir / "shards" / f"shard-{n:06d}.tar"
        atomic_write_bytes(path, buf.getvalue())
        shards.append(path)
    for stale in sorted((out_dir / "shards").glob("shard-*.tar")) if (out_dir / "shards").is_dir() else []:
        if stale not in shards:
            stale.unlink()
    return shards


@dataclass(frozen=True)
class TarPart:
    """One member of a shard, read on demand."""

    tar: str
    name: str
    offset: int
    size: int

    def load(self) -> MemoryFile:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return MemoryFile(f"{self.tar}:{self.name}", f.read(self.size))


def index_shards(paths: Iterable[Path]) -> dict[str, dict[str, TarPart]]:
    """key -> {image, alpha, fg, bg, json} parts over every shard (keys may contain dots)."""
    samples: dict[str, dict[str, TarPart]] = {}
    for p in sorted(paths):
        with tarfile.open(p, "r") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                for part in (*PARTS, "json"):
                    marker = f".{part}."
                    if marker in m.name or (part == "json" and m.name.endswith(".json")):
                        key = m.name.rsplit(marker, 1)[0] if part != "json" else m.name[: -len(".json")]
                        samples.setdefault(key, {})[part] = TarPart(str(p), m.name, m.offset_data, m.size)
                        break
    return samples
