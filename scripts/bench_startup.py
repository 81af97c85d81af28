"""Start-up time of the ``s4edge`` command: ``--version`` and ``--help``, each run N times
in a fresh process (wall clock, median), against its target; and which heavy libraries
``--help`` imports (it should import none: commands load when they run).

    python scripts/bench_startup.py --runs 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGETS_S = {"--version": 0.3, "--help": 0.5}
HEAVY = ("fastapi", "uvicorn", "sqlalchemy", "psycopg", "lxml", "amqtt", "cv2", "onnxruntime", "scipy", "numpy")


def command() -> list[str]:
    """The console script of this interpreter's environment, as a user runs it."""
    script = Path(sys.executable).parent / "s4edge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "s4edge"]


def wall_s(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_imports(flag: str) -> list[str]:
    """Top-level packages of HEAVY that ``s4edge FLAG`` imports (python -X importtime)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "s4edge", flag], capture_output=True, text=True, check=True
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return sorted(h for h in HEAVY if h in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    argv = command()
    wall_s([*argv, "--version"])  # warm the page cache and the bytecode cache
    results = {}
    for flag, target in TARGETS_S.items():
        times = [wall_s([*argv, flag]) for _ in range(args.runs)]
        median = statistics.median(times)
        results[flag] = {
            "median_s": round(median, 4),
            "min_s": round(min(times), 4),
            "max_s": round(max(times), 4),
            "target_s": target,
            "ratio": round(median / target, 3),
        }
    report = {
        "command": " ".join(argv),
        "runs": args.runs,
        "results": results,
        "heavy_imported_by": {flag: heavy_imports(flag) for flag in TARGETS_S},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
