"""Licence names as crawl lists write them, and the `--licenses` / `--require-license` rule.

The paper kept only images from websites with open licences. A list may say "CC BY 4.0",
"cc-by-4.0", "https://creativecommons.org/licenses/by/4.0/" or "CC0": all are brought to one
form, ``family[-version]`` (``cc-by-4.0``, ``cc0-1.0``, ``pdm``), so that ``--licenses cc-by``
keeps every version of CC BY (and not CC BY-SA), and ``--licenses cc-by-4.0`` only that one.
"""
from __future__ import annotations

import re

_CC_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)(?:/(\d+(?:\.\d+)*))?")
_VERSION = re.compile(r"^(.*?)-(\d+(?:\.\d+)*)$")
_ALIASES = {"zero": "cc0", "cc-zero": "cc0", "mark": "pdm", "public-domain": "pdm", "publicdomain": "pdm", "pd": "pdm"}


def normalise_license(value: str) -> str:
    """One spelling per licence: lower case, words joined by '-', Creative Commons URLs decoded."""
    v = value.strip().lower()
    m = _CC_URL.search(v)
    if m:
        kind, code, version = m.groups()
        family = _ALIASES.get(code, code) if kind == "publicdomain" else f"cc-{code}"
        return f"{family}-{version}" if version else family
    v = re.sub(r"[\s_/]+", "-", v)
    v = re.sub(r"-+", "-", v).strip("-")
    v = v.replace("creative-commons", "cc")
    fam, version = split_license(v)
    fam = _ALIASES.get(fam, fam)
    return f"{fam}-{version}" if version else fam


def split_license(norm: str) -> tuple[str, str | None]:
    """'cc-by-4.0' -> ('cc-by', '4.0'); 'cc0' -> ('cc0', None)."""
    m = _VERSION.match(norm)
    return (m.group(1), m.group(2)) if m else (norm, None)


def parse_allowed(value: str) -> tuple[str, ...]:
    """--licenses cc0,cc-by,... as normalised names (sorted, unique)."""
    names = sorted({normalise_license(v) for v in value.split(",") if v.strip()})
    if not names:
        raise ValueError(f"--licenses {value!r}: give comma-separated licence names, e.g. cc0,cc-by,cc-by-sa")
    return tuple(names)


def license_rejection(license: str | None, require: bool, allowed: tuple[str, ...] | None) -> str | None:
    """The reason a source is not used under the licence rule, or None when it may be."""
    if not license:
        if require or allowed:
            return "no licence given (--require-license / --licenses need one)"
        return None
    if not allowed:
        return None
    norm = normalise_license(license)
    fam, _ = split_license(norm)
    for a in allowed:
        if norm == a or (split_license(a)[1] is None and fam == a):
            return None
    return f"licence {license!r} is not one of --licenses {','.join(allowed)}"
