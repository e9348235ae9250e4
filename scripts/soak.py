#!/usr/bin/env python3
"""Replays the floods of the attack in issue 12 against the release demo, in bounded time,
and asserts what the process holds afterwards: memory (RssAnon + RssShmem, sampled every
100 ms), threads, and a shutdown that completes within its timeout.

    scripts/soak.py [--quick] [--parts "trace symbol conns hold methods dumps cpu"] [--bin PATH]

Every request goes to 127.0.0.1 on ports the demo picked itself. --quick (the test
script's setting) runs each part at a tenth to a half of its full size. Exit status 1 names
the part and the bound it broke.
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAILURES = []


def proc_status(pid):
    """The first word of each field of /proc/PID/status (sizes are in kB)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            fields[key] = rest.split()[0] if rest.split() else "0"
    return fields


def anon_mib(pid):
    """RssAnon + RssShmem of pid, in MiB."""
    fields = proc_status(pid)
    return (int(fields.get("RssAnon", 0)) + int(fields.get("RssShmem", 0))) / 1024.0


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def threads_settle(pid, at_most, within=30):
    """The thread count once it is at most `at_most`, or after `within` s: tokio's idle
    blocking threads end 10 s after their last task, later on a loaded machine."""
    deadline = time.time() + within
    n = threads(pid)
    while n > at_most and time.time() < deadline:
        time.sleep(0.2)
        n = threads(pid)
    return n


class Sampler:
    """Samples anon_mib(pid) every 100 ms until stopped."""

    def __init__(self, pid):
        self.pid, self.readings, self.running = pid, [], True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                self.readings.append(anon_mib(self.pid))
            except OSError:
                return
            time.sleep(0.1)

    def stop(self):
        self.running = False
        self.thread.join()
        return max(self.readings) if self.readings else 0.0


class Demo:
    """The release demo on free loopback ports, with JSON logs."""

    def __init__(self, binary, args=(), prefix=()):
        env = dict(os.environ, DEMO_LISTEN="127.0.0.1:0", DEMO_DIAG_LISTEN="127.0.0.1:0",
                   DEMO_LOG_FORMAT="json", RUST_LOG="info")
        env.pop("DIAG_TOKEN", None)
        self.proc = subprocess.Popen([*prefix, binary, *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.logs = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"the demo exited before listening: {''.join(self.logs)}")
            self.logs.append(line)
            if '"listening"' in line:
                rec = json.loads(line)
                fields = rec.get("fields", rec)
                self.addr = fields["addr"]
                self.diag = fields["diag"].split("//")[1].split("/")[0]
                break
        threading.Thread(target=self.drain, daemon=True).start()
        self.pid = self.proc.pid

    def drain(self):
        for line in self.proc.stdout:
            self.logs.append(line)

    def url(self, path):
        return f"http://{self.addr}{path}"

    def diag_url(self, path):
        return f"http://{self.diag}{path}"

    def stop(self, timeout):
        """SIGTERM, then the exit status and how long it took (None: it did not exit)."""
        t = time.time()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None, time.time() - t
        return code, time.time() - t

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def http(method, url, body=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def raw(addr, data, read=True, timeout=60):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return out


def in_parallel(n, fn, count):
    """Runs fn(i) for i in range(count) on n threads."""
    def worker(k):
        for i in range(k, count, n):
            try:
                fn(i)
            except OSError:
                pass
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def check(part, ok, message):
    status = "ok  " if ok else "FAIL"
    print(f"  [{status}] {part}: {message}", flush=True)
    if not ok:
        FAILURES.append(f"{part}: {message}")


def part_trace(demo, scale):
    """A /trace window flooded with 60 KB paths stays within its byte budget."""
    n = int(3000 * scale)
    base = anon_mib(demo.pid)
    result = {}
    window = threading.Thread(target=lambda: result.update(
        r=http("GET", demo.diag_url("/debug/pprof/trace?seconds=6"))))
    window.start()
    time.sleep(0.3)
    sampler = Sampler(demo.pid)
    path = "/" + "a" * 60_000
    in_parallel(8, lambda i: raw(demo.addr, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()), n)
    peak = sampler.stop()
    window.join()
    status, body = result["r"]
    check("trace", status == 200, f"window answered {status}, {len(body)} bytes")
    check("trace", peak - base <= 48, f"{n} requests with 60 KB paths: anonymous {base:.1f} -> peak {peak:.1f} MiB (budget 32 MiB + 16)")


def part_symbol(demo, scale):
    """/symbol lookups of new addresses keep memory bounded."""
    posts = int(400 * scale)
    base = anon_mib(demo.pid)
    sampler = Sampler(demo.pid)
    rng = random.Random(7)
    codes = {}
    for _ in range(posts):
        body = "+".join(hex(rng.randrange(1 << 20, 1 << 47)) for _ in range(10_000)).encode()
        status, _ = http("POST", demo.diag_url("/debug/pprof/symbol"), body)
        codes[status] = codes.get(status, 0) + 1
    peak = sampler.stop()
    after = anon_mib(demo.pid)
    check("symbol", set(codes) <= {200, 429}, f"answers {codes}")
    check("symbol", after - base <= 32, f"{posts} POSTs of 10,000 new addresses: anonymous {base:.1f} -> {after:.1f} MiB (peak {peak:.1f}); bound +32")


def part_conns(demo, scale):
    """Slow and idle clients cannot starve the app or hold connections for ever."""
    n = int(500 * scale)
    held = []
    for _ in range(n):
        try:
            host, port = demo.diag.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            held.append(s)
        except OSError:
            break
    time.sleep(0.3)
    t = time.time()
    status, _ = http("GET", demo.url("/"), timeout=60)
    took = (time.time() - t) * 1000
    check("conns", status == 200, f"GET / answered {status} in {took:.0f} ms beside {len(held)} slow connections to the sidecar")
    # The sidecar keeps at most 64 and cuts slow heads after 10 s: each connection ends
    # (read to its close), a loaded machine a little later; one never cut stays open
    # past the minute given here.
    opened = time.time()
    alive = refused = 0
    for s in held:
        s.settimeout(max(0.1, opened + 60 - time.time()))
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            alive += 1
        except OSError:
            pass
        finally:
            s.close()
        refused += got.startswith(b"HTTP/1.1 503")
    ended = time.time() - opened
    check("conns", refused > 0 or len(held) <= 64, f"{refused} connections past the sidecar's cap were answered 503 and closed")
    check("conns", alive == 0, f"{alive} of {len(held)} slow connections still open 60 s on (header-read timeout 10 s; all ended within {ended:.1f} s)")


def part_hold(demo, scale):
    """Concurrent /hold requests stay within the cap."""
    base = anon_mib(demo.pid)
    sampler = Sampler(demo.pid)
    codes = []
    ts = [threading.Thread(target=lambda: codes.append(http("POST", demo.url("/hold?mb=1024"))[0])) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    peak = sampler.stop()
    status, body = http("DELETE", demo.url("/hold"))
    cap = re.search(rb"(\d+) MiB", body)
    check("hold", status == 200, f"three concurrent POST /hold?mb=1024 answered {sorted(codes)}; DELETE {status}")
    check("hold", peak - base <= 1024 + 64, f"anonymous {base:.1f} -> peak {peak:.1f} MiB (one 1024 MiB hold at most, plus 64)")


def part_methods(demo, scale):
    """Invented methods do not grow /metrics."""
    n = int(5000 * scale)
    in_parallel(8, lambda i: raw(demo.addr, f"M{i:05d}X / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()), n)
    status, body = http("GET", demo.url("/metrics"))
    check("methods", status == 200 and len(body) < 64 * 1024, f"{n} invented methods: /metrics is {len(body)} bytes (bound 64 KiB)")


def part_dumps(demo, scale):
    """Task dumps beside a blocked worker leave no thread behind and never wedge."""
    base_threads = threads(demo.pid)
    blocker = threading.Thread(target=lambda: http("GET", demo.url("/block?ms=3000")))
    blocker.start()
    time.sleep(0.3)
    codes = []
    for _ in range(max(2, int(5 * scale))):
        codes.append(http("GET", demo.diag_url("/debug/pprof/goroutine?debug=1&timeout=1"))[0])
    blocker.join()
    after = threads_settle(demo.pid, base_threads + 2)
    check("dumps", all(c in (200, 503) for c in codes), f"dumps beside a blocked worker answered {codes}")
    check("dumps", after <= base_threads + 2, f"threads {base_threads} -> {after} after the dumps")


# Address space a CPU profile may add beside what the idle demo already maps: the
# thread it symbolizes on (its stack, jemalloc's arena and glibc's for it), the engine and
# the symbolizer. pprof-rs's collector (~65 MB) and backtrace-rs's debug info (~115 MB)
# alone took more.
CPU_AS_HEADROOM_MIB = 160


def part_cpu(binary, scale):
    """A CPU profile under an address-space limit just above the idle demo's keeps it alive."""
    # The limit follows the demo's own size (416 MB of address space idle on 2026-11-26,
    # more than the 400 MB this part used to set): at a limit below what the process
    # needs, the first new thread's jemalloc arena cannot be mapped and jemalloc 5.3
    # crashes (SIGSEGV in tcache_arena_associate with no arena), profile or not.
    probe = Demo(binary)
    time.sleep(0.5)
    idle_kib = int(proc_status(probe.pid)["VmSize"])
    probe.kill()
    limit = idle_kib * 1024 + CPU_AS_HEADROOM_MIB * 1024 * 1024
    demo = Demo(binary, prefix=["prlimit", f"--as={limit}", "--"])
    try:
        status, body = http("GET", demo.diag_url(f"/debug/pprof/profile?seconds={max(1, int(3 * scale))}"))
        alive = demo.proc.poll() is None
        check("cpu", alive, f"address space limited to {limit // 1048576} MiB (idle {idle_kib // 1024} MiB + {CPU_AS_HEADROOM_MIB}): a CPU profile answered {status} ({len(body)} bytes); process alive: {alive}")
        check("cpu", status in (200, 503), f"status {status}")
    finally:
        demo.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="trace symbol conns hold methods dumps cpu")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/demo"))
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "demo"], cwd=ROOT, check=True)
    scale = 0.25 if args.quick else 1.0
    parts = args.parts.split()
    started = time.time()
    demo = Demo(args.bin, ["--dump-interval", "0s", "--shutdown-timeout", "5s"])
    try:
        base_threads, base_mem = threads(demo.pid), anon_mib(demo.pid)
        print(f"soak: demo pid {demo.pid}, {base_threads} threads, {base_mem:.1f} MiB anonymous; parts: {' '.join(parts)}")
        for name in parts:
            if name == "cpu":
                continue
            t = time.time()
            print(f"- {name}: {globals()['part_' + name].__doc__}", flush=True)
            globals()["part_" + name](demo, scale)
            print(f"  ({time.time() - t:.1f} s)")
        after_threads = threads_settle(demo.pid, base_threads + 4)
        check("end", after_threads <= base_threads + 4, f"threads {base_threads} -> {after_threads}")
        # Exit 0 is a clean stop within the 5 s shutdown timeout (past it the demo exits
        # 1); the wait leaves a loaded machine room.
        code, took = demo.stop(timeout=60)
        check("end", code == 0, f"SIGTERM: exit {code} after {took:.1f} s (shutdown timeout 5 s)")
    finally:
        demo.kill()
    if "cpu" in parts:
        print(f"- cpu: {part_cpu.__doc__}", flush=True)
        part_cpu(args.bin, scale)
    print(f"soak: {len(FAILURES)} failed in {time.time() - started:.0f} s")
    if FAILURES:
        for f in FAILURES:
            print(f"FAILED {f}")
        sys.exit(1)


if __name__ == "__main__":
    main()
