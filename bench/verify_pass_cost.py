"""What a verification pass costs: one cached backbone step over N new rows, as a ratio to a stock 1-row step.

Speculative decoding pays one pass of ``1 + drafts`` rows per step; this is the break-even the drafts must beat
(tokens per pass > cost ratio).  Two linear-layer paths are timed side by side: PyTorch's own (``stock``) and
:mod:`mot.experts.skinny` (``skinny``, what verified multi-token decoding uses on the CPU).  Each width and
path is timed on the same prefix, interleaved, median of ``--reps``.  Writes
``bench/results/verify_pass_cost.json``.

    python bench/verify_pass_cost.py [--model smollm2-135m] [--threads 2] [--prefix 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "verify_pass_cost.json"
PATHS = ("stock", "skinny")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefix", type=int, default=200, help="tokens already in the KV cache")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8, 16, 32])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--results", default=str(RESULTS), help="where to write the JSON results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import DynamicCache

    from mot.experts import skinny
    from mot.experts.resolve import resolve_expert

    backbone, _ = resolve_expert(args.model, dtype=torch.float32)
    skinny.install(backbone)
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(100, 20000, (1, args.prefix), generator=generator)
    with torch.no_grad():
        cache = backbone(input_ids=prefix, past_key_values=DynamicCache(config=backbone.config),
                         use_cache=True).past_key_values
        times: dict[tuple[str, int], list[float]] = {(p, r): [] for p in PATHS for r in args.rows}
        for _ in range(args.reps):
            for path in PATHS:  # interleaved, so drifting load hits every path and width alike
                for rows in args.rows:
                    feed = torch.randint(100, 20000, (1, rows), generator=generator)
                    with skinny.skinny_rows(path == "skinny"):
                        start = time.perf_counter()
                        backbone(input_ids=feed, past_key_values=cache, use_cache=True)
                        times[path, rows].append(time.perf_counter() - start)
                    cache.crop(-rows)
    one = statistics.median(times["stock", args.rows[0]])
    result = {
        "model": args.model, "threads": args.threads, "prefix": args.prefix, "dtype": "float32",
        "stock_1_row_ms": one * 1e3,
        **{f"median_ms_{p}": {str(r): statistics.median(times[p, r]) * 1e3 for r in args.rows} for p in PATHS},
        **{f"ratio_to_stock_1_row_{p}": {str(r): statistics.median(times[p, r]) / one for r in args.rows}
           for p in PATHS},
        "command": f"python bench/verify_pass_cost.py --model {args.model} --threads {args.threads} "
                   f"--prefix {args.prefix} --reps {args.reps}"
                   + (f" --rows {' '.join(map(str, args.rows))}" if args.rows != parser.get_default("rows") else "")
                   + (f" --results {args.results}" if args.results != str(RESULTS) else ""),
    }
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_name(results.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(results)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
