"""CPU contention: ``emoreg eval --suites probes`` alone and next to a busy process, before and after the thread rule.

Runs the probes suite (generation plus activation readings) on the embedded default model as a fresh
``emoreg eval`` process four times and prints the wall time of each and the ratios between them:

* ``alone, one thread per core``: torch's own default on an idle machine (the reference);
* ``busy, one thread per core``: the same next to a process that keeps one core busy ("before": what torch's
  default gives under contention);
* ``busy, emoreg default``: next to the busy process with no ``--threads`` (``emoreg.utils.threads``: the usable
  cores less the ones other processes keep busy at start; "after");
* ``alone, emoreg default``: what the rule costs on an idle machine.

Run it on an otherwise idle machine (nothing else may run beside it: the busy process is the only contention
it means to measure): ``python benchmarks/cpu_contention.py [--limit 4]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

BUSY_LOOP = "while True: pass"


@contextmanager
def busy_core():
    """A child process that keeps one core busy until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)  # let it be scheduled before the measured process starts
        yield
    finally:
        proc.kill()
        proc.wait()


def run_probes(limit: int, threads: int | None, out_root: str, label: str) -> float:
    """Wall seconds of one ``emoreg eval default --suites probes`` process (model load included)."""
    cmd = [sys.executable, "-m", "emoreg.cli.main", "eval", "default", "--suites", "probes", "--limit", str(limit),
           "--no-cache", "--no-progress", "--out", os.path.join(out_root, label)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("EMOREG_THREADS", "OMP_NUM_THREADS")}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{label}: emoreg eval failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    chosen = [line for line in done.stderr.splitlines() if "torch thread" in line]
    print(f"  {label:<32} {wall:7.1f} s   {chosen[-1].split('emoreg: ')[-1] if chosen else ''}", flush=True)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4, help="probes items per data part (default: %(default)s)")
    args = parser.parse_args()
    from emoreg.utils.threads import usable_cores

    cores = usable_cores()
    print(f"{cores} usable core(s); probes suite, --limit {args.limit}, embedded default model")
    with tempfile.TemporaryDirectory() as tmp:
        run_probes(args.limit, cores, tmp, "warm-up (not counted)")
        alone_cores = run_probes(args.limit, cores, tmp, "alone, one thread per core")
        alone_auto = run_probes(args.limit, None, tmp, "alone, emoreg default")
        with busy_core():
            busy_cores = run_probes(args.limit, cores, tmp, "busy, one thread per core")
            busy_auto = run_probes(args.limit, None, tmp, "busy, emoreg default")
    print()
    print("| configuration | wall (s) | vs alone, one thread per core |")
    print("|---|---|---|")
    rows = (("alone, one thread per core", alone_cores), ("alone, emoreg default", alone_auto),
            ("busy, one thread per core (before)", busy_cores), ("busy, emoreg default (after)", busy_auto))
    for label, wall in rows:
        print(f"| {label} | {wall:.1f} | {wall / alone_cores:.2f}x |")
    print(f"\nunder contention the emoreg default is {busy_cores / busy_auto:.2f}x faster than one thread per core")


if __name__ == "__main__":
    main()
