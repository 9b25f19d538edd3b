"""Shared fixtures: the real data beside the checkout, and small synthetic inputs."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GFM_SHARED_DATA", REPO.parent / "shared" / "data"))
SAMPLES = REPO / "samples"

# Keep the tests' foreground and BM3D cache out of the user's ~/.cache (subprocesses inherit it);
# removed when the test session ends.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="gfm-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)


def shared(sub: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    p = SHARED / sub
    if not p.is_dir():
        pytest.skip(f"real test data {p} is absent (it lives in ../shared/data beside the checkout)")
    return p


def run_cli(*args: str, timeout: float = 1200, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of our console commands in a subprocess (the way users run it); ``env`` adds variables.
    ``timeout`` guards against a hang only: no command here takes a tenth of it on an idle 2-core
    machine, but a loaded one slows torch's thread pools several-fold."""
    exe = Path(sys.executable).parent / args[0]
    full_env = {**os.environ, **env} if env else None
    proc = subprocess.run([str(exe), *args[1:]], capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules holding a slow test run first, each module's tests kept together (module fixtures
    are built once): with several test processes (``make test``) no long test is left for the
    end while the other process idles."""
    slow_modules = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module not in slow_modules)  # stable: the order within stays
