"""Write tests/slow_tier.txt: the tests of the fast tier that take too long for it, from measured durations.

    pytest -m "not slow" --durations=0 --durations-min=0.05 > durations.txt
    python tests/measure_tier.py durations.txt --budget 80

reads pytest's duration lines (setup + call + teardown per test), keeps the cheapest tests
whose summed time fits ``--budget`` CPU-seconds per core times the cores (``--cores``,
default 2, with ``--overhead`` seconds per worker for the start: importing JAX and the
package), and lists the rest, which ``tests/conftest.py`` then marks slow. Tests not in a
measurement (new ones) stay in the fast tier until the next one. Removing tests from the tier
moves compile time onto the ones left (a file's programs compile at their first use), so a
second pass, ``--add`` on a measurement of the tier as it then is, trims what moved.
"""

import argparse
import collections
import re
from pathlib import Path

#: Never moved: the direct tests of each solver's step (their point is to be in the edit-test loop).
KEEP = ("tests/test_solver_steps.py::",)
LINE = re.compile(r"^\s*([\d.]+)s (?:setup|call|teardown)\s+(\S.*)$")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("durations")
    parser.add_argument("--budget", type=float, default=80.0, help="wall seconds the fast tier may take")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--overhead", type=float, default=15.0, help="seconds per worker to start")
    parser.add_argument("--add", action="store_true", help="keep the tests slow_tier.txt lists already")
    args = parser.parse_args()
    seconds = collections.Counter()
    for line in Path(args.durations).read_text().splitlines():
        match = LINE.match(line)
        if match:
            seconds[match.group(2).strip()] += float(match.group(1))
    allowance = args.cores * (args.budget - args.overhead)
    fast, used = set(), 0.0
    for nodeid in [n for n in seconds if n.startswith(KEEP)]:
        fast.add(nodeid)
        used += seconds[nodeid]
    for nodeid, s in sorted(seconds.items(), key=lambda kv: kv[1]):
        if nodeid in fast:
            continue
        if used + s > allowance:
            break
        fast.add(nodeid)
        used += s
    slow = set(seconds) - fast
    listed = Path(__file__).with_name("slow_tier.txt")
    if args.add and listed.exists():  # a run of the fast tier as it is: add to the tests already moved
        slow |= {line.strip() for line in listed.read_text().splitlines()
                 if line.strip() and line[0] != "#" and not line.startswith(KEEP)}
    slow = sorted(slow)
    header = (f"# written by tests/measure_tier.py from {Path(args.durations).name}: {len(slow)} tests over the fast "
              f"tier's {args.budget:.0f} s on {args.cores} cores ({used:.0f} CPU-s kept in it)\n")
    Path(__file__).with_name("slow_tier.txt").write_text(header + "\n".join(slow) + "\n")
    print(header.strip())


if __name__ == "__main__":
    main()
