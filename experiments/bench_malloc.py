"""What ``retain_freed_memory()`` saves: one pixel extremal-perturbation run (two targets on
the bundled "chelsea" photo, the pointing game's four areas and settings) in a fresh process
with and without it, one torch thread each. Prints wall, user and system seconds.

    python experiments/bench_malloc.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
from chanattr import load_model, prepare_image, retain_freed_memory
from chanattr.extremal import Schedule
from chanattr.pixel import extremal_perturbation
if sys.argv[1] == "1":
    retain_freed_memory()
lm = load_model()
x = prepare_image("chelsea", lm.preprocessing).input[None].expand(2, -1, -1, -1)
schedule = Schedule(search_side=7, iterations=int(sys.argv[2]), search_parts=2)
r0, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
extremal_perturbation(lm.model, x, [281, 285], (0.018, 0.025, 0.05, 0.1), schedule=schedule, progress=False)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - start, "user": r1.ru_utime - r0.ru_utime,
                  "system": r1.ru_stime - r0.ru_stime}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    args = ap.parse_args(argv)
    print("| allocator | wall s | user s | system s |\n|---|---|---|---|")
    for flag, name in (("0", "glibc defaults"), ("1", "retain_freed_memory()")):
        out = subprocess.run([sys.executable, "-c", CHILD, flag, str(args.iterations)], check=True,
                             capture_output=True, text=True).stdout
        t = json.loads(out.strip().splitlines()[-1])
        print(f"| {name} | {t['wall']:.1f} | {t['user']:.1f} | {t['system']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
