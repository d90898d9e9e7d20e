#!/usr/bin/env python3
"""Smoke test of what the image and the Helm chart run, without a Docker engine (run by
./scripts/test.sh after it built target/debug/loyalty).

1. The Dockerfile's runtime stage: its ENTRYPOINT + CMD, with its ENV, run on the binary
   (`loyalty` in the image is the binary given here), except that it listens on a free loopback
   port instead of 0.0.0.0:8080 and keeps its data in a temporary directory instead of
   /var/lib/loyalty. It must answer /readyz 200 (and /healthz, /metrics), pass the Dockerfile's
   own HEALTHCHECK command (run as written, with the same environment), log JSON, and exit 0
   on SIGTERM (what Kubernetes and `docker stop` send; the Dockerfile's STOPSIGNAL).
2. The chart's containers (rendered with helm-python-sdk): every container's args are a command
   the binary accepts (`loyalty <args> --help`), every environment variable the chart sets is
   one the binary reads (named in its sources), and `loyalty gateway` / `loyalty engine` with
   the chart's environment (its PII key ring from the chart's Secret) refuse to start without
   an admin key and with the dev key; with a real admin key, they refuse to start without
   LOYALTY_PII_KEYS and with a `dev:` key, and get past the key ring with the ring the chart
   generated and with the ring of ci/inline-secrets-values.yaml (they stop later, at the
   servers they cannot reach here).

Exits non-zero if anything fails, and prints a short report.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from helm_python import chart as helm_chart

ROOT = Path(__file__).resolve().parent.parent
from checklib import bad, check, failures, ok, summary  # noqa: E402


def dockerfile_runtime(path: Path) -> dict:
    """ENV, ENTRYPOINT, CMD, EXPOSE, USER, STOPSIGNAL and HEALTHCHECK of the last stage."""
    lines, cur = [], ""
    for raw in path.read_text().splitlines():
        if not cur and raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        cur += raw
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append((word, rest.strip()))
    spec: dict = {"env": {}, "stages": len(stages)}
    for word, rest in stages[-1]:
        if word == "ENV":
            for tok in shlex.split(rest):
                k, _, v = tok.partition("=")
                spec["env"][k] = v
        elif word in ("ENTRYPOINT", "CMD"):
            spec[word.lower()] = json.loads(rest)
        elif word == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
            spec["healthcheck"] = json.loads(m.group(1)) if m else None
        elif word in ("EXPOSE", "USER", "STOPSIGNAL"):
            spec[word.lower()] = rest
    return spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The machine's environment without the LOYALTY_*, OTEL_* and RUST_LOG of the caller."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("LOYALTY_") or k.startswith("OTEL_") or k == "RUST_LOG")}
    env.update(extra)
    return env


def smoke_dockerfile(binary: Path, dockerfile: Path) -> None:
    spec = dockerfile_runtime(dockerfile)
    ep, cmd = spec.get("entrypoint", []), spec.get("cmd", [])
    check(spec["stages"] >= 2 and ep[:1] == ["loyalty"] and spec.get("user", "").split(":")[0] not in ("", "0", "root"),
          f"Dockerfile: {spec['stages']} stages, ENTRYPOINT {ep}, CMD {cmd}, USER {spec.get('user')}, "
          f"EXPOSE {spec.get('expose')}, ENV {spec['env']}")
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="loyalty-smoke-"))
    env = clean_env({**spec["env"], "LOYALTY_LISTEN": f"127.0.0.1:{port}", "LOYALTY_DATA_DIR": str(data)})
    argv = [str(binary), *ep[1:], *cmd]
    shown = " ".join(["loyalty", *ep[1:], *cmd])
    log = data.parent / f"{data.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=data)
    try:
        base = f"http://127.0.0.1:{port}"
        started, code = time.monotonic(), 0
        while time.monotonic() - started < 120 and proc.poll() is None:
            code, _ = get(base + "/readyz")
            if code == 200:
                break
            time.sleep(0.2)
        took = time.monotonic() - started
        check(code == 200, f"`{shown}` (the image's default command) on 127.0.0.1:{port}: /readyz 200 after {took:.1f} s"
              + ("" if code == 200 else f" (last answer {code}; exit {proc.poll()}; log {log})"))
        h, _ = get(base + "/healthz")
        m, metrics = get(base + "/metrics")
        check(h == 200 and m == 200 and "loyalty_http_requests_total" in metrics,
              f"/healthz {h}, /metrics {m} with loyalty_http_requests_total")
        hc = spec.get("healthcheck")
        if hc:
            r = subprocess.run(hc, env=env, capture_output=True, text=True, timeout=10)
            check(r.returncode == 0, f"the Dockerfile's HEALTHCHECK command passes (exit {r.returncode})")
        else:
            bad("the Dockerfile has no HEALTHCHECK CMD [...]")
        first = log.read_text(errors="replace").splitlines()[:1]
        is_json = False
        try:
            is_json = bool(first) and isinstance(json.loads(first[0]), dict)
        except ValueError:
            pass
        if spec["env"].get("LOYALTY_LOG_FORMAT") == "json":
            check(is_json, f"logs are JSON lines (LOYALTY_LOG_FORMAT=json): {first[0][:100] if first else '(none)'}")
        sig = getattr(signal, spec.get("stopsignal", "SIGTERM"))
        stopped = time.monotonic()
        proc.send_signal(sig)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, f"{sig.name}: exit {rc} after {time.monotonic() - stopped:.1f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not failures:
        log.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(data)], check=False)


def read_names() -> set[str]:
    """Every "LOYALTY_*" / "OTEL_*" / "RUST_LOG" string in the binary's sources."""
    names: set[str] = set()
    for p in list((ROOT / "services").rglob("*.rs")) + list((ROOT / "libs").rglob("src/**/*.rs")):
        names.update(re.findall(r"\b((?:LOYALTY|OTEL)_[A-Z0-9_]+|RUST_LOG)\b", p.read_text(errors="replace")))
    return names


def containers(chart_dir: Path, values: dict | None) -> tuple[dict[str, str], list[tuple[str, dict]], dict[str, str]]:
    """The release's ConfigMap data, the containers of its workloads, and its own Secret's data
    (decoded)."""
    rendered = helm_chart.Chart.load(chart_dir).render(values, name="loyalty", namespace="loyalty", is_install=True)
    config: dict[str, str] = {}
    secret: dict[str, str] = {}
    out = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for o in yaml.safe_load_all(text):
            if not o:
                continue
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "loyalty":
                config = o["data"]
            if o["kind"] == "Secret" and o["metadata"]["name"] == "loyalty":
                secret = {k: base64.b64decode(v).decode() for k, v in o.get("data", {}).items()}
            if o["kind"] in ("Deployment", "StatefulSet", "Job"):
                for c in o["spec"]["template"]["spec"]["containers"]:
                    out.append((f"{o['kind']}/{o['metadata']['name']}", c))
    return config, out, secret


def plain_env(config: dict[str, str], c: dict, pod: str) -> dict[str, str]:
    env = dict(config)
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[e["name"]] = "loyalty"
    return {k: re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), v) for k, v in env.items()}


def smoke_chart(binary: Path, chart_dir: Path) -> None:
    known = read_names()
    helpers = {"POD_NAME", "POD_NAMESPACE"}
    for label, values in [("default values", None),
                          ("ci/production-values.yaml", yaml.safe_load((chart_dir / "ci/production-values.yaml").read_text()))]:
        config, cs, _ = containers(chart_dir, values)
        for where, c in cs:
            args = c.get("args", [])
            r = subprocess.run([str(binary), *args, "--help"], capture_output=True, text=True, timeout=30)
            check(r.returncode == 0, f"{label}: {where} runs `loyalty {' '.join(args)}`, a command the binary accepts"
                  + ("" if r.returncode == 0 else f": {r.stderr.strip()[:200]}"))
            names = set(config) | {e["name"] for e in c.get("env", [])}
            unknown = sorted(n for n in names if n not in known and n not in helpers)
            check(not unknown, f"{label}: {where}: the {len(names)} variables it gets are all read by the binary"
                  + ("" if not unknown else f": unknown {unknown}"))
    # The production commands with the chart's environment refuse the dev defaults and a missing
    # key ring, before they connect to anything (the Kafka, Redis and PostgreSQL names of the
    # chart do not resolve here). The chart's environment has LOYALTY_PII_KEYS from its Secret
    # (generated with the default values), so the admin key cases do not depend on which of the
    # two checks comes first.
    config, cs, secret = containers(chart_dir, None)
    generated = secret.get("pii-keys")
    inline = containers(chart_dir, yaml.safe_load((chart_dir / "ci/inline-secrets-values.yaml").read_text()))[2].get("pii-keys")
    if not generated or not inline:
        bad(f"the chart's Secret has no pii-keys (default values: {bool(generated)}, "
            f"ci/inline-secrets-values.yaml: {bool(inline)})")
        return
    real = "a-real-admin-key-for-smoke"
    dev_ring = "dev:" + base64.b64encode(bytes(range(32))).decode()
    # (case, LOYALTY_ADMIN_KEY, LOYALTY_PII_KEYS, refused?, what the refusal names)
    cases = [
        ("no admin key", None, generated, True, ["LOYALTY_ADMIN_KEY"]),
        ("the dev admin key", "dev-admin-key", generated, True, ["LOYALTY_ADMIN_KEY", "dev-admin-key"]),
        ("a real admin key and no LOYALTY_PII_KEYS", real, None, True, ["LOYALTY_PII_KEYS"]),
        ("a real admin key and a `dev:` key ring", real, dev_ring, True, ["LOYALTY_PII_KEYS", "`dev`"]),
        ("a real admin key and the ring the chart generated", real, generated, False, []),
        ("a real admin key and the 2-key ring of ci/inline-secrets-values.yaml", real, inline, False, []),
    ]
    for where, c in cs:
        args = c.get("args", [])
        if args[:1] not in (["gateway"], ["engine"]):
            continue
        pod = f"loyalty-{args[0]}-0"
        env = plain_env(config, c, pod)
        for case, key, ring, refuse, names in cases:
            e = clean_env({**env, "LOYALTY_LISTEN": f"127.0.0.1:{free_port()}",
                           "LOYALTY_DATA_DIR": tempfile.mkdtemp(prefix="loyalty-smoke-")})
            for var, val in (("LOYALTY_ADMIN_KEY", key), ("LOYALTY_PII_KEYS", ring)):
                e.pop(var, None)
                if val:
                    e[var] = val
            try:
                r = subprocess.run([str(binary), *args], env=e, capture_output=True, text=True, timeout=30)
                rc, text = r.returncode, " ".join((r.stdout + r.stderr).split())
            except subprocess.TimeoutExpired:
                rc, text = None, "still running after 30 s"
            msg = text[text.find("Error"):][:130] if "Error" in text else text[-130:]
            if refuse:
                refused = rc not in (0, None) and all(n in text for n in names)
                check(refused, f"`loyalty {' '.join(args)}` with the chart's environment and {case}: exit {rc}: {msg}")
            else:
                # Past the key ring: it stops (or would run) for another reason than LOYALTY_PII_KEYS.
                past = "LOYALTY_PII_KEYS" not in text and "pii_keys" not in text
                check(past, f"`loyalty {' '.join(args)}` with the chart's environment and {case}: the ring is "
                      f"accepted, it stops later: exit {rc}: {msg}")
            subprocess.run(["rm", "-rf", e["LOYALTY_DATA_DIR"]], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target/debug/loyalty"))
    ap.add_argument("--dockerfile", default=str(ROOT / "Dockerfile"))
    ap.add_argument("--chart", default=str(ROOT / "charts/loyalty"))
    a = ap.parse_args()
    binary = Path(a.binary).resolve()
    if not binary.exists():
        print(f"image smoke test: {binary} does not exist (cargo build --bin loyalty first)")
        return 1
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"binary {binary} ({version}), as the image's /usr/local/bin/loyalty")
    print("the Dockerfile's runtime stage:")
    smoke_dockerfile(binary, Path(a.dockerfile))
    print("the chart's containers:")
    smoke_chart(binary, Path(a.chart))
    return summary("image smoke checks")


if __name__ == "__main__":
    sys.exit(main())
