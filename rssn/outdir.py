"""Output folders that never mix two jobs: one run at a time, and a settings fingerprint.

- :func:`output_lock`: an advisory lock on ``OUT/.lock`` (``flock``), held for the whole run and
  released by the operating system when the process ends, however it ends: a second run on the
  same folder stops at once naming the first run's process id; a killed run leaves no stale lock.
- :func:`check_settings`: every command that writes an output folder records the settings that
  decide its bytes in ``OUT/settings.json`` before it does any work. A re-run into the folder
  continues only when they are the same, or when a changed setting only adds work (more sources,
  a larger ``--per-fg``, screening thresholds recomputed from stored detections, ...); otherwise
  it stops with every difference named, old and new value. ``--overwrite move|delete`` moves
  the old outputs aside (``OUT/../NAME.old-TIMESTAMP``) or deletes them first.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"
SETTINGS_NAME = "settings.json"


class OutputFolderBusy(RuntimeError):
    """Another run holds the output folder."""


class SettingsChanged(ValueError):
    """A re-run would mix outputs made with different settings."""


@contextlib.contextmanager
def output_lock(out: Path, command: str) -> Iterator[None]:
    """Hold ``OUT/.lock`` for the duration of the block, or raise :class:`OutputFolderBusy`."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise OutputFolderBusy(f"{out} is in use by another run (process {holder}); wait for it to end, "
                                   "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _normal(value: Any) -> Any:
    """JSON-comparable form: paths resolved to strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, (tuple, list)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def read_settings(out: Path) -> dict[str, Any] | None:
    p = out / SETTINGS_NAME
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def differences(old: dict[str, Any], new: dict[str, Any], may_grow: tuple[str, ...] = (),
                may_change: tuple[str, ...] = ()) -> list[str]:
    """The settings that differ, as "name: old -> new"; ``may_grow`` may only increase (a larger
    --per-fg adds composites), ``may_change`` may take any value (they only add work)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in may_change:
            continue
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key in may_grow and isinstance(a, (int, float)) and isinstance(b, (int, float)) and b >= a:
            continue
        out.append(f"{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def has_outputs(out: Path) -> bool:
    return out.is_dir() and any(p.name not in (LOCK_NAME,) and not p.name.startswith(".tmp") for p in out.iterdir())


def clear_outputs(out: Path, mode: str) -> str:
    """Move everything in ``out`` (but the lock) into a sibling folder, or delete it; says what it did."""
    items = [p for p in out.iterdir() if p.name != LOCK_NAME]
    if mode == "move":
        dest = out.parent / f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while dest.exists():
            n += 1
            dest = out.parent / f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        dest.mkdir(parents=True)
        for p in items:
            os.replace(p, dest / p.name)
        return f"moved the earlier outputs of {out} to {dest}"
    if mode == "delete":
        for p in items:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        return f"deleted the earlier outputs of {out}"
    raise ValueError(f"unknown overwrite mode {mode!r}; choose move or delete")


def check_settings(out: Path, command: str, settings: dict[str, Any], *, may_grow: tuple[str, ...] = (),
                   may_change: tuple[str, ...] = (), overwrite: str | None = None) -> str | None:
    """Compare ``settings`` with the ones recorded in ``out``, clear the folder if asked, and
    record the new ones. Returns a message to show (what was overwritten), or None.

    Raises :class:`SettingsChanged` naming each difference when the folder holds outputs of
    other settings and ``overwrite`` is None. Call it holding :func:`output_lock`.
    """
    new = {k: _normal(v) for k, v in settings.items()}
    old_doc = read_settings(out)
    message = None
    if old_doc is not None and old_doc.get("command") != command:
        diffs = [f"command: {old_doc.get('command')} -> {command}"]
    elif old_doc is not None:
        diffs = differences(old_doc.get("settings", {}), new, may_grow, may_change)
    else:
        diffs = []
    if diffs and overwrite is None:
        raise SettingsChanged(
            f"{out} holds the outputs of a run with other settings ({'; '.join(diffs)}); a re-run would mix the "
            "two. Choose another --out, run with the earlier settings, or pass --overwrite move (keep the old "
            "outputs beside the folder) or --overwrite delete")
    if overwrite is not None and has_outputs(out):
        message = clear_outputs(out, overwrite)
    doc = {"command": command, "settings": new}
    from .imageio import atomic_write_json

    atomic_write_json(out / SETTINGS_NAME, doc, sort_keys=True)
    return message
