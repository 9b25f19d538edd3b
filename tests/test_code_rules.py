"""The written rules of the code, checked: ARCHITECTURE.md's import rules (contracts in setup.cfg,
checked by import-linter), the lint rules in pyproject.toml (ruff) and the type hints (setup.cfg's
[mypy], checked by mypy)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: pip install -e '.[test]' installs it")
    return found


def test_imports_follow_architecture_md():
    """Every contract of setup.cfg's [importlinter] holds (which package may import which)."""
    p = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout


@pytest.mark.slow  # about 1-2 min with an empty cache (2-core machine); a few seconds once cached
def test_type_hints_hold(request, tmp_path_factory):
    """mypy with setup.cfg's [mypy] (rssn, bg20k, gfm, cli.py) finds nothing. Its cache lives in
    pytest's cache folder (.pytest_cache/d/mypy): reused between runs, apart from a developer's own
    .mypy_cache, and keyed by mypy on each file's contents and the options."""
    cache_plugin = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = cache_plugin.mkdir("mypy") if cache_plugin is not None else tmp_path_factory.mktemp("mypy")
    p = subprocess.run([_tool("mypy"), "--cache-dir", str(cache)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]


def test_lint_rules_hold():
    """ruff with pyproject.toml's rules (pycodestyle, pyflakes, bugbear, isort, pyupgrade at 120
    columns) finds nothing in the code, the tests and the benchmarks."""
    p = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
