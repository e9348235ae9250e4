#!/usr/bin/env python3
"""What jemalloc heap sampling costs the demo's allocation-heavy `/churn`, with tokio's
blocking pool as it grows by default and held to a few threads: many rounds of the one
pair that overhead.py's part 5 measures among many, for a tighter median.

  scripts/churn_ab.py                       24 rounds of 2 s, the pool held to 8 threads
  scripts/churn_ab.py --rounds 40 --pool 32
  scripts/churn_ab.py --concurrent          A and B loaded at the same time, not in turn

Four processes of the release demo (`cargo build --release -p demo` first, quick when
nothing changed): A and B as in part 5 (`_RJEM_MALLOC_CONF=prof_active:false` against the demo's
default, sampling active), and the same two with `--max-blocking-threads POOL`. Each round
runs `wrk -t1 -c32` on `/churn?n=200&bytes=4096` against each process in a rotating
order (reversed every four rounds), the server's CPU time per request from
/proc/PID/stat. With --concurrent, each round loads A and B at once (`-c16` each), so
that whatever the machine does during a round falls on both; the pool pair is left out.
Prints each round and, per pair, the median of the ratios B/A with [min, max] and a 95 %
bootstrap interval of the median. Traffic goes to 127.0.0.1 only, bounded in time.
"""

import argparse
import os
import random
import statistics
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead as o  # noqa: E402


def interval(ratios):
    """A 95 % bootstrap interval of the median of RATIOS (fixed seed: reruns agree)."""
    rng = random.Random(7)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(4000))
    return meds[100], meds[3899]


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def report(name, rows, ia, ib, procs):
    ratios = [r[ib] / r[ia] for r in rows]
    lo, hi = interval(ratios)
    print(f"{name}: B/A median {statistics.median(ratios):.4f} [{min(ratios):.3f}, "
          f"{max(ratios):.3f}], 95 % interval of the median [{lo:.4f}, {hi:.4f}]; "
          f"us per request A {statistics.median(r[ia] for r in rows):.2f}, "
          f"B {statistics.median(r[ib] for r in rows):.2f}; pairs above 1.02: "
          f"{sum(x > 1.02 for x in ratios)} of {len(ratios)}; threads now "
          f"{threads(procs[ia].pid)}, {threads(procs[ib].pid)}", flush=True)


def main():
    ap = argparse.ArgumentParser(prog="scripts/churn_ab.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=24, help="rounds (24)")
    ap.add_argument("--seconds", type=int, default=2, help="seconds of wrk per run (2)")
    ap.add_argument("--pool", type=int, default=8, help="the held pool's threads (8)")
    ap.add_argument("--concurrent", action="store_true", help="load A and B at once")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds < 1 or not 1 <= args.pool <= 1024:
        ap.error("--rounds and --seconds need at least 1; --pool runs from 1 to 1024")
    o.need_deb("wrk", "wrk")
    # Built every time (quick when nothing changed): an old binary may lack the flag.
    o.run(["cargo", "build", "--release", "-q", "-p", "demo"], cwd=o.ROOT)
    os.environ["DEMO_CPU_RECORDER"] = "off"
    lab = o.Lab("/tmp", dict(rounds=args.rounds, run_s=args.seconds))
    pool = ["--max-blocking-threads", str(args.pool)]
    try:
        procs = [lab.start_demo(lab.port(), lab.port(), "prof_active:false"),
                 lab.start_demo(lab.port(), lab.port(), "")]
        if not args.concurrent:
            procs += [lab.start_demo(lab.port(), lab.port(), "prof_active:false", *pool),
                      lab.start_demo(lab.port(), lab.port(), "", *pool)]
        rows = []
        for r in range(args.rounds):
            if args.concurrent:
                done, c0 = {}, [o.cpu_ticks(p.pid) for p in procs]
                loads = [threading.Thread(target=lambda i=i, p=p: done.__setitem__(
                    i, o.wrk(p.url(o.CHURN), args.seconds, 16))) for i, p in enumerate(procs)]
                for t in loads:
                    t.start()
                for t in loads:
                    t.join()
                row = [(o.cpu_ticks(p.pid) - c0[i]) * 1e6 / o.TCK / max(done[i], 1)
                       for i, p in enumerate(procs)]
            else:
                order = list(range(r % 4, 4)) + list(range(r % 4))
                if r % 8 >= 4:
                    order.reverse()
                row = [0.0] * 4
                for i in order:
                    # overhead.py's measure: wrk -c32 for run_s, server CPU per request.
                    row[i] = lab.measure(procs[i].pid, procs[i].url(o.CHURN))[0]
            rows.append(row)
            print(f"round {r + 1}/{args.rounds}: us per request " +
                  " ".join(f"{x:.2f}" for x in row), flush=True)
        report("tokio's pool (512)" + (", A and B at once" if args.concurrent else ""),
               rows, 0, 1, procs)
        if not args.concurrent:
            report(f"pool held to {args.pool}", rows, 2, 3, procs)
            report(f"held pool / tokio's, sampling inactive (B: {args.pool}, A: 512)",
                   rows, 0, 2, procs)
    finally:
        lab.stop_all()


if __name__ == "__main__":
    try:
        main()
    except o.Failure as e:
        sys.exit(str(e))
