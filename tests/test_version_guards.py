"""Every version constant that keys a cache or a format guards named code: when that code changes
and the constant does not, this test fails and names the constant to bump (ARCHITECTURE.md).

The fingerprint of a guarded object is the SHA-256 of its syntax tree without docstrings
(comments, formatting and documentation do not count). After a deliberate change:
- if the outputs change, bump the constant named in the failure;
- then record the new fingerprints: ``.venv/bin/python tests/test_version_guards.py --update``.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import sys
import textwrap
from pathlib import Path

RECORD = Path(__file__).with_name("version_guards.json")

# constant -> the code whose change changes what the constant keys
GUARDS: dict[str, list[str]] = {
    "rssn.foreground.ALGORITHM_VERSION": ["rssn.closed_form_band", "rssn.foreground.estimate_foreground"],
    "rssn.denoise.VERSION": ["rssn.denoise.bm3d_denoise", "rssn.denoise.bm3d_profile", "rssn.denoise.estimate_noise_sigma"],
    "rssn.denoise.FG_SIGMA_VERSION": ["rssn.denoise.foreground_noise_sigma", "rssn.denoise.clipped_patches",
                                      "rssn.measures.channel_noise_sigma"],
    "rssn.cache.CACHE_VERSION": ["rssn.cache.content_key", "rssn.cache.ImageCache"],
    "rssn.audit.MEASURES_VERSION": ["rssn.measures"],
    "rssn.card.CARD_VERSION": ["rssn.card"],
    "gfm.checkpoint.CHECKPOINT_FORMAT": ["gfm.model.ModelConfig", "gfm.model.GFM", "gfm.checkpoint.load_checkpoint"],
    "gfm.store.STORE_VERSION": ["gfm.store.decode_sample", "gfm.store._PlaneWriter", "gfm.store.pack",
                                "gfm.store.TrainingStore"],
    "rssn.planes.PLANES_VERSION": ["rssn.planes", "rssn.compose.ForegroundState", "rssn.compose.read_background",
                                   "rssn.imageio.decode_size", "rssn.imageio._draft_to_cover"],
    "gfm.data.TARGETS_VERSION": ["gfm.data.target_plane", "gfm.losses.glance_targets"],
    "gfm.export.ONNX_FORMAT_VERSION": ["gfm.export._Exported", "gfm.export.export_onnx", "gfm.export.output_names",
                                       "gfm.export.SizeFreeAdaptiveAvgPool2d"],
}


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def fingerprint(dotted: str) -> str:
    source = textwrap.dedent(inspect.getsource(_resolve(dotted)))
    return hashlib.sha256(ast.dump(_strip_docstrings(ast.parse(source))).encode()).hexdigest()[:16]


def current() -> dict[str, dict]:
    return {const: {"value": repr(_resolve(const)), "code": {d: fingerprint(d) for d in deps}}
            for const, deps in GUARDS.items()}


def test_every_guarded_change_bumps_its_version_constant():
    recorded = json.loads(RECORD.read_text())
    now = current()
    problems = []
    for const, state in now.items():
        old = recorded.get(const)
        if old is None:
            problems.append(f"{const} is not recorded yet")
            continue
        changed = [d for d, h in state["code"].items() if old["code"].get(d) != h]
        if changed and state["value"] == old["value"]:
            problems.append(f"{', '.join(changed)} changed but {const} is still {state['value']}: bump it if the "
                            f"outputs it keys change")
        elif changed or state["value"] != old["value"]:
            problems.append(f"{const}: {state['value']} (was {old['value']}), new fingerprints not recorded")
    assert not problems, "\n".join(problems) + \
        "\nthen record the fingerprints: .venv/bin/python tests/test_version_guards.py --update"


def test_a_changed_function_changes_its_fingerprint_and_a_docstring_does_not(tmp_path, monkeypatch):
    mod = tmp_path / "guard_probe.py"
    mod.write_text('def f(x):\n    """One."""\n    return x + 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    a = fingerprint("guard_probe.f")
    for text, same in (('def f(x):\n    """Two, longer."""\n    # a comment\n    return x + 1\n', True),
                       ('def f(x):\n    """One."""\n    return x + 2\n', False)):
        mod.write_text(text)
        sys.modules.pop("guard_probe", None)
        assert (fingerprint("guard_probe.f") == a) is same


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    RECORD.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"recorded {RECORD}")
