#!/usr/bin/env python3
"""The Dockerfile built and deploy/k8s/demo.yaml played for real, with podman.

    scripts/check_containers.py                 build, play, drive, measure, tear down
    scripts/check_containers.py --memory 256Mi  the memory run under another limit
    scripts/check_containers.py --clean         also remove the cached base images and
                                                the build cache at the end

What it does, in order (each step prints what it runs and how long it took):

1. Configures podman system-wide, idempotently, and says what it wrote: the drop-in
   /etc/containers/containers.conf.d/50-diag.conf with explicit ulimits (podman's
   defaults ask for more than the host's hard limits allow, and runc refuses them), and
   `runtime = "runc"` where the host has v1 or hybrid cgroups (crun refuses them).
2. Builds the base images locally (no image registry is reachable): a Debian bookworm
   made with `debootstrap --variant=minbase` and `podman import` (the runtime base, in
   place of debian:bookworm-slim), a builder that is that base plus gcc, make and the
   host's Rust toolchain (in place of rust:1.95-bookworm), and a Redis from Debian's
   redis-server (in place of redis:7.2-alpine). They stay cached in podman's storage
   and are built again only when missing (the builder and Redis carry a hash of their
   recipe, and the builder of the toolchain's path, in their tags).
3. Builds the Dockerfile as is, with those bases as build arguments, the host's cargo
   registry cache mounted (overlay: nothing written back) and CARGO_NET_OFFLINE=true if
   crates.io is unreachable from inside a container. Prints the build time and the
   image size, and checks the image's user (10001) and that it runs read-only.
4. Plays the manifests with `podman kube play` on a network of its own, after the
   translation podman needs (podman 4.3 plays Pods, Deployments, PVCs and ConfigMaps
   only, and publishes every containerPort on the host; see docs/fleet.md): the Secret
   becomes a podman secret in the form podman reads, with a random token, the Redis
   StatefulSet becomes its Pod and its claim, the ports lists go, Services are left out
   (the test addresses each pod as the Service would). Then:
   both demo replicas ready and live, diag refusing requests without the token and
   answering with it, concurrent GETs spread over both replicas answering exactly
   1..N (one count in Redis), `go tool pprof` reading a CPU and a heap profile through
   the token and a flamegraph downloaded, the pods' memory limit the manifest's.
5. Memory: a CPU profile, a heap profile and a flamegraph back to back under wrk load in
   a demo container run with `--memory` equal to the manifest's limit, read-only, as
   uid 10001; passes if the container survives (not OOM-killed) and prints the peak
   from the cgroup (memory.max_usage_in_bytes on v1, memory.peak on v2) beside the
   peak of RssAnon + RssShmem sampled every 100 ms.
6. Tears down everything it started (pods, containers, volumes, network, secret, the
   demo image) and checks that none is left; the base images and the build's cache
   mount stay (docs/fleet.md says how to remove them).

Skips, with a message and exit status 0, only where podman cannot run a container at
all (no podman and no way to install it, not root, or a trial `podman run` failing).
"""

import argparse
import base64
import hashlib
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "containers")
MANIFEST = os.path.join(ROOT, "deploy", "k8s", "demo.yaml")

BASE = "localhost/diag-base:bookworm"
REDIS = "localhost/diag-redis:bookworm"
DEMO = "localhost/demo:latest"  # the manifest's demo:latest, as podman names a local build
NET = "diag-check"
LABEL = "diag-check=1"  # on everything this script creates and removes
DROPIN = "/etc/containers/containers.conf.d/50-diag.conf"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINER_ENGINE_TIMEOUT = 600

started = time.time()
PPROF_DIR = [tempfile.gettempdir()]  # main() points it at its work directory
timings = []
failures = []


class Skip(Exception):
    """Podman cannot run containers here: the reason is printed and the run passes."""


def log(msg):
    print(f"[{time.time() - started:6.1f} s] {msg}", flush=True)


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def run(cmd, *, check=True, capture=True, timeout=CONTAINER_ENGINE_TIMEOUT, quiet=False, **kw):
    """Runs a command, printing it; returns its CompletedProcess (text)."""
    if not quiet:
        log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, text=True, capture_output=capture, timeout=timeout, **kw)
    if check and p.returncode != 0:
        out = ((p.stdout or "") + (p.stderr or "")).strip()
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{out[-4000:]}")
    return p


class step:
    """Times a named step and prints it; the summary at the end lists them."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.t0 = time.time()
        print(f"\n==> {self.name}", flush=True)
        return self

    def __exit__(self, *exc):
        took = time.time() - self.t0
        timings.append((self.name, took))
        print(f"<== {self.name}: {took:.1f} s", flush=True)
        return False


# ---------------------------------------------------------------------------- setup


def need_tools():
    if os.geteuid() != 0:
        raise Skip("not root: this check builds base images with debootstrap and runs "
                   "rootful podman (run it as root, as CI does)")
    missing = [pkg for cmd, pkg in (("podman", "podman"), ("runc", "runc"),
                                    ("debootstrap", "debootstrap"), ("wrk", "wrk"),
                                    ("go", "golang-go"))
               if shutil.which(cmd) is None and not os.path.exists(f"/usr/sbin/{cmd}")]
    if missing:
        log(f"installing {' '.join(missing)} (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        p = run(["apt-get", "update", "-qq"], check=False, env=env)
        p = run(["apt-get", "install", "-y", "-qq", *missing], check=False, env=env)
        if p.returncode != 0 and "podman" in missing:
            raise Skip(f"podman is not installed and apt-get could not install it:\n{p.stderr}")
        if p.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(missing)} failed:\n{p.stderr}")
    p = run(["podman", "info", "--format", "json"], check=False)
    if p.returncode != 0:
        raise Skip(f"`podman info` fails, so podman cannot run containers here:\n{p.stderr}")
    return json.loads(p.stdout)


def configure_podman():
    """Writes the drop-in when its content differs; says what it did either way."""
    def hard(which):
        h = resource.getrlimit(which)[1]
        return 1 << 30 if h == resource.RLIM_INFINITY else h

    # podman's defaults (nofile 1048576, nproc 4194304) exceed what runc may set where the
    # hard limits are lower and root lacks CAP_SYS_RESOURCE; 4096 of each is plenty for
    # the demo under wrk and for Redis.
    nofile, nproc = min(4096, hard(resource.RLIMIT_NOFILE)), min(4096, hard(resource.RLIMIT_NPROC))
    lines = ["# Written by diag's scripts/check_containers.py (rewritten when it differs).",
             "[containers]",
             f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]']
    fs = run(["stat", "-fc", "%T", "/sys/fs/cgroup"], quiet=True).stdout.strip()
    if fs != "cgroup2fs":
        lines += ["", f"# /sys/fs/cgroup is {fs} (v1 or hybrid cgroups): crun refuses them.",
                  "[engine]", 'runtime = "runc"']
    want = "\n".join(lines) + "\n"
    have = open(DROPIN).read() if os.path.exists(DROPIN) else None
    if have == want:
        log(f"podman configuration: {DROPIN} already as needed (unchanged)")
    else:
        os.makedirs(os.path.dirname(DROPIN), exist_ok=True)
        with open(DROPIN, "w") as f:
            f.write(want)
        log(f"podman configuration: {'rewrote' if have else 'wrote'} {DROPIN} "
            "(system-wide, for every podman user of this machine):")
    print("    " + want.replace("\n", "\n    ").rstrip(), flush=True)


def image_exists(ref):
    return run(["podman", "image", "exists", ref], check=False, quiet=True).returncode == 0


def image_size(ref):
    return int(run(["podman", "image", "inspect", "--format", "{{.Size}}", ref],
                   quiet=True).stdout.strip())


def build_base():
    if image_exists(BASE):
        log(f"{BASE}: cached")
        return
    rootfs = os.path.join(WORK, "rootfs-base")
    shutil.rmtree(rootfs, ignore_errors=True)
    os.makedirs(WORK, exist_ok=True)
    run(["debootstrap", "--variant=minbase", "bookworm", rootfs, "http://deb.debian.org/debian"],
        timeout=1200)
    # What debian:bookworm-slim leaves out: downloaded packages, package lists, manuals,
    # documentation but the copyright files.
    for d in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/man", "usr/share/info"):
        run(["find", os.path.join(rootfs, d), "-mindepth", "1", "-type", "f", "-delete"], quiet=True)
    run(["find", os.path.join(rootfs, "var/cache/apt"), "-maxdepth", "1", "-name", "*.bin",
         "-delete"], quiet=True)
    run(["find", os.path.join(rootfs, "usr/share/doc"), "-mindepth", "2", "-type", "f",
         "!", "-name", "copyright", "-delete"], quiet=True)
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", rootfs, "-c", "."],
                           stdout=subprocess.PIPE)
    run(["podman", "import", "--change", f"ENV {PATH_ENV}", "--change", 'CMD ["bash"]',
         "-", BASE], stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs)


def trial_run():
    p = run(["podman", "run", "--rm", "--label", LABEL, BASE, "true"], check=False)
    if p.returncode != 0:
        raise Skip(f"podman cannot run a container here: {p.stderr.strip()}")


def network_from_inside():
    """(deb.debian.org reachable, crates.io reachable) from a container on podman's
    default network; TCP connect, 5 s each."""
    probe = ("for h in deb.debian.org:80 index.crates.io:443; do "
             "timeout 5 bash -c \"exec 3<>/dev/tcp/${h%:*}/${h#*:}\" 2>/dev/null "
             "&& echo yes || echo no; done")
    p = run(["podman", "run", "--rm", "--label", LABEL, BASE, "bash", "-c", probe], check=False)
    out = p.stdout.split()
    return (out[:1] == ["yes"], out[1:2] == ["yes"])


def rust_toolchain():
    """The host's toolchain directory (the one `rustc` runs from) and its version."""
    sysroot = run(["rustc", "--print", "sysroot"], quiet=True).stdout.strip()
    version = run(["rustc", "--version"], quiet=True).stdout.split()[1]
    return os.path.realpath(sysroot), version


BUILDER_CONTAINERFILE = f"""FROM {BASE}
# What rust:bookworm has and this workspace's build needs: a C toolchain (jemalloc).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev make \\
 && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN rustc --version && cargo --version && cc --version | head -1
"""


def build_builder(deb_ok):
    sysroot, version = rust_toolchain()
    ref = f"localhost/diag-rust:{version}-bookworm-{content_tag(BUILDER_CONTAINERFILE + sysroot)}"
    if image_exists(ref):
        log(f"{ref}: cached")
        return ref
    if not deb_ok:
        raise RuntimeError("deb.debian.org is unreachable from a container: the builder "
                           "image needs gcc and make from Debian")
    ctx = os.path.join(WORK, "builder-ctx")
    shutil.rmtree(ctx, ignore_errors=True)
    os.makedirs(os.path.join(ctx, "rust", "lib", "rustlib"))
    # The toolchain as rustup installed it, without its documentation and without the
    # standard libraries of other targets. Hard links where possible: no copy on disk.
    for d in ("bin", "libexec"):
        copy_tree(os.path.join(sysroot, d), os.path.join(ctx, "rust", d))
    for entry in os.listdir(os.path.join(sysroot, "lib")):
        if entry != "rustlib":
            copy_tree(os.path.join(sysroot, "lib", entry), os.path.join(ctx, "rust", "lib", entry))
    host = run(["rustc", "-vV"], quiet=True).stdout.split("host: ")[1].split()[0]
    for entry in os.listdir(os.path.join(sysroot, "lib", "rustlib")):
        src = os.path.join(sysroot, "lib", "rustlib", entry)
        if entry == host or os.path.isfile(src) or entry in ("etc", "components"):
            copy_tree(src, os.path.join(ctx, "rust", "lib", "rustlib", entry))
    with open(os.path.join(ctx, "Containerfile"), "w") as f:
        f.write(BUILDER_CONTAINERFILE)
    run(["podman", "build", "-q", "-t", ref, ctx], timeout=1800)
    shutil.rmtree(ctx)
    return ref


def copy_tree(src, dst):
    """cp -a, as hard links where the two paths share a filesystem (no copy on disk)."""
    if run(["cp", "-al", src, dst], quiet=True, check=False).returncode != 0:
        # Another filesystem: start again from nothing (cp would nest into a directory
        # the failed attempt created).
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        elif os.path.exists(dst):
            os.remove(dst)
        run(["cp", "-a", src, dst], quiet=True)


REDIS_CONTAINERFILE = f"""FROM {BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/*
# As the official image: arguments that start with "-" are redis-server's, and protected
# mode is off (the official image turns it off; Debian's default refuses every client
# from another address when no password is set).
ENTRYPOINT ["redis-server", "--protected-mode", "no"]
"""


def content_tag(text):
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_redis(deb_ok):
    """The stand-in for redis:7.2-alpine; returns its reference."""
    ref = f"{REDIS}-{content_tag(REDIS_CONTAINERFILE)}"
    if image_exists(ref):
        log(f"{ref}: cached")
        return ref
    if not deb_ok:
        raise RuntimeError("deb.debian.org is unreachable from a container: the Redis "
                           "image needs Debian's redis-server")
    ctx = os.path.join(WORK, "redis-ctx")
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, "Containerfile"), "w") as f:
        f.write(REDIS_CONTAINERFILE)
    run(["podman", "build", "-q", "-t", ref, ctx], timeout=1200)
    shutil.rmtree(ctx)
    return ref


def cargo_registry():
    home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    reg = os.path.join(home, "registry")
    return reg if os.path.isdir(reg) else None


class BuildCpu:
    """CPU time used inside the build's RUN containers, read from their cgroups (buildah
    names them buildah-*) once a second: the build's cost whatever else the machine runs."""

    def __init__(self):
        self.seen, self.done = {}, threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        import glob
        while True:
            for f in glob.glob("/sys/fs/cgroup/cpuacct/buildah-*/cpuacct.usage"):
                v = read_int(f)
                if v:
                    self.seen[f] = max(self.seen.get(f, 0), v / 1e9)
            for f in glob.glob("/sys/fs/cgroup/buildah-*/cpu.stat"):
                try:
                    usec = int(open(f).read().split("usage_usec")[1].split()[0])
                    self.seen[f] = max(self.seen.get(f, 0), usec / 1e6)
                except (OSError, IndexError, ValueError):
                    pass
            if self.done.wait(1):
                return

    def stop(self):
        self.done.set()
        self.thread.join()
        return sum(self.seen.values())


def build_demo(builder, crates_ok):
    cmd = ["podman", "build", "--layers=false", "-t", DEMO,
           "--build-arg", f"RUST_IMAGE={builder}", "--build-arg", f"RUNTIME_IMAGE={BASE}"]
    reg = cargo_registry()
    if reg:
        # Overlay: the build reads the host's downloaded crates, its writes are dropped.
        cmd += ["-v", f"{reg}:/usr/local/cargo/registry:O"]
    if not crates_ok:
        if not reg:
            raise RuntimeError("crates.io is unreachable from a container and the host has "
                               "no cargo registry cache to build from")
        log("crates.io is unreachable from a container: building offline from the host's "
            "registry cache")
        cmd += ["--build-arg", "CARGO_NET_OFFLINE=true"]
    cmd.append(ROOT)
    cpu = BuildCpu()
    t0 = time.time()
    try:
        p = run(cmd, check=False, capture=False, timeout=3600)
    finally:
        cpu_s = cpu.stop()
    took = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"podman build failed ({p.returncode})")
    size = image_size(DEMO)
    bin_size = int(run(["podman", "run", "--rm", "--label", LABEL, "--entrypoint", "stat",
                        DEMO, "-c", "%s", "/usr/local/bin/demo"], quiet=True).stdout)
    log(f"demo image: built in {took:.0f} s ({cpu_s:.0f} s of CPU in the build's RUN steps; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs), {size / 1e6:.1f} MB "
        f"(the demo binary {bin_size / 1e6:.1f} MB, base {image_size(BASE) / 1e6:.1f} MB)")
    return took, size


def check_image():
    cfg = json.loads(run(["podman", "image", "inspect", DEMO], quiet=True).stdout)[0]["Config"]
    check(cfg.get("User") == "10001:10001", f"the image runs as 10001:10001 ({cfg.get('User')!r})")
    p = run(["podman", "run", "--rm", "--label", LABEL, "--read-only", "--tmpfs", "/tmp",
             "--entrypoint", "sh", DEMO, "-c",
             "id -u; /usr/local/bin/demo --version || /usr/local/bin/demo --help | head -1"],
            check=False)
    check(p.returncode == 0 and p.stdout.split()[:1] == ["10001"],
          f"the image starts read-only as uid 10001 ({p.stdout.strip()[:80]!r})")


# ---------------------------------------------------------------------- the manifests


def load_manifest():
    return [d for d in yaml.safe_load_all(open(MANIFEST)) if d]


def quantity_bytes(q):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", str(q))
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6,
            "G": 10**9}[m.group(2)]
    return int(m.group(1)) * mult


def translate(docs, token, redis_image):
    """What podman 4.3 can play, made from the manifest: returns (documents to play,
    {secret name: JSON for `podman secret create`}, [volume names]). Each change is one
    that podman needs, said in docs/fleet.md; the demo's Deployment is played as written but
    for its ports list (see unpublish)."""
    play, podman_secrets, volumes = [], {}, []
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind == "Secret":
            # podman 4.3 plays a Secret into a podman secret stored as YAML, then fails to
            # read it for secretKeyRef ("is not valid JSON"); it reads a JSON map of
            # base64 values. The manifest's placeholder token is replaced, as it says.
            data = dict(d.get("data", {}))
            for k, v in d.get("stringData", {}).items():
                data[k] = base64.b64encode(v.encode()).decode()
            data["token"] = base64.b64encode(token.encode()).decode()
            podman_secrets[name] = json.dumps(data)
        elif kind == "Deployment":
            d = json.loads(json.dumps(d))
            unpublish(d["spec"]["template"]["spec"])
            play.append(d)
        elif kind == "StatefulSet":
            # Not played by podman 4.3: its pod, named after the Service that selects it
            # (podman's DNS answers pod names, and the demo asks for `redis`), and one
            # claim per volumeClaimTemplate named as Kubernetes names it (data-redis-0),
            # owned by the pod's fsGroup (podman ignores fsGroup).
            tpl = d["spec"]["template"]
            spec = json.loads(json.dumps(tpl["spec"]))
            svc = d["spec"].get("serviceName", name)
            fs_group = spec.get("securityContext", {}).get("fsGroup")
            claims = {}
            for vct in d["spec"].get("volumeClaimTemplates", []):
                claim = f"{vct['metadata']['name']}-{name}-0"
                claims[vct["metadata"]["name"]] = claim
                ann = {}
                if fs_group is not None:
                    ann = {"volume.podman.io/uid": str(spec["securityContext"].get("runAsUser", 0)),
                           "volume.podman.io/gid": str(fs_group)}
                play.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "metadata": {"name": claim, "annotations": ann},
                             "spec": vct["spec"]})
                volumes.append(claim)
            spec.setdefault("volumes", [])
            for vol, claim in claims.items():
                spec["volumes"].append({"name": vol, "persistentVolumeClaim": {"claimName": claim}})
            unpublish(spec)
            for c in spec["containers"]:
                if c["image"].startswith("redis:"):
                    c["image"] = redis_image  # Debian's redis-server, built locally
            play.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": svc, "labels": tpl["metadata"].get("labels", {})},
                         "spec": spec})
        elif kind == "Service":
            pass  # no Services in podman: the test spreads requests over the pods itself
        else:
            raise RuntimeError(f"{kind}/{name}: no translation for podman (add one here)")
    return play, podman_secrets, volumes


def unpublish(pod_spec):
    """podman 4.3's kube play publishes every containerPort on the host (a hostPort equal
    to it when none is given), which Kubernetes does only for a hostPort: the two demo
    replicas would collide on the host's 8080 and 6060, and diag's port would be open on
    the host's every address. The ports list goes (in Kubernetes it is informational
    without a hostPort) and the probes' named ports become the numbers they name."""
    for c in pod_spec["containers"]:
        named = {p["name"]: p["containerPort"] for p in c.pop("ports", []) if "name" in p}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            for how in ("httpGet", "tcpSocket"):
                port = c.get(probe, {}).get(how, {}).get("port")
                if isinstance(port, str):
                    c[probe][how]["port"] = named[port]


# ------------------------------------------------------------------------- HTTP helpers


def http(url, token=None, timeout=30, method="GET"):
    """(status, headers, body bytes); never raises for an HTTP status."""
    req = urllib.request.Request(url, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_http(url, want=200, timeout=90):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = http(url, timeout=2)[0]
            if last == want:
                return True
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.25)
    log(f"{url}: still {last!r} after {timeout} s")
    return False


def container_ip(name):
    nets = json.loads(run(["podman", "inspect", "--format", "{{json .NetworkSettings.Networks}}",
                           name], quiet=True).stdout)
    return nets[NET]["IPAddress"]


class Wrk:
    """wrk on the given URLs (one process each) until stopped."""

    def __init__(self, urls, connections=8, seconds=600):
        self.procs = [subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", u],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True) for u in urls]

    def stop(self):
        out = []
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(2)  # SIGINT: wrk prints its summary
            try:
                out.append(p.communicate(timeout=10)[0])
            except subprocess.TimeoutExpired:
                p.kill()
                out.append(p.communicate()[0])
        return out


def non_2xx(wrk_outputs):
    """Answers other than 2xx/3xx in wrk's summaries (and socket errors: timeouts, resets)."""
    n = 0
    for o in wrk_outputs:
        n += sum(int(m) for m in re.findall(r"Non-2xx or 3xx responses: (\d+)", o))
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", o)
        if m:
            n += sum(int(x) for x in m.groups())
    return n


def go_pprof(args, timeout=120):
    # Where go tool pprof saves what it fetches: in this run's directory, removed at the end.
    env = dict(os.environ, PPROF_TMPDIR=os.path.join(PPROF_DIR[0], "pprof"))
    os.makedirs(env["PPROF_TMPDIR"], exist_ok=True)
    return run(["go", "tool", "pprof", *args], check=False, env=env, timeout=timeout)


# --------------------------------------------------------------------------- the play


def teardown(play_file, podman_secrets, volumes, quiet=False):
    """Removes what this script creates; returns what is still there."""
    if play_file and os.path.exists(play_file):
        run(["podman", "kube", "down", play_file], check=False, quiet=quiet)
    run(["podman", "rm", "-f", "-v", "--filter", f"label={LABEL}"], check=False, quiet=quiet)
    for s in podman_secrets:
        run(["podman", "secret", "rm", s], check=False, quiet=quiet)
    for v in volumes:
        run(["podman", "volume", "rm", "-f", v], check=False, quiet=quiet)
    run(["podman", "network", "rm", "-f", NET], check=False, quiet=quiet)
    left = []
    for what, cmd in (("pods", ["podman", "pod", "ps", "-q", "--filter", f"network={NET}"]),
                      ("containers", ["podman", "ps", "-aq", "--filter", f"label={LABEL}"]),
                      ("networks", ["podman", "network", "ls", "-q", "--filter", f"name=^{NET}$"]),
                      ("volumes", ["podman", "volume", "ls", "-q"]),
                      ("secrets", ["podman", "secret", "ls", "--format", "{{.Name}}"])):
        out = run(cmd, check=False, quiet=True).stdout.split()
        if what == "volumes":
            out = [v for v in out if v in volumes]
        if what == "secrets":
            out = [s for s in out if s in podman_secrets]
        if out:
            left.append(f"{what}: {' '.join(out)}")
    return left


def dump_logs():
    """The last lines of every container of the play, for a failure's diagnosis."""
    for name in run(["podman", "ps", "-a", "--format", "{{.Names}}"], quiet=True).stdout.split():
        if name.startswith(("demo-pod-", "redis-", "diag-check")):
            p = run(["podman", "logs", "--tail", "20", name], check=False, quiet=True)
            print(f"--- podman logs {name}\n{p.stdout}{p.stderr}", flush=True)


def demo_pods():
    out = run(["podman", "ps", "--format", "{{.Names}}"], quiet=True).stdout.split()
    return sorted(n for n in out if re.fullmatch(r"demo-pod-\d+-demo", n))


def play_and_drive(docs, token, work_dir):
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    replicas = dep["spec"]["replicas"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    limit = quantity_bytes(c["resources"]["limits"]["memory"])

    play = os.path.join(work_dir, "play.yaml")
    pods = demo_pods()
    with step("podman kube play"):
        t0 = time.time()
        run(["podman", "kube", "play", "--network", NET, play])
        pods = demo_pods()
        if not check(len(pods) == replicas, f"{replicas} demo replicas started ({' '.join(pods)})"):
            dump_logs()
            raise RuntimeError("the demo's replicas did not start")
        ips = {p: container_ip(p) for p in pods}
        redis_ok = False
        deadline = time.time() + 60
        while time.time() < deadline and not redis_ok:
            # The manifest's readiness probe for Redis, run as Kubernetes would (podman
            # does not run readiness probes).
            p = run(["podman", "exec", "redis-redis", "redis-cli", "ping"], check=False, quiet=True)
            redis_ok = p.stdout.strip() == "PONG"
            time.sleep(0.25)
        check(redis_ok, "Redis ready (redis-cli ping answers PONG, its readiness probe)")
        for pod, ip in ips.items():
            ready = wait_http(f"http://{ip}:{ports['http']}/readyz")
            if not check(ready, f"{pod} ready: /readyz 200 (after {time.time() - t0:.1f} s)"):
                dump_logs()
            check(http(f"http://{ip}:{ports['http']}/healthz")[0] == 200, f"{pod} live: /healthz 200")

    with step("what podman applied of the manifest"):
        for pod in pods:
            info = json.loads(run(["podman", "inspect", pod], quiet=True).stdout)[0]
            hc = info["HostConfig"]
            check(hc.get("Memory") == limit,
                  f"{pod}: memory limit {hc.get('Memory')} = the manifest's {limit}")
            check(hc.get("ReadonlyRootfs") is True, f"{pod}: read-only root filesystem")
            check(info["Config"].get("User") in ("10001", "10001:10001"),
                  f"{pod}: runs as 10001 ({info['Config'].get('User')!r})")
            check(info["Config"].get("Env") is not None and f"DIAG_TOKEN={token}" in
                  info["Config"]["Env"], f"{pod}: DIAG_TOKEN from the Secret")
            status = run(["sh", "-c", f"grep -E '^(Uid|CapEff)' /proc/{info['State']['Pid']}/status"],
                         quiet=True).stdout.split()
            check(status[1] == "10001" and status[-1] == "0000000000000000",
                  f"{pod}: the process runs as uid 10001 with no capabilities ({' '.join(status)})")

    ip0 = ips[pods[0]]
    diag0 = f"http://{ip0}:{ports['diag']}/debug/pprof"
    with step("diag requires the Secret's token"):
        for pod, ip in ips.items():
            base = f"http://{ip}:{ports['diag']}/debug/pprof/"
            s_none, h, _ = http(base)
            s_bad = http(base, token="not-the-token")[0]
            s_good = http(base, token=token)[0]
            check(s_none == 401 and "Basic" in h.get("www-authenticate", ""),
                  f"{pod}: no token → {s_none} {h.get('www-authenticate')}")
            check(s_bad == 401, f"{pod}: a wrong token → {s_bad}")
            check(s_good == 200, f"{pod}: the Secret's token → {s_good}")

    with step("one count across the replicas (Redis)"):
        n, threads = 400, 16
        urls = [f"http://{ip}:{ports['http']}/" for ip in ips.values()]
        answers, errors, by_pod = [], [], {u: 0 for u in urls}
        lock = threading.Lock()

        def worker(k):
            for i in range(k, n, threads):
                u = urls[i % len(urls)]  # round robin, as the Service's endpoints would
                try:
                    s, _, b = http(u, timeout=10)
                    with lock:
                        if s == 200:
                            answers.append(int(b))
                            by_pod[u] += 1
                        else:
                            errors.append(f"{s} {b[:80]!r}")
                except OSError as e:
                    with lock:
                        errors.append(str(e))

        ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        check(not errors, f"{n} concurrent GETs over {len(urls)} replicas: no errors {errors[:3]}")
        check(sorted(answers) == list(range(1, n + 1)),
              f"the answers are exactly 1..{n} (got {len(answers)}, "
              f"{len(set(answers))} distinct, min {min(answers, default=None)}, "
              f"max {max(answers, default=None)}); per replica {list(by_pod.values())}")

    with step("go tool pprof on a running pod, through the token, under load"):
        load = Wrk([f"http://{ip}:{ports['http']}/" for ip in ips.values()] +
                   [f"http://{ip0}:{ports['http']}/work?n=20000"], connections=4)
        try:
            url = f"http://:{token}@{ip0}:{ports['diag']}/debug/pprof"
            p = go_pprof(["-top", "-seconds", "3", f"{url}/profile"])
            out = p.stdout + p.stderr
            check(p.returncode == 0 and "Type: cpu" in out and "flat%" in out,
                  f"go tool pprof reads a CPU profile from {pods[0]}: "
                  f"{first_line(out, 'Duration:') or first_line(out, 'Error')}")
            saved = re.search(r"Saved profile in (\S+)", out)
            raw = go_pprof(["-raw", saved.group(1)]).stdout if saved else ""
            mapping = raw.split("Mappings", 1)[-1].strip().splitlines()[:1]
            check(bool(mapping) and "/usr/local/bin/demo" in mapping[0]
                  and re.search(r" [0-9a-f]{40} ", mapping[0]) is not None,
                  f"its first mapping is the demo binary with its build id: {mapping}")
            # Symbolized inside the container, from the binary's line tables: the
            # function /work spends its time in is named.
            check("demo::work::" in raw, "the profile names the demo's functions "
                  f"({len(re.findall(r'demo::', raw))} locations in demo::)")
            p = go_pprof(["-top", "-sample_index=inuse_space", f"{url}/heap"])
            out = p.stdout + p.stderr
            check(p.returncode == 0 and "Type: inuse_space" in out,
                  f"go tool pprof reads a heap profile from {pods[0]}: "
                  f"{first_line(out, 'Showing') or first_line(out, 'Error')}")
            s, h, body = http(f"{diag0}/flamegraph?seconds=3", token=token)
            check(s == 200 and h.get("content-type", "").startswith("image/svg+xml") and
                  "attachment" in h.get("content-disposition", "") and b"<svg" in body[:2000],
                  f"a flamegraph downloads from {pods[0]} ({s}, {h.get('content-type')}, "
                  f"{len(body)} bytes)")
        finally:
            failed = non_2xx(load.stop())
        check(failed == 0, f"the application answered the load with 2xx only ({failed} others)")
        for pod, ip in ips.items():
            check(http(f"http://{ip}:{ports['http']}/healthz")[0] == 200, f"{pod} still live")
    return c, dep["spec"]["template"]["spec"].get("volumes", []), limit


def first_line(text, prefix):
    return next((ln.strip() for ln in text.splitlines() if ln.strip().startswith(prefix)), "")


# ------------------------------------------------------------------------------ memory


def rss_mib(pid):
    """RssAnon + RssShmem of a process, MiB (what the demo's own memory tests read)."""
    try:
        kb = 0
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(("RssAnon:", "RssShmem:")):
                kb += int(line.split()[1])
        return kb / 1024
    except OSError:
        return None


def cgroup_memory_dir(pid):
    for line in open(f"/proc/{pid}/cgroup"):
        hid, ctrls, path = line.rstrip("\n").split(":", 2)
        if "memory" in ctrls.split(","):
            return "/sys/fs/cgroup/memory" + path, "v1"
        if hid == "0" and ctrls == "":
            v2 = "/sys/fs/cgroup" + path
    return v2, "v2"


def read_int(path):
    try:
        return int(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def memory_run(c, pod_volumes, limit, token, cpu_seconds):
    """The demo as the manifest runs it (its args and environment, read-only, uid 10001,
    no capabilities, a 64 MiB /tmp as its emptyDir) under `--memory` = `limit`: a CPU
    profile, a heap profile and a flamegraph back to back under wrk. Returns the peaks."""
    name = "diag-check-memory"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    # /tmp as the manifest's emptyDir (disk-backed, as kube play makes it): an anonymous
    # volume, removed with the container.
    check(any(v["name"] == "tmp" and "emptyDir" in v for v in pod_volumes)
          and {"name": "tmp", "mountPath": "/tmp"} in c.get("volumeMounts", []),
          "the manifest mounts an emptyDir on /tmp")
    cmd = ["podman", "run", "-d", "--name", name, "--label", LABEL, "--network", NET,
           f"--memory={limit}", f"--memory-swap={limit}", "--read-only",
           "-v", "/tmp", "--cap-drop=ALL",
           "--security-opt=no-new-privileges"]
    for e in c.get("env", []):
        value = token if "valueFrom" in e else e["value"]
        cmd += ["-e", f"{e['name']}={value}"]
    cmd += [DEMO, *c["args"]]
    run(cmd)
    info = json.loads(run(["podman", "inspect", name], quiet=True).stdout)[0]
    pid = info["State"]["Pid"]
    ip = container_ip(name)
    app, diag = f"http://{ip}:{ports['http']}", f"http://{ip}:{ports['diag']}/debug/pprof"
    check(wait_http(f"{app}/readyz"), f"{name} ready under --memory={limit >> 20}Mi")
    cg, version = cgroup_memory_dir(pid)
    peak_file = os.path.join(cg, "memory.max_usage_in_bytes" if version == "v1" else "memory.peak")
    limit_file = os.path.join(cg, "memory.limit_in_bytes" if version == "v1" else "memory.max")
    check(read_int(limit_file) == limit, f"the cgroup's limit is {read_int(limit_file)} ({limit_file})")
    before = read_int(peak_file)
    samples, stop = [], threading.Event()
    cg_peak = [before or 0]  # the cgroup's high-water mark, read while it exists

    def sample():
        while not stop.is_set():
            v = rss_mib(pid)
            if v is not None:
                samples.append((time.time(), v))
            p = read_int(peak_file)
            if p is not None:
                cg_peak[0] = max(cg_peak[0], p)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    load = Wrk([f"{app}/", f"{app}/work?n=20000", f"{app}/churn?n=2000"], connections=4)
    results = []
    try:
        time.sleep(2)
        rss_loaded = samples[-1][1] if samples else None
        for what, path, timeout in (("CPU profile", f"/profile?seconds={cpu_seconds}", cpu_seconds + 60),
                                    ("heap profile", "/heap", 60),
                                    ("flamegraph", "/flamegraph?seconds=5", 65)):
            t0 = time.time()
            try:
                s, _, body = http(f"{diag}{path}", token=token, timeout=timeout)
            except OSError as e:
                s, body = str(e), b""
            results.append((what, s, len(body), time.time() - t0))
            log(f"{what}: {s}, {len(body)} bytes in {time.time() - t0:.1f} s; "
                f"RSS now {samples[-1][1] if samples else 0:.0f} MiB")
    finally:
        wrk_out = load.stop()
        stop.set()
        sampler.join()
    state = json.loads(run(["podman", "inspect", name], quiet=True).stdout)[0]["State"]
    peak = max(read_int(peak_file) or 0, cg_peak[0])
    failcnt = read_int(os.path.join(cg, "memory.failcnt")) if version == "v1" else None
    for what, s, size, took in results:
        check(s == 200 and size > 0, f"{what} under load: {s}, {size} bytes, {took:.1f} s")
    # Exit code 137 is SIGKILL, the OOM killer's (podman's OOMKilled flag stays false on
    # v1 cgroups here).
    survived = state["Running"] and not state["OOMKilled"] and state["Pid"] == pid
    if os.path.exists("oom"):
        log("conmon recorded an OOM kill (the file 'oom' in its working directory)")
    check(survived,
          f"the demo survived under --memory={limit >> 20}Mi (running {state['Running']}, "
          f"OOM-killed {state['OOMKilled']}, exit code {state.get('ExitCode')})")
    if survived:
        failed = non_2xx(wrk_out)
        check(failed == 0, f"the application answered the load with 2xx only ({failed} others)")
    sampled = max((v for _, v in samples), default=0)
    requests = sum(int(m.group(1)) for o in wrk_out for m in [re.search(r"(\d+) requests in", o)] if m)
    summary = {"limit_mib": limit >> 20, "cgroup_peak_mib": (peak or 0) / 2**20,
               "cgroup_peak_before_profiles_mib": (before or 0) / 2**20,
               "rss_loaded_before_profiles_mib": rss_loaded, "rss_sampled_peak_mib": sampled,
               "failcnt": failcnt, "wrk_requests": requests, "survived": survived}
    log("memory: " + ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in summary.items()))
    if not survived:
        dump_logs()
    run(["podman", "rm", "-f", "-v", name], check=False)
    return summary


# -------------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clean", action="store_true",
                    help="also remove the cached base and builder images and the build cache")
    ap.add_argument("--keep-image", action="store_true", help="keep localhost/demo:latest")
    ap.add_argument("--memory", metavar="QUANTITY",
                    help="the memory run's limit (e.g. 256Mi) instead of the manifest's")
    ap.add_argument("--cpu-seconds", type=int, default=14,
                    help="the memory run's CPU profile window (default 14, a scraper's)")
    opts = ap.parse_args()

    docs = load_manifest()
    token = secrets.token_hex(24)
    play, podman_secrets, volumes = [], {}, []
    work_dir = tempfile.mkdtemp(prefix="diag-check-containers-")
    PPROF_DIR[0] = work_dir
    # podman's conmon writes a file named "oom" into its working directory when the OOM
    # killer ends a container: in this run's directory, not the caller's.
    os.chdir(work_dir)
    play_file = os.path.join(work_dir, "play.yaml")
    status, built = 1, False
    try:
        with step("tools and podman configuration"):
            need_tools()
            configure_podman()
        with step("base images (cached in podman's storage)"):
            build_base()
            trial_run()
            deb_ok, crates_ok = network_from_inside()
            log(f"from inside a container: deb.debian.org {'reachable' if deb_ok else 'unreachable'}, "
                f"crates.io {'reachable' if crates_ok else 'unreachable'}")
            builder = build_builder(deb_ok)
            redis_image = build_redis(deb_ok)
        play, podman_secrets, volumes = translate(docs, token, redis_image)
        with step("podman build (the Dockerfile, local bases as build arguments)"):
            took, size = build_demo(builder, crates_ok)
            built = True
            check_image()
        # Leftovers of an interrupted run, then this run's network, secret and play file.
        with open(play_file, "w") as f:
            yaml.safe_dump_all(play, f, sort_keys=False)
        teardown(play_file, podman_secrets, volumes, quiet=True)
        run(["podman", "network", "create", "--label", LABEL, NET])
        for name, data in podman_secrets.items():
            path = os.path.join(work_dir, f"secret-{name}.json")
            with open(path, "w") as f:
                f.write(data)
            run(["podman", "secret", "create", name, path])
            os.remove(path)
        c, pod_volumes, limit = play_and_drive(docs, token, work_dir)
        if opts.memory:
            limit = quantity_bytes(opts.memory)
        with step(f"memory: profiles back to back under load, --memory={limit >> 20}Mi"):
            mem = memory_run(c, pod_volumes, limit, token, opts.cpu_seconds)
        print(f"\nimage {DEMO}: {size / 1e6:.1f} MB, built in {took:.0f} s; memory run: "
              f"cgroup peak {mem['cgroup_peak_mib']:.0f} MiB of {mem['limit_mib']} MiB, "
              f"sampled RssAnon+RssShmem peak {mem['rss_sampled_peak_mib']:.0f} MiB")
        status = 1 if failures else 0
    except Skip as e:
        print(f"\nSKIPPED: podman cannot run containers here: {e}")
        status = 0
    finally:
        with step("tear down"):
            left = teardown(play_file, podman_secrets, volumes)
            if built and not opts.keep_image:
                run(["podman", "rmi", "-f", DEMO], check=False)
            if opts.clean:
                run(["podman", "rmi", "-f", BASE, *image_refs(REDIS),
                     *image_refs("localhost/diag-rust")], check=False)
                shutil.rmtree("/var/tmp/buildah-cache", ignore_errors=True)
            none = "no pods, containers, volumes, network or secret of this run"
            check(not left, f"nothing left running: {left or none}")
            os.chdir(ROOT)
            shutil.rmtree(work_dir, ignore_errors=True)
            kept = [r for p in (BASE, REDIS, "localhost/diag-rust", "localhost/podman-pause")
                    for r in image_refs(p)]
            log(f"kept for the next run: images {', '.join(kept) or 'none'}; "
                f"the build's target cache {cache_size()}")
        if failures:
            status = 1
    print("\nstep" + " " * 58 + "time")
    for name, took in timings:
        print(f"{name:<62} {took:6.1f} s")
    print("\n" + ("FAILED: " + "; ".join(failures) if failures else "container checks passed")
          + f" in {time.time() - started:.0f} s")
    return status


def image_refs(prefix):
    out = run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], check=False,
              quiet=True).stdout.split()
    return [r for r in out if r.startswith(prefix)]


def cache_size():
    p = run(["du", "-sh", "/var/tmp/buildah-cache"], check=False, quiet=True)
    return p.stdout.split()[0] + " in /var/tmp/buildah-cache" if p.returncode == 0 else "(none)"


if __name__ == "__main__":
    sys.exit(main())
