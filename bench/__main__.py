"""Run the benchmarks: `python -m bench [name ...]` (names: the bench_*.py files without prefix).

Each benchmark measures the product and its baseline side by side in one run and prints ratios.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    available = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    names = argv or available
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    rc = 0
    for name in names:
        print(f"\n=== bench {name} ===", flush=True)
        rc |= subprocess.run([sys.executable, "-m", f"bench.bench_{name}"], cwd=HERE.parent).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
