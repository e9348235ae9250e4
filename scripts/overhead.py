#!/usr/bin/env python3
"""What a running CPU profile costs the demo, and how faithful it is, measured side by side
with Go's net/http/pprof (../shared/peers/go-counter) in the same run.

  scripts/overhead.py            the full run (about 20 minutes; progress is printed)
  scripts/overhead.py --quick    a few seconds per part: proves the script works end to end
  scripts/overhead.py --rounds N N alternations per overhead pair instead of 10
  scripts/overhead.py --parts "5 6"  only these parts (0 1 2 3 5 6 7 8 9; 3 covers 4; 8 only when asked)

Measures, printing a summary at the end (docs/performance.md quotes it):
 0. what diag costs while nobody profiles: the server's CPU time per request under wrk
    with diag mounted on the service's own listener and its trace layer installed (B,
    `--diag-listen main`) against no diag at all (A, `--diag-listen off
    --no-trace-layer --no-route-labels`; the demo's requests stay wrapped in
    diag::tasks::Traced), two processes of the same binary, alternated;
 1. overhead: the server's CPU time per request (from /proc/PID/stat) under wrk on `/`
    and on fixed-work `/work?n=`, with a CPU profile running (B) against none (A),
    alternating A and B; the median of the per-pair ratios B/A, with min and max, and
    throughput beside it; for the demo and for Go; and for the demo the same cost
    computed bottom-up: the profile's samples (its X-Diag-Samples header) times the
    cost of one (SAMPLE_US, default 2.83, from `cargo bench -p benches --bench cpu_sample`),
    plus the CPU time of diag's sampler thread (diag-sampler), over the process's CPU
    time while the profile ran (including the answer's symbolizing and encoding after
    the window, which is not counted as overhead: a thread pool's threads come and go,
    so it cannot be read per thread);
 2. fidelity: sampled CPU time (go tool pprof's "Total samples") over the CPU time the
    process used in the same window, at 99 Hz (Go: 100 Hz), under wrk on `/` plus 1, 2
    and 4 concurrent `/work` loops;
 3. the time from the end of a 1 s window to the last byte of the answer, cold (first
    profile of the process) and warm, with how many addresses each window brought that
    no earlier profile of the process had (symbolizing those is the work after the
    window): a `/work` load throughout, plus in each warm window a short load on one
    path of a rotating list, so that some windows bring new code and most bring none;
    the time per new address is the least-squares slope of time over new addresses;
 4. resident memory before the first profile, after it, and after many back-to-back ones;
 5. what jemalloc heap profiling costs: the same CPU per request, on `/`, `/work?n=` and
    the allocation-heavy `/churn`, with profiling active (B, the demo's default, samples
    unwound by diag's frame-pointer walker) against inactive (A,
    `_RJEM_MALLOC_CONF=prof_active:false`): two processes of the same binary,
    alternated; then `/churn` again with profiling active and jemalloc's own libgcc
    unwinder (B, `--heap-libgcc-unwinder`) against the same A, and with one sample per
    MiB instead of 512 KiB (B, `lg_prof_sample:20`, the documented cheaper setting);
    then what one heap sample costs: `/churn` with 100 times the blocks (about 156
    samples a request, so the request's own overhead hardly counts), B against A, the
    difference in CPU per request over the samples per request; then `/churn` active
    against inactive again with the blocking pool held to 8 threads in both
    (`--max-blocking-threads 8`), and that inactive process against A (what tokio's
    pool growing to a hundred threads, woken in turn, costs); and how long a heap dump
    takes and how big it is, 64 MiB held;
 6. what diag's trace layer costs while no /trace window is open: the same CPU per
    request with the layer installed and idle (B) against without it (A,
    `--no-trace-layer`), two processes of the same binary, alternated;
 7. what an open /trace window costs: the same CPU per request while a window spans the
    wrk run (B) against none (A), in one process, alternated;
 8. what the always-on CPU recorder costs (19 Hz, 10 minutes kept): the same CPU per
    request with it on (B, `--cpu-recorder 10m`) against off (A), two processes of the
    same binary, alternated (only with --parts 8). Every other part runs the demo with
    the recorder off (DEMO_CPU_RECORDER=off), so their figures keep their meaning.
 9. what diag's RouteLabels layer costs: the same CPU per request on `/` with the layer
    (B, the demo's default) against without it (A, `--no-route-labels`), two processes
    of the same binary, alternated.
Traffic goes to 127.0.0.1 only, bounded in time. Python 3's standard library, wrk, go and
cargo; wrk and go come from Debian's packages, installed when missing (as scripts/test.sh does).
"""

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_PARTS = "0 1 2 3 5 6 7 9"
# Rough minutes per part at 10 rounds of 3 s (parts 2 and 3 do not depend on rounds).
MINUTES = {"0": 2.2, "1": 4.5, "2": 1.2, "3": 2.0, "5": 9.5, "6": 2.2, "7": 3.0, "8": 2.2, "9": 1.2}
FIXED = {"2", "3"}
WORK_N = 100000
TCK = os.sysconf("SC_CLK_TCK")
# One sample of diag's engine (signal delivery and handler) at 32 frames, in µs:
# docs/performance.md, "The cost of one sample" (cargo bench -p benches --bench cpu_sample).
SAMPLE_US = os.environ.get("SAMPLE_US", "2.83")
# Paths loaded, one per warm window in turn, beside the /work load: new code now and then.
LAT_PATHS = ["/", "/hash?n=20000", "/churn?n=200&bytes=4096", "/metrics", "/sleep?ms=1", "/readyz"]
CHURN = "/churn?n=200&bytes=4096"
# Part 5's cost of one heap sample: 100 times CHURN's blocks, 80 MB a request, and the
# jemalloc samples that brings at the demo's lg_prof_sample:19 (one per 512 KiB).
CHURN_HEAVY_BLOCKS = 20000
CHURN_HEAVY = f"/churn?n={CHURN_HEAVY_BLOCKS}&bytes=4096"
# Part 5's processes with the blocking pool (where /churn runs) held to 8 threads.
POOL8 = ["--max-blocking-threads", "8"]
HEAVY_SAMPLES = CHURN_HEAVY_BLOCKS * 4096 / (1 << 19)
# Straight to 127.0.0.1, whatever http_proxy says.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Failure(Exception):
    """A run that cannot go on: its message is printed and the exit status is 1."""


# ---------------------------------------------------------------- the machine


def need_deb(command, package):
    """Installs Debian's PACKAGE when COMMAND is not on PATH (as scripts/lib.sh's need_deb)."""
    if shutil.which(command):
        return
    print(f"installing {package} (for {command})", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(sudo + ["apt-get", "update", "-qq"], env=env)
    run(sudo + ["apt-get", "install", "-y", "-qq", package], env=env, quiet=True)
    if not shutil.which(command):
        raise Failure(f"{package} did not provide {command}")


def run(argv, cwd=None, env=None, quiet=False):
    out = subprocess.DEVNULL if quiet else None
    if subprocess.run(argv, cwd=cwd, env=env, stdout=out).returncode != 0:
        raise Failure(f"failed: {' '.join(argv)}")


def free_ports(n):
    """N distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stat_fields(path):
    """The fields of a /proc stat file after the command name, so a name with spaces cannot
    shift them (the first is the state, field 3)."""
    with open(path) as f:
        return f.read().rsplit(") ", 1)[1].split()


def cpu_ticks(pid):
    """User plus system CPU ticks of a process."""
    f = stat_fields(f"/proc/{pid}/stat")
    return int(f[11]) + int(f[12])


def thread_ticks(pid, name):
    """CPU ticks of PID's threads named NAME."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            total += sum(int(x) for x in stat_fields(f"/proc/{pid}/task/{tid}/stat")[11:13])
        except (OSError, IndexError):
            pass  # the thread ended while read
    return total


def rss(pid):
    kib = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                kib[key] = int(rest.split()[0])
    a, f = kib.get("RssAnon", 0), kib.get("RssFile", 0)
    return f"{(a + f) // 1024} MiB ({a // 1024} anonymous + {f // 1024} file-backed)"


def machine():
    hz = ""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            hz = next((ln.split("=", 1)[1].strip() for ln in f if ln.startswith("CONFIG_HZ=")), "")
    except OSError:
        pass
    return f"{len(os.sched_getaffinity(0))} cores, {os.uname().release}, CONFIG_HZ {hz}"


# ---------------------------------------------------------------- HTTP and load


def fetch(url, method="GET", check=False, timeout=600):
    """(status, lower-cased headers, body); status 0 on a transport error. CHECK: a status
    other than 2xx, or no answer, stops the run."""
    try:
        with OPENER.open(urllib.request.Request(url, method=method), timeout=timeout) as res:
            status, headers, body = res.status, res.headers, res.read()
    except urllib.error.HTTPError as e:
        status, headers, body = e.code, e.headers, e.read()
    except (OSError, ValueError) as e:
        status, headers, body = 0, {}, str(e).encode()
    if check and not 200 <= status < 300:
        raise Failure(f"{method} {url}: {status or 'no answer'} {body[:200]!r}")
    return status, {k.lower(): v for k, v in headers.items()}, body


def fetch_to(path, url):
    """GETs URL into PATH; returns the seconds from the request to the last byte."""
    t0 = time.monotonic()
    _, _, body = fetch(url)
    took = time.monotonic() - t0
    with open(path, "wb") as f:
        f.write(body)
    return took


class Background(threading.Thread):
    """fn(*args) on a thread; join() returns its result (or raises its exception)."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.result, self.error = fn, args, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # handed to join()
            self.error = e

    def join(self, timeout=None):
        super().join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


def get_loop(url, seconds):
    """GETs URL again and again for SECONDS, on a thread, each on a new connection."""
    def loop():
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            fetch(url)
    return Background(loop)


def start_wrk(url, seconds, conns, quiet=True):
    out = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", url], stdout=out, text=True)


def wrk(url, seconds, conns):
    """Runs wrk; returns the requests it completed."""
    out = start_wrk(url, seconds, conns, quiet=False).communicate()[0]
    m = re.search(r"(\d+) requests in", out)
    return int(m.group(1)) if m else 0


def wait_http(url):
    for _ in range(200):
        if 200 <= fetch(url, timeout=5)[0] < 300:
            return
        time.sleep(0.05)
    raise Failure(f"no answer from {url}")


# ---------------------------------------------------------------- processes and pairs


def sanitized(name):
    return re.sub(r"[/ ?=&]", "_", name)


def round_line(name, r, rounds, a, b):
    return f"  {name:<26} round {r:2d}/{rounds}: A {a[0]:.3f} us/req, B {b[0]:.3f} us/req"


class Proc:
    """A server this run started: the demo or the Go peer."""

    def __init__(self, popen, port, diag):
        self.popen, self.pid, self.port, self.diag = popen, popen.pid, port, diag

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def diag_url(self, path):
        return f"http://127.0.0.1:{self.diag}{path}"


class Lab:
    """The servers of a run, the ports they take, and the measurements taken on them."""

    def __init__(self, out, s):
        self.out, self.s, self.procs = out, s, []
        self.ports = free_ports(40)  # every part's, all at once, so that none is given twice
        self.demo_port, self.demo_diag = self.port(), self.port()
        self.overheads, self.bottomup = {}, {}  # sanitized name -> (name, rows) / rows

    def port(self):
        # Past the first 40, a port free now (those given out are bound by their servers).
        return self.ports.pop() if self.ports else free_ports(1)[0]

    def start_demo(self, port=None, diag=None, conf="", *flags):
        """A release demo on PORT with diag on DIAG (a port, "main" or "off"); MALLOC_CONF
        for jemalloc; FLAGS after."""
        port = port or self.demo_port
        diag = diag or self.demo_diag
        listen = diag if diag in ("main", "off") else f"127.0.0.1:{diag}"
        argv = [os.path.join(ROOT, "target", "release", "demo"), "--listen", f"127.0.0.1:{port}",
                "--diag-listen", listen, *flags]
        env = dict(os.environ, _RJEM_MALLOC_CONF=conf, RUST_LOG="warn")
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_http(f"http://127.0.0.1:{port}/healthz")
        if p.poll() is not None:
            raise Failure(f"the demo exited: is port {port} or {diag} taken?")
        return Proc(p, port, diag if isinstance(diag, int) else port)

    def start_go(self):
        port = self.port()
        argv = [os.path.join(ROOT, "target", "go-counter"), "-addr", f"127.0.0.1:{port}"]
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_http(f"http://127.0.0.1:{port}/")
        if p.poll() is not None:
            raise Failure(f"the Go peer exited: is port {port} taken?")
        return Proc(p, port, port)

    def stop(self, *procs):
        for p in procs:
            p.popen.terminate()
        for p in procs:
            p.popen.wait()
            self.procs.remove(p.popen)

    def stop_all(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def measure(self, pid, url):
        """One wrk run against URL while PID's CPU is measured: (µs per request, requests/s)."""
        run_s = self.s["run_s"]
        c0 = cpu_ticks(pid)
        n = wrk(url, run_s, 32)
        c1 = cpu_ticks(pid)
        return round((c1 - c0) * 1e6 / TCK / max(n, 1), 3), round(n / run_s)

    def overhead(self, name, proc, url, profile_url):
        """Alternates A (idle) and B (a profile spanning the wrk run), in one process."""
        rounds = self.s["rounds"]
        rows, bottomup = [], []
        self.overheads[sanitized(name)] = (name, rows)
        self.bottomup[sanitized(name)] = bottomup
        for r in range(1, rounds + 1):
            a = self.measure(proc.pid, url)
            c0, d0 = cpu_ticks(proc.pid), thread_ticks(proc.pid, "diag-sampler")
            profile = Background(fetch, profile_url)
            time.sleep(0.5)
            b = self.measure(proc.pid, url)
            headers = profile.join()[1]
            c1, d1 = cpu_ticks(proc.pid), thread_ticks(proc.pid, "diag-sampler")
            rows.append(a + b)
            samples = headers.get("x-diag-samples")
            if samples:
                bottomup.append((float(samples), d1 - d0, c1 - c0))
            print(round_line(name, r, rounds, a, b), flush=True)

    def pair(self, name, a, b, path):
        """Two processes on PATH: each round measures both, A first in odd rounds and B
        first in even ones, so that whatever favours the first (or second) run of a round
        falls on each side equally."""
        rounds = self.s["rounds"]
        rows = []
        self.overheads[sanitized(name)] = (name, rows)
        for r in range(1, rounds + 1):
            if r % 2 == 1:
                ma = self.measure(a.pid, a.url(path))
                mb = self.measure(b.pid, b.url(path))
            else:
                mb = self.measure(b.pid, b.url(path))
                ma = self.measure(a.pid, a.url(path))
            rows.append(ma + mb)
            print(round_line(name, r, rounds, ma, mb), flush=True)


# ---------------------------------------------------------------- the parts


def part0(lab, s, res):
    print(f"\n== 0. diag mounted on the service's listener and idle (B) against no diag at all (A), "
          f"{s['rounds']} alternations", flush=True)
    a = lab.start_demo(lab.port(), "off", "", "--no-trace-layer", "--no-route-labels")
    b = lab.start_demo(lab.port(), "main")
    lab.pair("diag-idle demo /", a, b, "/")
    lab.pair(f"diag-idle demo /work?n={WORK_N}", a, b, f"/work?n={WORK_N}")
    lab.stop(a, b)


def part1(lab, s, demo, go):
    print(f"\n== 1. overhead of a running CPU profile ({s['rounds']} alternations of "
          f"{s['run_s']}s wrk runs)", flush=True)
    prof = f"/debug/pprof/profile?seconds={s['run_s'] + 2}"
    work = f"/work?n={WORK_N}"
    lab.overhead("demo /", demo, demo.url("/"), demo.diag_url(prof))
    lab.overhead(f"demo {work}", demo, demo.url(work), demo.diag_url(prof))
    lab.overhead("go /", go, go.url("/"), go.url(prof))
    lab.overhead(f"go {work}", go, go.url(work), go.url(prof))


def fidelity(lab, name, proc, profile_url, loops):
    """Sampled CPU over used CPU in one window, under wrk on / plus LOOPS /work loops."""
    fid_s = lab.s["fid_s"]
    path = os.path.join(lab.out, f"cpu-{name}-{loops}.pb.gz")
    load = start_wrk(proc.url("/"), fid_s + 3, 16)
    busy = [get_loop(proc.url("/work?n=20000000"), fid_s + 3) for _ in range(loops)]
    time.sleep(1)
    c0 = cpu_ticks(proc.pid)
    profile = Background(fetch_to, path, profile_url)
    time.sleep(fid_s)
    c1 = cpu_ticks(proc.pid)
    profile.join()
    load.wait()
    for t in busy:
        t.join()
    top = subprocess.run(["go", "tool", "pprof", "-top", path], capture_output=True, text=True)
    m = re.search(r"Total samples = ([0-9.]*)(m?s)", top.stdout)
    if not m:
        raise Failure(f"go tool pprof -top {path}: no total samples\n{top.stdout}{top.stderr}")
    sampled = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    used = (c1 - c0) / TCK
    row = (name, loops, f"{sampled:.2f}", f"{used:.2f}", f"{sampled / used:.3f}")
    print(f"  {name:<5} {loops} loops: sampled {row[2]} s of {row[3]} s used: {row[4]}", flush=True)
    return row


def part2(lab, s, demo, go):
    print(f"\n== 2. fidelity: sampled CPU / CPU used, {s['fid_s']}s windows, wrk on / plus N "
          "/work loops", flush=True)
    # Warm the demo's symbol cache so that its first answer's symbolization is not in a window.
    fetch(demo.diag_url("/debug/pprof/profile?seconds=1"))
    prof = f"/debug/pprof/profile?seconds={s['fid_s']}"
    rows = []
    for loops in s["fid_loads"]:
        rows.append(fidelity(lab, "demo", demo, demo.diag_url(prof), loops))
        rows.append(fidelity(lab, "go", go, go.url(prof), loops))
    return rows


def latency(lab, demo, i):
    """A 1 s profile saved as lat-I.pb.gz: the ms from the window's end to the last byte."""
    took = fetch_to(os.path.join(lab.out, f"lat-{i}.pb.gz"),
                    demo.diag_url("/debug/pprof/profile?seconds=1"))
    return round((took - 1) * 1000, 1)


def part3(lab, s, res):
    print("\n== 3 and 4. answer latency after the window, and resident memory (fresh demo process)",
          flush=True)
    demo = lab.start_demo()
    res["rss0"] = rss(demo.pid)
    # A little traffic, so that the profiles hold stacks to symbolize.
    load = start_wrk(demo.url(f"/work?n={WORK_N}"), 3 * s["b2b"] + 8, 4)
    res["cold"] = latency(lab, demo, 0)
    res["rss1"] = rss(demo.pid)
    res["warm"] = []
    for i in range(1, s["b2b"] + 1):
        path = LAT_PATHS[(i - 1) % len(LAT_PATHS)]
        loop = get_loop(demo.url(path), 2)
        res["warm"].append((latency(lab, demo, i), path))
        loop.join()
    res["rss2"] = rss(demo.pid)
    load.terminate()
    load.wait()
    lab.stop(demo)


def part5(lab, s, res):
    print(f"\n== 5. jemalloc heap profiling: active (B) against inactive (A), {s['rounds']} "
          "alternations", flush=True)
    a = lab.start_demo(lab.port(), lab.port(), "prof_active:false")
    b = lab.start_demo(lab.port(), lab.port())
    c = lab.start_demo(lab.port(), lab.port(), "", "--heap-libgcc-unwinder")
    d = lab.start_demo(lab.port(), lab.port(), "lg_prof_sample:20")
    for proc, want in [(b, "frame-pointer"), (c, "jemalloc"), (d, "frame-pointer")]:
        got = fetch(proc.diag_url("/debug/pprof/heap"))[1].get("x-diag-heap-unwinder", "")
        if got != want:
            raise Failure(f"the demo on {proc.diag} unwinds heap samples with '{got}', not {want}")
    lab.pair("heap-prof demo /", a, b, "/")
    lab.pair(f"heap-prof demo /work?n={WORK_N}", a, b, f"/work?n={WORK_N}")
    lab.pair("heap-prof demo /churn", a, b, CHURN)
    lab.pair("heap-prof-libgcc demo /churn", a, c, CHURN)
    lab.pair("heap-prof-lg20 demo /churn", a, d, CHURN)
    lab.pair("heap-prof demo /churn x100", a, b, CHURN_HEAVY)
    lab.stop(c, d)
    # The same two settings with the blocking pool held to 8 threads: what sampling costs
    # when /churn runs on a few threads kept warm, and what the pool's growth (tokio wakes
    # its idle threads in turn) costs the demo with sampling inactive.
    # g: tokio's pool, inactive, started with e and f, so that the pool pair compares
    # processes of the same age and history (a has run every load above).
    e = lab.start_demo(lab.port(), lab.port(), "prof_active:false", *POOL8)
    f = lab.start_demo(lab.port(), lab.port(), "", *POOL8)
    g = lab.start_demo(lab.port(), lab.port(), "prof_active:false")
    lab.pair("heap-prof-pool8 demo /churn", e, f, CHURN)
    lab.pair("pool8/pool512 inactive /churn", g, e, CHURN)
    lab.stop(e, f, g)
    fetch(b.url("/hold?mb=64"), method="POST", check=True)
    res["dumps"] = []
    for _ in range(s["dumps"]):
        t0 = time.monotonic()
        body = fetch(b.diag_url("/debug/pprof/heap"))[2]
        res["dumps"].append((time.monotonic() - t0, len(body)))
    res["dump_rss"] = rss(b.pid)
    lab.stop(a, b)


def trace_window(url, load_url, seconds, conns, delay=0.0):
    """The Chrome trace JSON of the /trace window at URL, with wrk on LOAD_URL beside it
    (started DELAY seconds after the window)."""
    window = Background(fetch, url, "GET", True)
    time.sleep(delay)
    wrk(load_url, seconds, conns)
    return json.loads(window.join()[2])


def part6(lab, s, res):
    print(f"\n== 6. diag's trace layer, installed and idle (B) against not installed (A), "
          f"{s['rounds']} alternations", flush=True)
    a = lab.start_demo(lab.port(), lab.port(), "", "--no-trace-layer")
    b = lab.start_demo(lab.port(), lab.port())
    lab.pair("trace-layer demo /", a, b, "/")
    lab.pair(f"trace-layer demo /work?n={WORK_N}", a, b, f"/work?n={WORK_N}")
    # One window, to show the layer records when asked.
    d = trace_window(b.diag_url("/debug/pprof/trace?seconds=1"), b.url("/"), 2, 4)
    res["trace_events"] = f"{len(d['traceEvents'])} {d['otherData']['events_dropped']}"
    lab.stop(a, b)


def part7(lab, s, res):
    print(f"\n== 7. a /trace window open (B) against none (A), one process, {s['rounds']} "
          "alternations", flush=True)
    w = lab.start_demo(lab.port(), lab.port())
    res["win_s"] = s["run_s"] + 2
    window = f"/debug/pprof/trace?seconds={res['win_s']}"
    work = f"/work?n={WORK_N}"
    lab.overhead("trace-window demo /", w, w.url("/"), w.diag_url(window))
    lab.overhead(f"trace-window demo {work}", w, w.url(work), w.diag_url(window))
    d = trace_window(w.diag_url(window), w.url("/"), s["run_s"], 32, delay=0.5)
    res["window_events"] = f"{d['otherData']['events_kept']} {d['otherData']['events_dropped']}"
    lab.stop(w)


def part8(lab, s, res):
    print(f"\n== 8. the CPU recorder on (B) against off (A), {s['rounds']} alternations", flush=True)
    a = lab.start_demo(lab.port(), lab.port())
    b = lab.start_demo(lab.port(), lab.port(), "", "--cpu-recorder", "10m")
    index = fetch(b.diag_url("/debug/pprof/"), check=True)[2].decode(errors="replace")
    if "The CPU recorder is on" not in index:
        raise Failure("part 8: the recorder is not on in B")
    lab.pair("recorder demo /", a, b, "/")
    lab.pair(f"recorder demo /work?n={WORK_N}", a, b, f"/work?n={WORK_N}")
    lab.stop(a, b)


def part9(lab, s, res):
    print(f"\n== 9. RouteLabels installed (B) against left out (A, --no-route-labels), "
          f"{s['rounds']} alternations", flush=True)
    a = lab.start_demo(lab.port(), lab.port(), "", "--no-route-labels")
    b = lab.start_demo(lab.port(), lab.port())
    lab.pair("route-labels demo /", a, b, "/")
    lab.stop(a, b)


def run_parts(lab, s):
    """Runs the parts asked for, in order; returns what the summary reads besides the pairs."""
    want, res = set(s["parts"]), {"fidelity": []}
    if "0" in want:
        part0(lab, s, res)
    if want & {"1", "2"}:
        demo, go = lab.start_demo(), lab.start_go()
        if "1" in want:
            part1(lab, s, demo, go)
        if "2" in want:
            res["fidelity"] = part2(lab, s, demo, go)
        lab.stop(demo, go)
    for part, fn in [("3", part3), ("5", part5), ("6", part6), ("7", part7), ("8", part8),
                     ("9", part9)]:
        if part in want:
            fn(lab, s, res)
    return res


# ---------------------------------------------------------------- the summary


def overhead_lines(lab):
    for key in sorted(lab.overheads):
        name, rows = lab.overheads[key]
        if not rows:
            continue
        ratios = sorted(b / a for a, _, b, _ in rows)
        us_a, us_b = statistics.median(r[0] for r in rows), statistics.median(r[2] for r in rows)
        rps_a, rps_b = statistics.median(r[1] for r in rows), statistics.median(r[3] for r in rows)
        print(f"  {name:<22} {statistics.median(ratios):.3f} [{ratios[0]:.3f}, {ratios[-1]:.3f}]  "
              f"{us_a:.2f} -> {us_b:.2f} us/req, {rps_a:.0f} -> {rps_b:.0f} req/s")
    for key in sorted(lab.bottomup):
        rows = lab.bottomup[key]
        if not rows:
            continue
        us = float(SAMPLE_US)
        samples = sum(r[0] for r in rows)
        diag_s, cpu_s = sum(r[1] for r in rows) / TCK, sum(r[2] for r in rows) / TCK
        cost = samples * us * 1e-6 + diag_s
        print(f"  bottom-up {key:<20} {1 + cost / max(cpu_s - cost, 1e-9):.4f}: {samples:.0f} "
              f"samples x {SAMPLE_US} us = {samples * us * 1e-3:.1f} ms + diag-sampler "
              f"{diag_s * 1e3:.0f} ms, of {cpu_s:.2f} s of CPU over {len(rows)} profiles")


def addresses(path):
    raw = subprocess.run(["go", "tool", "pprof", "-raw", path], capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+\d+: (0x[0-9a-f]+) ", raw, re.M))


def latency_lines(lab, res):
    first = addresses(os.path.join(lab.out, "lat-0.pb.gz"))
    seen = set(first)
    rows = []
    for i, (ms, path) in enumerate(res["warm"]):
        a = addresses(os.path.join(lab.out, f"lat-{i + 1}.pb.gz"))
        rows.append((ms, len(a - seen), len(a), path))
        seen |= a
    warm = sorted(r[0] for r in rows)
    print(f"end of window to last byte: cold (first profile, {len(first)} addresses, all new) "
          f"{res['cold']:.0f} ms; warm median {statistics.median(warm):.0f} ms "
          f"[{warm[0]:.0f}, {warm[-1]:.0f}] over {len(warm)}")
    n, t = [r[1] for r in rows], [r[0] for r in rows]
    if len(set(n)) > 1:
        mn, mt = statistics.mean(n), statistics.mean(t)
        slope = sum((x - mn) * (y - mt) for x, y in zip(n, t)) / sum((x - mn) ** 2 for x in n)
        print(f"  time per new address (slope over the warm windows): {slope:.3f} ms; "
              f"intercept {mt - slope * mn:.0f} ms")
    few = [r for r in rows if r[1] <= 200]
    if few:
        print(f"  windows bringing <= 200 new addresses: {len(few)}, slowest "
              f"{max(r[0] for r in few):.0f} ms")
    for ms, new, total, path in rows:
        print(f"    {ms:6.0f} ms  {new:4d} new of {total:4d} addresses  (load {path})")
    print(f"resident memory: {res['rss0']} before any profile; {res['rss1']} after the first; "
          f"{res['rss2']} after {lab.s['b2b']} more back to back")


def heap_sample_line(lab):
    """Part 5's cost of one heap sample, from the /churn x100 pair."""
    rows = lab.overheads.get(sanitized("heap-prof demo /churn x100"), (None, []))[1]
    if rows:
        per = sorted((b - a) / HEAVY_SAMPLES for a, _, b, _ in rows)
        print(f"one heap sample (/churn x100: B - A per request over {HEAVY_SAMPLES:.0f} samples): "
              f"median {statistics.median(per):.3f} us [{per[0]:.3f}, {per[-1]:.3f}]; "
              f"/churn's {HEAVY_SAMPLES / 100:.2f} a request at that: "
              f"+{statistics.median(per) * HEAVY_SAMPLES / 100:.2f} us")


def dump_line(res):
    ms = [t * 1000 for t, _ in res["dumps"]]
    kib = [b / 1024 for _, b in res["dumps"]]
    warm = sorted(ms[1:]) or ms
    print(f"heap dump with 64 MiB held (request to last byte): first {ms[0]:.0f} ms, then median "
          f"{statistics.median(warm):.0f} ms [{warm[0]:.0f}, {warm[-1]:.0f}] over {len(warm)}; "
          f"{statistics.median(kib):.0f} KiB gzipped; process resident after: {res['dump_rss']}")


def print_summary(lab, s, res):
    print("\n================ summary ================")
    print(f"machine: {machine()}")
    print("overhead (server CPU per request B / A: demo/go = a CPU profile running / none;")
    print("  diag-idle = diag mounted and idle / not mounted;")
    print("  heap-prof = jemalloc profiling active / inactive (heap-prof-libgcc: with jemalloc's "
          "own unwinder; -lg20: one sample per MiB; x100: 100 times /churn's blocks;")
    print("  -pool8: both with a blocking pool of 8 threads; pool8/pool512: 8 threads / tokio's "
          "512, sampling inactive);")
    print("  trace-layer = installed and idle / absent;")
    print("  trace-window = a /trace window open / none; recorder = the CPU recorder on / off;")
    print("  route-labels = RouteLabels on / off;")
    print(f"  median of {s['rounds']} pairs [min, max]; throughput A -> B):")
    overhead_lines(lab)
    if res["fidelity"]:
        print("fidelity (sampled CPU / CPU used):")
        for name, loops, sampled, used, ratio in res["fidelity"]:
            print(f"  {name:<5} {loops} /work loops + wrk on /: {ratio} ({sampled} s of {used} s)")
    if "3" in s["parts"]:
        latency_lines(lab, res)
    if res.get("dumps"):
        heap_sample_line(lab)
        dump_line(res)
    if "6" in s["parts"]:
        print(f"a 1 s /trace window under wrk on /: {res['trace_events']} (events, dropped)")
    if "7" in s["parts"]:
        print(f"a {res['win_s']} s /trace window under wrk -c32 on /: {res['window_events']} "
              "(events kept, dropped at the cap)")


# ---------------------------------------------------------------- the command line


def options():
    ap = argparse.ArgumentParser(
        prog="scripts/overhead.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="a few seconds per part")
    ap.add_argument("--rounds", type=int, help="alternations per overhead pair (10; --quick: 2)")
    ap.add_argument("--parts", default=ALL_PARTS, help=f'the parts to run, as "5 6" ({ALL_PARTS})')
    args = ap.parse_args()
    # "3 covers 4": part 4 (resident memory) is measured in part 3's process.
    args.parts = [{"4": "3"}.get(p, p) for p in args.parts.replace(",", " ").split()]
    args.parts = sorted(set(args.parts), key=args.parts.index)
    unknown = [p for p in args.parts if p not in MINUTES]
    if unknown:
        ap.error(f"unknown part {' '.join(unknown)}: the parts are {' '.join(sorted(MINUTES))}")
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds needs a number of at least 1")
    return args


def settings(args):
    """The sizes of a run: --quick's or the full run's, with --rounds on top."""
    if args.quick:
        s = dict(rounds=2, run_s=1, fid_s=2, fid_loads=[1], b2b=3, dumps=3)
    else:
        s = dict(rounds=10, run_s=3, fid_s=6, fid_loads=[1, 2, 4], b2b=20, dumps=20)
    if args.rounds is not None:
        s["rounds"] = args.rounds
    s["parts"] = args.parts
    return s


def estimate(s):
    total = sum(MINUTES[p] * (1 if p in FIXED else s["rounds"] / 10 * s["run_s"] / 3)
                for p in s["parts"])
    return max(1, round(total))


def build(peer):
    print("building the demo (release) and the Go peer...", flush=True)
    run(["cargo", "build", "--release", "-q", "-p", "demo"], cwd=ROOT)
    env = dict(os.environ, GOFLAGS="-mod=mod")
    run(["go", "build", "-o", os.path.join(ROOT, "target", "go-counter"), "."], cwd=peer, env=env)


def main():
    s = settings(options())
    for command, package in [("wrk", "wrk"), ("go", "golang-go")]:
        need_deb(command, package)
    peer = os.path.normpath(os.path.join(ROOT, "..", "shared", "peers", "go-counter"))
    if not os.path.isdir(peer):
        raise Failure(f"the Go peer is missing at {peer}")
    # The demo's recorder is on by default; the parts measure without it unless they say.
    os.environ.setdefault("DEMO_CPU_RECORDER", "off")
    print(f"parts {' '.join(s['parts'])}, {s['rounds']} rounds: about {estimate(s)} minutes "
          "after the build; progress below.", flush=True)
    build(peer)
    out = tempfile.mkdtemp(prefix="overhead-")
    lab = Lab(out, s)
    try:
        res = run_parts(lab, s)
        print_summary(lab, s, res)
    finally:
        lab.stop_all()
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    # A TERM (the test script stopped, a timeout) stops the servers this run started too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except Failure as e:
        sys.exit(str(e))
    except KeyboardInterrupt:
        sys.exit(130)
