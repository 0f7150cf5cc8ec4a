"""Bundle a few held-out drawings per class (the test split of a prepared cache) as one ndjson.gz.

    python scripts/bundle_heldout.py --cache cache/w1k-stroke3 \
        --data ../shared/data/quickdraw/wide1k/simplified --per-class 5 \
        --out src/doodle_rnn/bundled/quickdraw/heldout.ndjson.gz

Why: CI has no `../shared`, yet the shipped `quickdraw` model must be checked on drawings it never saw.
The drawings are the original records (every field kept), chosen by key_id from the cache's test split,
the first `per-class` of each class in file order, so a rerun picks the same ones.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import orjson

from doodle_rnn.data.cache import DoodleCache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="the prepared cache whose test split is held out")
    ap.add_argument("--data", required=True, help="folder of <word>.ndjson(.gz) the cache was prepared from")
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cache = DoodleCache(args.cache)
    test = set(cache.key_ids[cache.split_indices("test")].astype(str).tolist())
    files = sorted(p for p in Path(args.data).iterdir() if p.name.endswith((".ndjson", ".ndjson.gz")))
    lines: list[bytes] = []
    seen: set[str] = set()  # identical drawings share a key_id; keep one (as `doodle prepare` does)
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        kept = 0
        with opener(path, "rb") as fh:
            for line in fh:
                key = orjson.loads(line)["key_id"]
                if key in test and key not in seen:
                    seen.add(key)
                    lines.append(line.rstrip(b"\n"))
                    kept += 1
                    if kept == args.per_class:
                        break
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(out, "wb", mtime=0) as fh:
        fh.write(b"\n".join(lines) + b"\n")
    print(
        f"wrote {out}: {len(lines)} held-out drawings of {len(files)} classes ({out.stat().st_size / 1e3:.0f} kB)"
    )


if __name__ == "__main__":
    main()
