#!/usr/bin/env python3
"""Checks of the Helm chart charts/loyalty, with real Helm (run by ./scripts/test.sh).

1. `helm lint --strict` (Helm's own Go SDK through PyPI `helm-python-sdk`, offline) with the
   default values and with each file of charts/loyalty/ci/, against Kubernetes v1.30.0.
2. Renders the chart with each of those value sets (as an install), writes every manifest under
   --out, and validates each object with `kubernetes-validate --strict -k 1.30.0`. That tool has
   no schema for custom resources: it only warns, and passes, on the prometheus-operator kinds
   (ServiceMonitor, PrometheusRule), so those are taken out and checked here against a minimal
   schema of the fields the chart uses (the operator's CRDs are not on this machine). A
   deliberately broken Deployment must fail kubernetes-validate, or the check fails (the
   validator would otherwise be shown passing things it cannot see).
3. Policy checks on what was rendered: non-root, read-only root filesystem, every capability
   dropped, seccomp RuntimeDefault; probes on /healthz and /readyz; the migrate Job as a
   pre-install/pre-upgrade hook; engine replicas at most the partition count; the admin key
   and the PII key ring (LOYALTY_PII_KEYS) from a Secret, each reference naming a key the
   chart's Secret holds (or the existing Secret given); a ring in the chart's Secret (given or
   generated) is a valid spec, and a generated one is `chart:` + base64 of 32 random bytes;
   every metric an alert or the Grafana dashboard uses exists in libs/core/src/metrics.rs;
   every alert has its section in docs/operations.md.
4. The values schema (and the templates' `fail` checks, for relations JSON Schema cannot
   express) reject bad values: each bad value set must be refused, with the expected message.
   Valid PII key rings in every form the binary reads are accepted, and the templates' own
   checks of piiKeys.value refuse the bad rings also with the schema out of the way (a copy of
   the chart without values.schema.json, as `--skip-schema-validation` would render it).

Exits non-zero if anything fails, and prints a short report.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml
from helm_python import chart as helm_chart
from helm_python import errors as helm_errors
import helm_python

ROOT = Path(__file__).resolve().parent.parent
KUBE_VERSION = "1.30.0"
NAMESPACE = "loyalty"
RELEASE = "loyalty"

# The CLI of PyPI kubernetes-validate: beside this interpreter (a venv), else on PATH.
_beside = Path(sys.executable).parent / "kubernetes-validate"
KUBERNETES_VALIDATE = str(_beside) if _beside.exists() else (shutil.which("kubernetes-validate") or "kubernetes-validate")

from checklib import bad, check, failures, ok, summary  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Custom resources: what the chart renders of them, against a minimal schema of each kind.
DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                   "labels": LABELS, "annotations": LABELS},
}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": META,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                        "any": {"type": "boolean"}}},
                    "selector": {"type": "object", "additionalProperties": False, "properties": {
                        "matchLabels": LABELS,
                        "matchExpressions": {"type": "array", "items": {
                            "type": "object", "required": ["key", "operator"], "additionalProperties": False,
                            "properties": {"key": {"type": "string"},
                                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                           "values": {"type": "array", "items": {"type": "string"}}}}}}},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "required": ["port"],
                        "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                                       "interval": DURATION, "scrapeTimeout": DURATION}}},
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": META,
            "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
                "groups": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "interval": DURATION,
                                   "rules": {"type": "array", "minItems": 1, "items": {
                                       "type": "object", "required": ["alert", "expr", "labels", "annotations"],
                                       "additionalProperties": False,
                                       "properties": {
                                           "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                           "expr": {"type": "string", "minLength": 1},
                                           "for": DURATION,
                                           "labels": {"type": "object", "required": ["severity"],
                                                      "additionalProperties": {"type": "string"},
                                                      "properties": {"severity": {"enum": ["critical", "warning", "info"]}}},
                                           "annotations": {"type": "object", "required": ["summary", "description"],
                                                           "additionalProperties": {"type": "string"}},
                                       }}}}}}}},
        },
    },
}

# Deployments kubernetes-validate --strict must refuse: an unknown field; a string replica count.
_DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: broken}}
  template:
    metadata:
      labels: {{app: broken}}
    spec:
      containers:
        - name: x
          image: x
          {pull}: Always
"""
BROKEN = {
    "unknown-field": (_DEPLOYMENT.format(replicas=1, pull="imagePullPolicyy"), "imagePullPolicyy"),
    "string-replicas": (_DEPLOYMENT.format(replicas='"two"', pull="imagePullPolicy"), "spec.replicas"),
}


def metric_names() -> set[str]:
    """The series libs/core/src/metrics.rs defines (a histogram's _bucket, _sum and _count)."""
    src = (ROOT / "libs/core/src/metrics.rs").read_text()
    names: set[str] = set()
    for m in re.finditer(r'"(loyalty_[a-z0-9_]+)"', src):
        n = m.group(1)
        names.add(n)
        names.update({n + "_bucket", n + "_sum", n + "_count"})
    return names


# Series the rules use that other exporters publish: Prometheus itself and kube-state-metrics.
FOREIGN = {"up", "kube_deployment_status_replicas_available", "kube_deployment_spec_replicas",
           "kube_statefulset_status_replicas_ready", "kube_statefulset_replicas"}


def series_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(loyalty_[a-z0-9_]+|kube_[a-z0-9_]+|up)\s*\{", expr))


def balanced(expr: str) -> bool:
    pairs = {")": "(", "}": "{", "]": "["}
    stack: list[str] = []
    in_str = False
    for ch in expr:
        if ch == '"':
            in_str = not in_str
        elif in_str:
            continue
        elif ch in "({[":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not in_str


# ---------------------------------------------------------------------------------------------
# LOYALTY_PII_KEYS (libs/core/src/sealing.rs, KeyRing::parse): `id:base64key` pairs separated by
# commas, the first sealing; each id 1 to 32 of [A-Za-z0-9_-], all distinct, never `dev`; each key
# exactly 32 bytes in base64 (standard or URL-safe, padded or not).
PII_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def ring_problems(spec: str) -> list[str]:
    """What the binary would refuse in a key ring spec (empty: a valid ring)."""
    problems: list[str] = []
    ids: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if ":" not in part:
            problems.append("an entry without `id:`")
            continue
        kid, key = (x.strip() for x in part.split(":", 1))
        if not PII_ID.match(kid):
            problems.append(f"id {kid[:40]!r} is not 1 to 32 of [A-Za-z0-9_-]")
        elif kid == "dev":
            problems.append("the dev ring's id `dev`")
        elif kid in ids:
            problems.append(f"id {kid!r} twice")
        ids.append(kid)
        raw = None
        for alt in (None, b"-_"):
            try:
                raw = base64.b64decode(key + "=" * (-len(key) % 4), altchars=alt, validate=True)
            except ValueError:
                continue
            # Canonical only, as data_encoding decodes: no bits set past the last byte.
            if base64.b64encode(raw, altchars=alt).decode().rstrip("=") != key.rstrip("="):
                raw = None
            break
        if raw is None or len(raw) != 32:
            problems.append(f"key {kid[:40]!r} is not 32 bytes in base64"
                            + ("" if raw is None else f" ({len(raw)} bytes)"))
    if not ids:
        problems.append("no key")
    return problems


def pii_key(n: int) -> str:
    """A fixed, valid 32-byte key in base64 (test values only)."""
    return base64.b64encode(hashlib.sha256(f"check_chart pii key {n}".encode()).digest()).decode()


def load_values(path: Path | None) -> dict | None:
    return yaml.safe_load(path.read_text()) if path else None


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def lint(chart_dir: Path, label: str, values: dict | None) -> None:
    report = helm_chart.lint(chart_dir, values, strict=True, kube_version="v" + KUBE_VERSION)
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    infos = [m["error"] for m in report.get("messages", []) if m.get("severity", 0) == 1]
    if problems or report.get("errors"):
        detail = "; ".join(f"{m['path']}: {m['error'].strip()}" for m in problems) or "; ".join(report["errors"])
        bad(f"lint --strict {label}: {detail}")
    else:
        extra = f" (info: {'; '.join(infos)})" if infos else ""
        ok(f"lint --strict {label}{extra}")


def render(chart_dir: Path, values: dict | None) -> dict[str, str]:
    c = helm_chart.Chart.load(chart_dir)
    return c.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects_of(label: str, rendered: dict[str, str]) -> list[tuple[str, dict]]:
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            bad(f"{label}: {path} is not valid YAML: {' '.join(str(e).split())}")
            continue
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= set(doc):
                bad(f"{label}: {path} renders something that is not a Kubernetes object: {str(doc)[:120]}")
                continue
            out.append((path, doc))
    return out


def kubernetes_validate(files: list[Path]) -> tuple[bool, str]:
    p = subprocess.run([KUBERNETES_VALIDATE, "--strict", "--quiet", "-k", KUBE_VERSION, *map(str, files)],
                       capture_output=True, text=True)
    text = (p.stdout + p.stderr).strip()
    # --quiet prints warnings and failures only; a warning (no schema for a kind) is a failure here,
    # since custom resources were taken out before.
    return p.returncode == 0 and not text, text


def validate_set(label: str, rendered: dict[str, str], out_dir: Path) -> list[tuple[str, dict]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.yaml"):
        old.unlink()
    objs = objects_of(label, rendered)
    files: list[Path] = []
    kinds: list[str] = []
    crds: list[str] = []
    for n, (path, obj) in enumerate(objs):
        kind, api = obj.get("kind"), obj.get("apiVersion")
        f = out_dir / f"{n:02d}-{kind.lower()}-{obj['metadata']['name']}.yaml"
        f.write_text(yaml.safe_dump(obj, sort_keys=False))
        schema = CRD_SCHEMAS.get((api, kind))
        if schema is not None:
            errs = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
            if errs:
                bad(f"{label}: {kind}/{obj['metadata']['name']} against its minimal schema: "
                    + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errs[:5]))
            else:
                crds.append(kind)
            continue
        files.append(f)
        kinds.append(kind)
    valid, text = kubernetes_validate(files)
    if valid:
        ok(f"{label}: {len(files)} objects valid for Kubernetes {KUBE_VERSION} (kubernetes-validate --strict): "
           + ", ".join(sorted(set(kinds))))
    else:
        bad(f"{label}: kubernetes-validate --strict -k {KUBE_VERSION}:\n{text}")
    if crds:
        ok(f"{label}: {', '.join(crds)} (custom resources: kubernetes-validate has no schema for "
           "monitoring.coreos.com/v1) valid against this script's minimal schema of each")
    return objs


def policy(label: str, objs: list[tuple[str, dict]], values: dict) -> None:
    by_kind: dict[str, list[dict]] = {}
    for _, o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    pods = [(o["kind"], o["metadata"]["name"], o["spec"]["template"]["spec"])
            for kind in ("Deployment", "StatefulSet", "Job") for o in by_kind.get(kind, [])]
    problems = []
    secret_refs: list[tuple[str, str, dict]] = []
    for kind, name, spec in pods:
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{kind}/{name}: pod securityContext without runAsNonRoot or seccomp RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{kind}/{name}: mounts a service account token")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                    and "ALL" in sc.get("capabilities", {}).get("drop", []) and sc.get("runAsNonRoot") is True):
                problems.append(f"{kind}/{name}/{c['name']}: not read-only, non-root, without privilege escalation and capabilities")
            if "memory" not in c.get("resources", {}).get("limits", {}) or "requests" not in c.get("resources", {}):
                problems.append(f"{kind}/{name}/{c['name']}: no resource requests or memory limit")
            if kind != "Job":
                probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("livenessProbe", "readinessProbe", "startupProbe")}
                if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}:
                    problems.append(f"{kind}/{name}/{c['name']}: probes {probes}")
                env = {e["name"]: e for e in c.get("env", [])}
                for var in ("LOYALTY_ADMIN_KEY", "LOYALTY_PII_KEYS"):
                    ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef")
                    if not ref or "value" in env.get(var, {}):
                        problems.append(f"{kind}/{name}/{c['name']}: {var} not from a Secret")
                    else:
                        secret_refs.append((f"{kind}/{name}/{c['name']}", var, ref))
    check(not problems, f"{label}: {len(pods)} workloads non-root, read-only, capabilities dropped, seccomp "
          f"RuntimeDefault, resources set, probes /healthz + /readyz, admin key and PII key ring from a Secret"
          + ("" if not problems else ":\n        " + "\n        ".join(problems)))

    sts = by_kind.get("StatefulSet", [])
    partitions = int(values["partitions"])
    cm = next(o for o in by_kind["ConfigMap"] if o["metadata"]["name"] == RELEASE)
    check(len(sts) == 1 and sts[0]["spec"]["replicas"] <= int(cm["data"]["LOYALTY_PARTITIONS"]) == partitions
          and sts[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60,
          f"{label}: engines {sts[0]['spec']['replicas'] if sts else '?'} ≤ partitions "
          f"{cm['data']['LOYALTY_PARTITIONS']}, grace period "
          f"{sts[0]['spec']['template']['spec']['terminationGracePeriodSeconds'] if sts else '?'} s ≥ 60 s")
    jobs = by_kind.get("Job", [])
    hooks = [j["metadata"].get("annotations", {}).get("helm.sh/hook") for j in jobs]
    args = [j["spec"]["template"]["spec"]["containers"][0].get("args") for j in jobs]
    check(hooks == ["pre-install,pre-upgrade"] and args == [["migrate"]],
          f"{label}: `loyalty migrate` is a pre-install,pre-upgrade hook Job ({hooks}, {args})")
    secrets = by_kind.get("Secret", [])
    dev = [s["metadata"]["name"] for s in secrets
           if any(base64.b64decode(v).decode(errors="replace").strip() == "dev-admin-key" for v in s.get("data", {}).values())]
    check(not dev, f"{label}: no Secret holds the dev admin key")
    pii_secrets(label, secrets, secret_refs, values)
    kinds = sorted(by_kind)
    need = {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap", "Job", "ServiceAccount"}
    check(need <= set(kinds), f"{label}: renders {', '.join(kinds)}")


def pii_secrets(label: str, secrets: list[dict], refs: list[tuple[str, str, dict]], values: dict) -> None:
    """The gateways' and engines' secret references resolve (to the chart's Secret, which holds
    the key they name, or to the existing Secret the values give), and every PII key ring the
    chart writes is one the binary reads: given as is, generated as `chart:` + 32 random bytes."""
    own = {s["metadata"]["name"]: s.get("data", {}) for s in secrets if s["metadata"]["name"] == RELEASE}
    given = {"LOYALTY_ADMIN_KEY": values["adminKey"], "LOYALTY_PII_KEYS": values["piiKeys"]}
    unresolved = []
    for where, var, ref in refs:
        existing = given[var]["existingSecret"]
        if existing:
            fine = ref == {"name": existing, "key": given[var]["existingSecretKey"]}
        else:
            fine = ref.get("name") in own and ref.get("key") in own[ref["name"]]
        if not fine:
            unresolved.append(f"{where}: {var} -> {ref}")
    check(refs and not unresolved,
          f"{label}: the {len(refs)} admin key and PII key ring references name the chart's Secret and a key "
          "it holds, or the existing Secret given" + ("" if not unresolved else ": " + "; ".join(unresolved)))
    pii = values["piiKeys"]
    if pii["existingSecret"]:
        check(not any("pii-keys" in d for d in own.values()),
              f"{label}: the PII key ring is in the existing Secret {pii['existingSecret']} "
              f"(key {pii['existingSecretKey']}), not in the chart's")
        return
    data = own.get(RELEASE, {})
    if "pii-keys" not in data:
        bad(f"{label}: the chart's Secret has no pii-keys")
        return
    ring = base64.b64decode(data["pii-keys"]).decode(errors="replace")
    problems = ring_problems(ring)
    if pii["value"]:
        check(not problems and ring == pii["value"],
              f"{label}: the chart's Secret holds piiKeys.value, a valid ring of "
              f"{len([p for p in ring.split(',') if p.strip()])} key(s)"
              + ("" if not problems else f": {'; '.join(problems)}"))
        return
    generated = re.fullmatch(r"chart:([A-Za-z0-9+/]{43}=)", ring)
    check(not problems and generated is not None,
          f"{label}: the generated ring is `chart:` + base64 of exactly 32 bytes, a spec the binary reads"
          + ("" if not problems and generated else f" (got {len(ring)} characters: {'; '.join(problems) or 'not chart:<base64>'})"))


def generated_rings_differ(chart_dir: Path) -> None:
    rings = []
    for _ in range(2):
        for path, text in render(chart_dir, None).items():
            if path.endswith("NOTES.txt"):
                continue
            for o in yaml.safe_load_all(text):
                if o and o.get("kind") == "Secret" and o["metadata"]["name"] == RELEASE:
                    rings.append(o["data"].get("pii-keys"))
    check(len(rings) == 2 and None not in rings and rings[0] != rings[1],
          "two installs with piiKeys.generate get two different rings (randBytes; an upgrade keeps the "
          "release's own through lookup)")


def metrics_used(objs: list[tuple[str, dict]], chart_dir: Path, known: set[str]) -> None:
    used: dict[str, set[str]] = {}
    for _, o in objs:
        if o["kind"] == "PrometheusRule":
            for g in o["spec"]["groups"]:
                for r in g["rules"]:
                    if not balanced(r["expr"]):
                        bad(f"alert {r['alert']}: unbalanced brackets or quotes in {r['expr']!r}")
                    for s in series_in(r["expr"]):
                        used.setdefault(s, set()).add(f"alert {r['alert']}")
    dash = json.loads((chart_dir / "files/grafana-dashboard.json").read_text())
    panels = 0
    for p in dash["panels"]:
        for t in p.get("targets", []):
            panels += 1
            if not balanced(t["expr"]):
                bad(f"dashboard panel {p['title']!r}: unbalanced brackets or quotes in {t['expr']!r}")
            for s in series_in(t["expr"]):
                used.setdefault(s, set()).add(f"panel {p['title']!r}")
    # Every shipped alert has its entry in the runbook (a `### <alert>` heading).
    runbook = ROOT / "docs/operations.md"
    headings = set(re.findall(r"^#{2,4} +`?([A-Za-z0-9]+)`?\s*$", runbook.read_text(), re.M)) if runbook.exists() else set()
    alerts = sorted({r["alert"] for _, o in objs if o["kind"] == "PrometheusRule"
                     for g in o["spec"]["groups"] for r in g["rules"]})
    missing = [a for a in alerts if a not in headings]
    check(alerts and not missing, f"each of the {len(alerts)} alerts has its section in docs/operations.md"
          + ("" if not missing else f": missing {', '.join(missing)}"))
    unknown = {s: w for s, w in used.items() if s not in known and s not in FOREIGN}
    check(not unknown and used,
          f"{len(used)} series used by the alerts and the dashboard ({panels} queries) are all defined in "
          "libs/core/src/metrics.rs (or are Prometheus' `up` and kube-state-metrics')"
          + ("" if not unknown else ": unknown " + "; ".join(f"{s} ({', '.join(sorted(w))})" for s, w in sorted(unknown.items()))))
    unused = sorted(n for n in known if not re.search(r"_(bucket|sum|count)$", n)
                    and not any(u == n or u.startswith(n + "_") for u in used))
    if unused:
        print(f"  note  metrics not on the dashboard nor in an alert: {', '.join(unused)}")


# Bad values: (what, values over the defaults (or ("production", values over
# ci/production-values.yaml)), text the refusal must contain).
BAD_VALUES = [
    ("engine.replicas above partitions (13 > 12)", {"engine": {"replicas": 13}}, "engine.replicas (13) is above partitions (12)"),
    ("engine.replicas above partitions (25 > 24, production values)", ("production", {"engine": {"replicas": 25}}), "engine.replicas (25) is above partitions (24)"),
    ("engine.replicas above 1024", {"partitions": 1024, "engine": {"replicas": 1025}}, "/engine/replicas"),
    ("partitions as a string", {"partitions": "twelve"}, "/partitions"),
    ("engine.replicas as a string", {"engine": {"replicas": "3"}}, "/engine/replicas"),
    ("partitions 0", {"partitions": 0}, "/partitions"),
    ("unknown top-level key (replicaCount)", {"replicaCount": 3}, "replicaCount"),
    ("unknown nested key (gateway.replica)", {"gateway": {"replica": 2}}, "replica"),
    ("admin key = the dev default", {"adminKey": {"value": "dev-admin-key"}}, "/adminKey/value"),
    ("admin key too short", {"adminKey": {"value": "short"}}, "/adminKey/value"),
    ("no admin key, generation off", {"adminKey": {"generate": False}}, "an admin key is required"),
    ("no PII key ring, generation off", {"piiKeys": {"generate": False}}, "a key ring for members' personal data is required"),
    ("no PII key ring (production values without piiKeys)", ("production", {"piiKeys": {"existingSecret": "", "generate": False}}),
     "Set piiKeys.existingSecret (a Secret of yours, key piiKeys.existingSecretKey), piiKeys.value"),
    ("PII key ring with the dev id first", {"piiKeys": {"value": f"dev:{pii_key(1)}"}}, "/piiKeys/value"),
    ("PII key ring with the dev id second", {"piiKeys": {"value": f"k2:{pii_key(2)},dev:{pii_key(1)}"}}, "/piiKeys/value"),
    ("PII key of 16 bytes", {"piiKeys": {"value": "k1:" + base64.b64encode(bytes(16)).decode()}}, "/piiKeys/value"),
    ("PII key without an id", {"piiKeys": {"value": pii_key(1)}}, "/piiKeys/value"),
    ("PII key id of 33 characters", {"piiKeys": {"value": "k" * 33 + ":" + pii_key(1)}}, "/piiKeys/value"),
    ("PII key ring giving an id twice", {"piiKeys": {"value": f"k1:{pii_key(2)},k1:{pii_key(1)}"}},
     "piiKeys.value gives the key id `k1` twice"),
    ("gateway.extraEnv setting LOYALTY_PII_KEYS", {"gateway": {"extraEnv": [{"name": "LOYALTY_PII_KEYS", "value": f"k1:{pii_key(1)}"}]}},
     "gateway.extraEnv or engine.extraEnv sets LOYALTY_PII_KEYS"),
    ("config.extraEnv setting LOYALTY_PII_KEYS", {"config": {"extraEnv": {"LOYALTY_PII_KEYS": f"k1:{pii_key(1)}"}}},
     "config.extraEnv sets LOYALTY_PII_KEYS"),
    ("store.type not postgres|scylla", {"store": {"type": "mysql"}}, "/store/type"),
    ("scylla without nodes", {"store": {"type": "scylla"}}, "store.type=scylla needs store.scylla.nodes"),
    ("postgres without URL or secret", {"store": {"postgres": {"existingSecret": ""}}}, "store.type=postgres needs"),
    ("kafka.brokers empty", {"kafka": {"brokers": ""}}, "/kafka/brokers"),
    ("heartbeat above a third of the session", {"kafka": {"heartbeatMs": 20000}}, "kafka.heartbeatMs (20000) must be at most a third"),
    ("root allowed (runAsNonRoot false)", {"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ("privilege escalation allowed", {"securityContext": {"allowPrivilegeEscalation": True}}, "/securityContext/allowPrivilegeEscalation"),
    ("capabilities not dropped", {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}, "/securityContext/capabilities/drop"),
    ("POS topic = the command topic", {"topics": {"pos": "pos-commands"}}, "topics must all differ"),
    ("topic with a space", {"topics": {"commands": "pos commands"}}, "/topics/commands"),
    ("engine grace period 10 s", {"engine": {"terminationGracePeriodSeconds": 10}}, "/engine/terminationGracePeriodSeconds"),
    ("gateway grace shorter than preStop + drain", {"gateway": {"preStopSleepSeconds": 30}}, "gateway.terminationGracePeriodSeconds (45) must cover"),
    ("alert threshold at the histogram's last bucket", {"metrics": {"prometheusRule": {"engineLagP99Seconds": 5}}}, "/metrics/prometheusRule/engineLagP99Seconds"),
    ("config.extraEnv setting a variable the chart sets", {"config": {"extraEnv": {"LOYALTY_PARTITIONS": "3"}}}, "config.extraEnv sets LOYALTY_PARTITIONS"),
    ("pull policy not an enum value", {"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
]


# piiKeys.value the templates themselves must refuse, the schema out of the way (it refuses most
# of them first): (what, value, text of the template's refusal).
BAD_RINGS = [
    ("the dev id first", f"dev:{pii_key(1)}", "piiKeys.value has a key `dev:...`, the dev key ring's id"),
    ("the dev id second", f"k2:{pii_key(2)}, dev:{pii_key(1)}", "piiKeys.value has a key `dev:...`, the dev key ring's id"),
    ("a key of 16 bytes", "k1:" + base64.b64encode(bytes(16)).decode(), "the key `k1` is not exactly 32 bytes in base64"),
    ("a key of 33 bytes", "k1:" + base64.b64encode(bytes(33)).decode(), "the key `k1` is not exactly 32 bytes in base64"),
    ("a key with bits past its 32 bytes", "k1:" + pii_key(1)[:42] + "B=", "the key `k1` is not exactly 32 bytes in base64"),
    ("a key without an id", pii_key(1), "piiKeys.value has an entry without `id:`"),
    ("an id with a space", f"k 1:{pii_key(1)}", "a key id that is not 1 to 32 letters"),
    ("an id of 33 characters", "k" * 33 + ":" + pii_key(1), "a key id that is not 1 to 32 letters"),
    ("an id given twice", f"k1:{pii_key(2)},k1:{pii_key(1)}", "piiKeys.value gives the key id `k1` twice"),
    ("only commas", " , ,", "piiKeys.value holds no key"),
]

# Rings in every form the binary reads (KeyRing::parse): they must render.
GOOD_RINGS = [
    ("one key, padded standard base64", f"k1:{pii_key(1)}"),
    ("two keys, the new one first (a rotation)", f"k2:{pii_key(2)},k1:{pii_key(1)}"),
    ("URL-safe base64 without padding, spaces around the entries and the colon",
     f" k_2 : {pii_key(2).replace('+', '-').replace('/', '_').rstrip('=')} , K-1:{pii_key(1).rstrip('=')} ,"),
    ("an id of 32 characters", "k" * 32 + ":" + pii_key(1)),
]


def pii_rings(chart_dir: Path) -> None:
    for what, ring in GOOD_RINGS:
        assert not ring_problems(ring), (what, ring_problems(ring))
        try:
            render(chart_dir, {"piiKeys": {"value": ring}})
        except helm_errors.HelmError as e:
            bad(f"valid PII key ring REFUSED: {what}: {' '.join(str(e).split())[:300]}")
        else:
            ok(f"valid PII key ring accepted: {what}")
    with tempfile.TemporaryDirectory(prefix="loyalty-chart-noschema-") as tmp:
        bare = Path(tmp) / chart_dir.name
        shutil.copytree(chart_dir, bare)
        (bare / "values.schema.json").unlink()
        for what, ring, expect in BAD_RINGS:
            assert ring_problems(ring), what
            try:
                render(bare, {"piiKeys": {"value": ring}})
            except helm_errors.HelmError as e:
                flat = " ".join(str(e).split())
                check(expect in flat, f"refused by the template (schema skipped): PII key ring with {what}: "
                      + (flat[flat.find(expect):][:100] if expect in flat else f"not for the expected reason ({expect!r}): {flat[:300]}"))
            else:
                bad(f"bad PII key ring ACCEPTED by the templates (schema skipped): {what} ({ring!r})")


def rejections(chart_dir: Path, production: dict) -> None:
    for what, over, expect in BAD_VALUES:
        values = merge(production, over[1]) if isinstance(over, tuple) else over
        try:
            render(chart_dir, values)
        except helm_errors.HelmValuesError as e:
            by, msg = "schema", str(e)
        except helm_errors.HelmRenderError as e:
            by, msg = "template", str(e)
        except helm_errors.HelmError as e:
            by, msg = type(e).__name__, str(e)
        else:
            bad(f"bad value ACCEPTED: {what} ({over})")
            continue
        flat = " ".join(msg.split())
        if expect in flat:
            shown = flat[flat.find(expect):][:110] if by == "template" else flat.split("loyalty:", 1)[-1].strip()[:110]
            ok(f"refused by the {by}: {what}: {shown}")
        else:
            bad(f"{what}: refused by the {by}, but not for the expected reason ({expect!r}): {flat[:300]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chart", default=str(ROOT / "charts/loyalty"))
    ap.add_argument("--out", default=str(ROOT / "target/chart-check"))
    a = ap.parse_args()
    chart_dir, out = Path(a.chart), Path(a.out)
    meta = helm_chart.Chart.load(chart_dir).metadata
    kv = subprocess.run([KUBERNETES_VALIDATE, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"chart {chart_dir.relative_to(ROOT) if chart_dir.is_relative_to(ROOT) else chart_dir} "
          f"({meta['name']} {meta['version']}, app {meta.get('appVersion')}); Helm SDK {helm_python.helm_sdk_version()} "
          f"(helm-python-sdk); kubernetes-validate {kv}; Kubernetes {KUBE_VERSION}")

    sets: list[tuple[str, dict | None]] = [("default values", None)]
    for f in sorted((chart_dir / "ci").glob("*.yaml")):
        sets.append((f"ci/{f.name}", load_values(f)))
    production = next(v for n, v in sets if n == "ci/production-values.yaml")

    print("lint:")
    for label, values in sets:
        lint(chart_dir, label, values)

    print(f"render (install of {RELEASE!r} in {NAMESPACE!r}) and validate; manifests in {out}:")
    out.mkdir(parents=True, exist_ok=True)
    for what, (manifest, expect) in BROKEN.items():
        broken = out / f"broken-{what}.yaml"
        broken.write_text(manifest)
        accepted, text = kubernetes_validate([broken])
        check(not accepted and expect in text,
              f"kubernetes-validate --strict refuses a Deployment with a bad field ({what}): {text.split(': ', 1)[-1][:90]}"
              if not accepted else f"kubernetes-validate ACCEPTED a broken Deployment ({what}): the validation below would prove nothing")
    rendered_sets = []
    for label, values in sets:
        try:
            rendered = render(chart_dir, values)
        except helm_errors.HelmError as e:
            bad(f"{label}: render failed: {e}")
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        objs = validate_set(label, rendered, out / slug)
        rendered_sets.append((label, values, objs))

    print("what was rendered:")
    defaults = helm_chart.Chart.load(chart_dir).values
    for label, values, objs in rendered_sets:
        policy(label, objs, merge(defaults, values or {}))
    generated_rings_differ(chart_dir)
    prod_objs = next(o for n, _, o in rendered_sets if n == "ci/production-values.yaml")
    metrics_used(prod_objs, chart_dir, metric_names())

    print("the values schema and the templates refuse bad values:")
    rejections(chart_dir, production)
    pii_rings(chart_dir)

    return summary("chart checks")


if __name__ == "__main__":
    sys.exit(main())
