"""Break the code the way each invariant forbids and check that the suite notices.

Each `Mutation` replaces one exact snippet of production code, runs the tests named for it, and
expects at least one of them to FAIL; then the file is restored (also on Ctrl-C). A mutation whose
snippet is not found is itself a failure (the code moved: update the mutation, do not drop it).

    python tests/mutations.py                 # all mutations
    python tests/mutations.py -k chunk        # those whose name contains "chunk"
    python tests/mutations.py --list

New invariants (store atomicity, seam-free polygons, idempotent updates, ...) add their mutations to
MUTATIONS in the same form.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """One deliberate defect: in `path`, `old` becomes `new`; some test in `tests` must fail."""

    name: str
    invariant: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root


MUTATIONS: list[Mutation] = [
    # entries are added by each invariant's tests; see the module docstring
]


def run_one(m: Mutation, timeout: float = 900.0) -> tuple[bool, str]:
    """(caught, detail): apply the mutation, run its tests, restore the file."""
    path = ROOT / m.path
    original = path.read_text()
    n = original.count(m.old)
    if n != 1:
        return False, f"snippet found {n} times in {m.path} (expected exactly once)"
    try:
        path.write_text(original.replace(m.old, m.new, 1))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        dt = time.perf_counter() - t0
    finally:
        path.write_text(original)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    # exit code 1 = tests failed; 0 = all passed (mutant survived); others = collection/usage errors
    return proc.returncode == 1, f"pytest rc={proc.returncode} in {dt:.0f} s: {tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only mutations whose name contains this")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.invariant:30s} {m.path} -> {' '.join(m.tests)}")
        return 0
    survived = []
    for m in chosen:
        caught, detail = run_one(m)
        print(f"{'caught  ' if caught else 'SURVIVED'} {m.name}: {detail}", flush=True)
        if not caught:
            survived.append(m.name)
    print(f"{len(chosen) - len(survived)}/{len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
