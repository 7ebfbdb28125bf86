"""Data generation speed: examples/s for each task with helper images, and the tile renderer vs gymnasium.

    python benchmarks/bench_data.py [--n 600] [--levels 3-6]

For every task it times, in one run on this machine:
  * ``make_examples``  - problems drawn, rendered and laid out as mirage-cot rows (PIL input and helper images);
  * ``build_dataset``  - the same plus PNG encoding into a ``datasets.Dataset`` (what make_dataset.py writes).
Then it renders the same FrozenLake maps with the tile renderer and with a gymnasium environment per map (the
reference implementation) and prints the speed-up. Throughput is single-process.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

import numpy as np

import mirage_tasks
from mirage_tasks.vsp import random_map, render_array, render_with_gymnasium


def rate(fn, n: int) -> float:
    """Examples per second of ``fn()`` that produces ``n`` examples (best of two runs, after a warm-up)."""
    fn()  # warm caches (sprite tiles, imports) before timing
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="examples per measurement")
    parser.add_argument("--levels", default="3-6")
    args = parser.parse_args()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}"
    )
    print(f"{'task':<15}{'make_examples ex/s':>20}{'build_dataset ex/s':>20}")
    for task in mirage_tasks.TASKS:
        gen = rate(lambda t=task: mirage_tasks.make_examples(t, "mirage-cot", args.n, args.levels, seed=1), args.n)
        built = rate(lambda t=task: mirage_tasks.build_dataset(t, "mirage-cot", args.n, args.levels, seed=1), args.n)
        print(f"{task:<15}{gen:>20.0f}{built:>20.0f}")

    rng = random.Random(0)
    maps = [random_map(rng, side) for side in mirage_tasks.parse_levels(args.levels) for _ in range(50)]
    for m in maps[:3]:  # same pixels, or the ratio means nothing
        if not np.array_equal(render_array(m), render_with_gymnasium(m)):
            raise SystemExit(f"the tile renderer and gymnasium draw map {m} differently")
    fast = rate(lambda: [render_array(m) for m in maps], len(maps))
    slow = rate(lambda: [render_with_gymnasium(m) for m in maps], len(maps))
    print(
        f"map rendering: tiles {fast:.0f} maps/s, gymnasium env per map {slow:.0f} maps/s, speed-up {fast / slow:.1f}x"
    )


if __name__ == "__main__":
    main()
