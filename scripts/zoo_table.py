"""Print the torchvision zoo table (issue 22) as markdown: per classification architecture at random init, the
quantized layers, the share of parameters held by quantized weights, the weight bits exposed to faults, whether the
smoke test (tests/test_torchvision_zoo.py: quantize, calibrate, one fault trial, forward and backward) passes, and
its seconds.

    PYTHONPATH=src python scripts/zoo_table.py [--skip vit_h_14,regnet_y_128gf] [names ...]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_torchvision_zoo import architectures, smoke  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="architectures (default: all)")
    ap.add_argument("--skip", default="vit_h_14,regnet_y_128gf", help="comma-separated architectures to leave out")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    names = [n for n in (args.names or architectures()) if n not in skip]
    print("| architecture | input | quantized layers | params (M) | covered (%) | bits exposed | flips at 1e-3 | output changed | pass | seconds | left float |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        t = time.perf_counter()
        try:
            r = smoke(name)
        except Exception as e:  # noqa: BLE001 - a row says why it failed
            traceback.print_exc(file=sys.stderr)
            print(f"| {name} | | | | | | | | FAIL: {type(e).__name__}: {str(e)[:80]} | {time.perf_counter() - t:.1f} | |",
                  flush=True)
            continue
        kinds = sorted({f.split(" ", 1)[1].strip("()") for f in r["float"]})
        print(f"| {name} | {r['side']} | {r['layers']} | {r['params'] / 1e6:.2f} | {100 * r['covered'] / r['params']:.2f}"
              f" | {r['bits']:,} | {r['flips']:,} | {'yes' if r['changed'] else 'no'} | yes | {r['seconds']:.1f} | {len(r['float'])} ({', '.join(kinds)}) |" if kinds else
              f"| {name} | {r['side']} | {r['layers']} | {r['params'] / 1e6:.2f} | {100 * r['covered'] / r['params']:.2f}"
              f" | {r['bits']:,} | {r['flips']:,} | {'yes' if r['changed'] else 'no'} | yes | {r['seconds']:.1f} | 0 |", flush=True)
    if skip:
        print(f"\nleft out (too big for this machine's time): {', '.join(sorted(skip))}")


if __name__ == "__main__":
    main()
