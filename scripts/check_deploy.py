#!/usr/bin/env python3
"""Checks the deployment files against their tools' schemas and against what the demo
needs. No cluster and no container engine run here, so this is what can be checked:

- deploy/k8s/*.yaml: every object validated by kubernetes-validate (the Kubernetes
  OpenAPI schemas, strict: unknown fields are errors), then: liveness on /healthz and
  readiness on /readyz, a grace period covering --drain-delay + --shutdown-timeout,
  a Service exposing the application's port and not diag's, a non-root container; Redis
  (a StatefulSet or Deployment and its Service) with probes, resources and a non-root
  user, and the demo's DEMO_REDIS pointing at that Service's name and port.
- Dockerfile: parsed by `dockerfile` (BuildKit's own parser): a build stage and a
  runtime stage, the binary copied from the build stage, a numeric non-root USER last.
- deploy/parca/parca.yaml: YAML with Parca's keys; block and mutex off; CPU, memory and
  goroutine on at diag's paths.
- deploy/alloy/config.alloy: no checker for Alloy's syntax installs from the package
  registries this project reaches; the same facts are read from it as text (and
  demo/tests/fleet.rs replays the loop it configures).

    python3 scripts/check_deploy.py      (pip install kubernetes-validate dockerfile pyyaml)
"""

import os
import re
import sys

import dockerfile
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_VERSION = "1.30.0"
errors = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        errors.append(what)


def seconds(flag_value):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", flag_value)
    n, unit = int(m.group(1)), m.group(2) or "s"
    return {"ms": n / 1000, "s": n, "m": n * 60}[unit]


def k8s():
    path = os.path.join(ROOT, "deploy", "k8s", "demo.yaml")
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            check(True, f"{name} is valid Kubernetes {K8S_VERSION} (strict)")
        except kubernetes_validate.ValidationError as e:
            check(False, f"{name}: {e.message} at {list(e.path)}")
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    dep = by_name[("Deployment", "demo")]["spec"]["template"]["spec"]
    c = dep["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe on /healthz")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe on /readyz")
    args = dict(a[2:].split("=", 1) for a in c["args"])
    need = seconds(args.get("drain-delay", "0s")) + seconds(args.get("shutdown-timeout", "10s"))
    grace = dep.get("terminationGracePeriodSeconds", 30)
    check(grace > need, f"grace period {grace} s covers drain delay + shutdown timeout ({need} s)")
    diag_port = int(args["diag-listen"].rsplit(":", 1)[1])
    check(ports.get("diag") == diag_port, f"container port 'diag' is --diag-listen's {diag_port}")
    svc = by_name[("Service", "demo")]["spec"]["ports"]
    targets = {p.get("targetPort") for p in svc}
    check("diag" not in targets and diag_port not in targets and
          all(p["port"] != diag_port for p in svc), "the Service does not expose diag's port")
    check("http" in targets or ports["http"] in targets, "the Service exposes the app's port")
    sc = dep.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, "runs as non-root")
    env = {e["name"]: e for e in c.get("env", [])}
    check("secretKeyRef" in env.get("DIAG_TOKEN", {}).get("valueFrom", {}),
          "DIAG_TOKEN comes from a Secret")
    redis(by_name, env)


def redis(by_name, demo_env):
    """Redis for the count: a workload with probes and resources, its Service, and the
    demo pointed at that Service."""
    work = by_name.get(("StatefulSet", "redis")) or by_name.get(("Deployment", "redis"))
    check(work is not None, "a Redis StatefulSet or Deployment named redis")
    svc = by_name.get(("Service", "redis"))
    check(svc is not None, "a Service named redis")
    if work is None or svc is None:
        return
    pod = work["spec"]["template"]
    c = pod["spec"]["containers"][0]
    check(pod["metadata"]["labels"].items() >= svc["spec"]["selector"].items(),
          "the redis Service selects the Redis pods")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    targets = {p["port"]: p.get("targetPort", p["port"]) for p in svc["spec"]["ports"]}
    check(any(t in ports or t in ports.values() for t in targets.values()),
          "the redis Service targets the Redis container's port")
    check("livenessProbe" in c and "readinessProbe" in c, "Redis has liveness and readiness probes")
    res = c.get("resources", {})
    check({"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}),
          "Redis requests CPU and memory and has a memory limit")
    sc = pod["spec"].get("securityContext", {})
    check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, "Redis runs as non-root")
    url = demo_env.get("DEMO_REDIS", {}).get("value", "")
    m = re.fullmatch(r"redis://([^:/@]+)(?::(\d+))?(/\d+)?", url)
    check(m is not None, f"the demo's DEMO_REDIS is a redis:// URL ({url!r})")
    if m:
        host, port = m.group(1), int(m.group(2) or 6379)
        check(host in ("redis", f"redis.{svc['metadata'].get('namespace', 'default')}.svc"),
              f"DEMO_REDIS names the redis Service ({host})")
        check(port in targets, f"DEMO_REDIS's port {port} is the redis Service's")


def docker():
    path = os.path.join(ROOT, "Dockerfile")
    cmds = dockerfile.parse_file(path)
    froms = [c for c in cmds if c.cmd.upper() == "FROM"]
    check(len(froms) >= 2, f"multi-stage: {len(froms)} FROM instructions")
    stages = [f.value[-1] for f in froms if len(f.value) == 3 and f.value[1].upper() == "AS"]
    check("build" in stages, "a stage named build")
    last = cmds.index(froms[-1])
    runtime = cmds[last:]
    copies = [c for c in runtime if c.cmd.upper() == "COPY"]
    check(any("--from=build" in c.flags for c in copies), "the runtime copies from the build stage")
    users = [c for c in runtime if c.cmd.upper() == "USER"]
    check(bool(users) and users[-1].value[0].split(":")[0] not in ("0", "root"),
          "the runtime stage runs as a non-root user")
    build = [c for c in cmds[:last] if c.cmd.upper() == "RUN"]
    check(any("cargo build --release" in " ".join(c.value) for c in build),
          "the build stage runs cargo build --release")
    check(os.path.exists(os.path.join(ROOT, ".dockerignore")) and
          "target/" in open(os.path.join(ROOT, ".dockerignore")).read(),
          ".dockerignore leaves target/ out")


DIAG_PATHS = {"process_cpu": "/debug/pprof/profile", "memory": "/debug/pprof/allocs",
              "goroutine": "/debug/pprof/goroutine"}


def parca():
    cfg = yaml.safe_load(open(os.path.join(ROOT, "deploy", "parca", "parca.yaml")))
    check(set(cfg) <= {"object_storage", "scrape_configs"}, "Parca's top-level keys only")
    job = cfg["scrape_configs"][0]
    pprof = job["profiling_config"]["pprof_config"]
    for name, path in DIAG_PATHS.items():
        check(pprof[name]["enabled"] is True and pprof[name]["path"] == path,
              f"parca: {name} on at {path}")
    check(pprof["process_cpu"].get("delta") is True, "parca: CPU as a delta (seconds=N)")
    for name in ("block", "mutex"):
        check(pprof[name]["enabled"] is False, f"parca: {name} off (diag has none)")
    check(job["authorization"]["type"] == "Bearer", "parca: sends the token as a bearer")


def alloy():
    text = open(os.path.join(ROOT, "deploy", "alloy", "config.alloy")).read()
    blocks = dict(re.findall(r"profile\.(\w+)\s*\{([^}]*)\}", text))
    for name, path in DIAG_PATHS.items():
        body = blocks.get(name, "")
        check("enabled = true" in body and f'path    = "{path}"' in body,
              f"alloy: {name} on at {path}")
    for name in ("block", "mutex", "godeltaprof_memory", "godeltaprof_mutex",
                 "godeltaprof_block", "fgprof"):
        check("enabled = false" in blocks.get(name, ""), f"alloy: {name} off (diag has none)")
    check(text.count("{") == text.count("}"), "alloy: braces balance")
    check('bearer_token = sys.env("DIAG_TOKEN")' in text, "alloy: sends DIAG_TOKEN as a bearer")


for part in (k8s, docker, parca, alloy):
    part()
if errors:
    print(f"\n{len(errors)} deployment check(s) failed", file=sys.stderr)
    sys.exit(1)
print("\nall deployment checks passed")
