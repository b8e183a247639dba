"""
Summarise a py-spy raw (collapsed) profile: the functions with the most
samples on top of the stack (self) and anywhere on it (total).

Run: C{python bench/profile_summary.py bench/results/LABEL.profile.txt [N]}.
"""

from __future__ import annotations

import collections
import sys


def main(path: str, count: int = 30) -> None:
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    with open(path) as profile:
        for line in profile:
            stack, _, number = line.rstrip().rpartition(" ")
            if not number.isdigit():
                continue
            n = int(number)
            samples += n
            frames = stack.split(";")
            own[_short(frames[-1])] += n
            for frame in {_short(f) for f in frames}:
                total[frame] += n
    print(f"{samples} samples")
    print("self:")
    for frame, n in own.most_common(count):
        print(f"  {100 * n / samples:5.1f}%  {frame}")
    print("total:")
    for frame, n in total.most_common(count):
        print(f"  {100 * n / samples:5.1f}%  {frame}")


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit("/", 1)[-1].split(":")[0]
    return f"{name} ({where})"


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
