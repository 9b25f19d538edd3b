"""What provenance adds to the end of an `rssn compose` run: attribution of every record, the
per-composite ATTRIBUTION.csv and the dataset card, for a manifest of N synthetic records.

    python benchmarks/provenance.py [N]     # default 100000
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rssn.card import write_card  # noqa: E402
from rssn.compose import ComposeConfig  # noqa: E402
from rssn.provenance import Attribution, Provenance, refresh, write_composite_attribution  # noqa: E402


class Records(dict):
    """The part of Manifest that refresh uses, in memory (no disk: only provenance is timed)."""

    def __iter__(self):
        return iter(self.values())

    def replace(self, rec):
        self[rec["key"]] = rec


def main(n: int = 100_000) -> None:
    n_bg, k = 20_000, 5
    lic = ["CC BY 4.0", "CC0", "", "CC BY-SA 2.0"]
    prov = Provenance({f"b{i:05d}": Attribution(f"b{i:05d}", f"https://x.org/{i}.jpg", lic[i % 4], f"A{i}", "https://x.org")
                       for i in range(n_bg)}, {})
    recs = Records()
    for j in range(n):
        cid = f"f{j // k:06d}_{j % k:03d}"
        recs[f"composite:{cid}"] = {
            "key": f"composite:{cid}", "type": "composite", "id": cid,
            "fg": {"stem": f"f{j // k:06d}", "kind": "photo", "size": [1920, 1080]},
            "bg": {"path": f"/data/bg20k/train/b{(j * 7919) % n_bg:05d}.jpg", "slot": j % k},
            "ops": [{"op": "foreground", "method": "cf"}, {"op": "box_blur", "target": "bg", "kernel": 30},
                    {"op": "blend"}],
            "outputs": {}}
    with tempfile.TemporaryDirectory() as d:
        cfg = ComposeConfig(fg_dir=Path(d), bg_dir=Path(d), out_dir=Path(d))
        t = time.perf_counter()
        refresh(recs, prov)
        t1 = time.perf_counter()
        write_composite_attribution(Path(d) / "ATTRIBUTION.csv", recs)
        t2 = time.perf_counter()
        write_card(cfg, recs, prov)
        t3 = time.perf_counter()
    print(f"{n} records: attribution {t1 - t:.2f} s, ATTRIBUTION.csv {t2 - t1:.2f} s, card {t3 - t2:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
