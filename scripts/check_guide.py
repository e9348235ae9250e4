#!/usr/bin/env python3
"""Runs every shell command in docs/guide.md, in order, the way a reader would.

    python3 scripts/check_guide.py [docs/guide.md]

Each line of a ```sh block is one command, run by bash from the repository root (or, in a
block preceded by `<!-- guide-check: scratch -->`, from a fresh directory beside a link
to this repository named `diag`). A command fails the check when it exits non-zero or,
when it ends in `# shows: TEXT`, when its output lacks TEXT. Commands a reader leaves
running are handled as a reader would:

- `... cargo run --release -p demo ...` starts the demo in the background (stopping the
  one before) and waits until it answers on 127.0.0.1:8080;
- a command ending in `&` (before any comment) runs in the background until the end of
  its block;
- `tokio-console URL` runs in a tmux pane; its screen must show TEXT within 30 s;
- `go tool pprof -http=...` gets `-no_browser`, and the page it serves must answer.

In scratch blocks `cargo add` gets `--offline` (the crates come from cargo's cache).
The guide names the demo's default ports (8080, 6060, 6669), a second demo's 8081 and
Redis's 6390; the check takes five free ports instead, gives the first three to the demo
through its environment (DEMO_LISTEN, DEMO_DIAG_LISTEN, DEMO_CONSOLE_LISTEN) and rewrites
each command and expectation to them, so it runs beside anything else on the machine.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A `cargo bench` that builds the release benches on a busy 2-core machine takes minutes.
TIMEOUT = 600


def blocks(text):
    """Yields (first line number, directives, [(line number, command)]) per sh block."""
    lines = text.split("\n")
    i = 0
    directive = set()
    while i < len(lines):
        m = re.match(r"<!-- guide-check: (.*) -->", lines[i].strip())
        if m:
            directive = set(m.group(1).split())
        if lines[i].strip() == "```sh":
            start = i + 1
            cmds = []
            i += 1
            while lines[i].strip() != "```":
                line = lines[i].strip()
                if line and not line.startswith("#"):
                    cmds.append((i + 1, line))
                i += 1
            yield start, directive, cmds
            directive = set()
        elif lines[i].startswith("```"):
            directive = set()
        i += 1


def split_expectation(cmd):
    m = re.search(r"\s#\s*shows:\s*(.+)$", cmd)
    if m:
        return cmd[: m.start()].rstrip(), m.group(1).strip()
    return cmd, None


def free_ports(n):
    """n distinct ports the kernel has just handed out as free on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# The guide's ports, and the demo setting that moves each one (None: the port is only ever
# named on the command line, the second demo's 8081 and Redis's 6390, so moving the text is
# enough).
GUIDE_PORTS = [(8080, "DEMO_LISTEN"), (6060, "DEMO_DIAG_LISTEN"), (6669, "DEMO_CONSOLE_LISTEN"),
               (8081, None), (6390, None)]


def wait_http(url, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} within {seconds} s")


class Checker:
    def __init__(self):
        self.demo = None
        self.background = []
        self.failures = []
        self.ran = 0
        self.scratch = tempfile.mkdtemp(prefix="guide-check-")
        os.symlink(ROOT, os.path.join(self.scratch, "diag"))
        self.ports = {}
        for (guide, var), free in zip(GUIDE_PORTS, free_ports(len(GUIDE_PORTS))):
            self.ports[guide] = free
            if var:
                os.environ[var] = f"127.0.0.1:{free}"
        print("the guide's ports here: " + ", ".join(
            f"{g} -> {p}" for g, p in self.ports.items()), flush=True)

    def moved(self, text):
        """text with the guide's ports replaced by the ones this run took."""
        if text is None:
            return None
        for guide, free in self.ports.items():
            # 127.0.0.1:6060 in URLs, 127.0.0.1_6060 in the file names profile.sh writes,
            # and redis-server's --port 6390 and redis-cli's -p 6390.
            text = re.sub(rf"((?<=[:_])|(?<=-p )|(?<=--port )){guide}\b", str(free), text)
        return text

    def fail(self, lineno, cmd, why):
        self.failures.append(f"docs/guide.md:{lineno}: {cmd}\n    {why}")
        print(f"  FAILED: {why}", flush=True)

    def stop_demo(self):
        if self.demo:
            os.killpg(self.demo.pid, signal.SIGKILL)
            self.demo.wait()
            self.demo = None
            time.sleep(0.3)

    def start_demo(self, cmd, lineno):
        self.stop_demo()
        log = open(os.path.join(self.scratch, "demo.log"), "w")
        self.demo = subprocess.Popen(
            ["bash", "-c", cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(f"http://127.0.0.1:{self.ports[8080]}/healthz", 300)
            if "--console" in cmd:
                wait_http(f"http://127.0.0.1:{self.ports[6060]}/debug/pprof/", 30)
        except RuntimeError as e:
            self.fail(lineno, cmd, f"{e}; its output:\n{open(log.name).read()[-2000:]}")

    def run_background(self, cmd, cwd):
        self.background.append(subprocess.Popen(
            ["bash", "-c", cmd[:-1]], cwd=cwd, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        ))
        # Let it reach the server before the next command looks for it.
        time.sleep(1.5)

    def end_block(self):
        for p in self.background:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.background = []

    def tokio_console(self, cmd, expect, lineno):
        session = f"guide-check-{os.getpid()}"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
                        cmd], check=True)
        want = expect or "demo::"
        screen = ""
        try:
            deadline = time.time() + 30
            while time.time() < deadline:
                screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                        capture_output=True, text=True).stdout
                if want in screen:
                    return
                time.sleep(0.5)
            self.fail(lineno, cmd, f"the screen never showed {want!r}:\n{screen}")
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)

    def pprof_web(self, cmd, lineno, cwd):
        cmd = cmd.replace("go tool pprof ", "go tool pprof -no_browser ", 1)
        p = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            seen = ""
            deadline = time.time() + 60
            while time.time() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                seen += line
                m = re.search(r"Serving web UI on (http://\S+)", line)
                if m:
                    page = wait_http(m.group(1), 10).decode(errors="replace")
                    if "pprof" not in page:
                        self.fail(lineno, cmd, "the web UI page does not mention pprof")
                    return
            self.fail(lineno, cmd, f"no web UI was served:\n{seen}")
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def run(self, path):
        text = open(path).read()
        for start, directive, cmds in blocks(text):
            cwd = self.scratch if "scratch" in directive else ROOT
            for lineno, raw in cmds:
                cmd, expect = split_expectation(raw)
                cmd, expect = self.moved(cmd), self.moved(expect)
                print(f"$ {cmd}", flush=True)
                self.ran += 1
                if re.match(r"^(\S+=\S+\s+)*cargo run --release -p demo\b", cmd):
                    self.start_demo(cmd, lineno)
                elif re.sub(r"\s+#[^'\"]*$", "", cmd).endswith("&"):
                    self.run_background(re.sub(r"\s+#[^'\"]*$", "", cmd), cwd)
                elif cmd.startswith("tokio-console "):
                    self.tokio_console(cmd, expect, lineno)
                elif cmd.startswith("go tool pprof") and " -http=" in cmd:
                    self.pprof_web(cmd, lineno, cwd)
                else:
                    if "scratch" in directive and cmd.startswith("cargo add "):
                        cmd += " --offline"
                    # Keep the working directory a `cd` leaves behind.
                    marker = os.path.join(self.scratch, "cwd")
                    full = f"{cmd}\nrc=$?; pwd > {shlex.quote(marker)}; exit $rc"
                    # After a background command of this block, what it does shows a
                    # moment later on a loaded machine: a command that does not yet see
                    # it runs again, for up to a minute, instead of trusting the pause.
                    retry_until = time.time() + (60 if self.background else 0)
                    while True:
                        try:
                            r = subprocess.run(["bash", "-c", full], cwd=cwd,
                                               capture_output=True, text=True,
                                               timeout=TIMEOUT)
                        except subprocess.TimeoutExpired:
                            r = None
                            break
                        out = r.stdout + r.stderr
                        seen = r.returncode == 0 and (not expect or expect in out)
                        if seen or time.time() >= retry_until:
                            break
                        time.sleep(0.5)
                    if r is None:
                        self.fail(lineno, cmd, f"still running after {TIMEOUT} s")
                        continue
                    if r.returncode != 0:
                        self.fail(lineno, cmd, f"exit {r.returncode}:\n{out[-3000:]}")
                    elif expect and expect not in out:
                        self.fail(lineno, cmd, f"output lacks {expect!r}:\n{out[:1500]}\n...\n{out[-1500:]}")
                    if os.path.exists(marker):
                        cwd = open(marker).read().strip()
            self.end_block()
        self.stop_demo()


def untracked():
    out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, capture_output=True, text=True).stdout
    return set(filter(None, out.split("\0")))


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "guide.md")
    before = untracked()
    checker = Checker()
    try:
        checker.run(path)
    finally:
        checker.end_block()
        checker.stop_demo()
        # The files the guide's commands saved (flamegraph.svg, base.pb.gz, ...) go.
        for f in untracked() - before:
            os.remove(os.path.join(ROOT, f))
    if checker.ran == 0:
        print("no commands found: is this the guide?", file=sys.stderr)
        sys.exit(1)
    if checker.failures:
        print(f"\n{len(checker.failures)} of {checker.ran} guide commands failed:",
              file=sys.stderr)
        for f in checker.failures:
            print(f, file=sys.stderr)
        sys.exit(1)
    print(f"all {checker.ran} guide commands ran as the guide says")


if __name__ == "__main__":
    main()
