#!/usr/bin/env bash
# Checks everything under deploy/ without a cluster or a Docker engine:
#
#   1. every manifest in deploy/k8s against the Kubernetes OpenAPI schemas, strictly
#      (unknown fields are errors), with kubernetes-validate's offline schemas, for
#      the oldest Kubernetes these manifests support and the newest the tool knows;
#   2. kustomization.yaml lists exactly the manifests in deploy/k8s, and (where
#      kubectl is installed) its rendered output validates too;
#   3. the manifests agree with each other and with the Dockerfile: selectors
#      match pod labels, named ports and referenced ConfigMaps exist, probe and
#      scrape ports are the container's ports;
#   4. the Grafana dashboard is valid JSON, well formed, and every PromQL
#      expression in it parses.
#
# Usage: deploy/validate.sh            (from anywhere; exits non-zero on any failure)
#        KUBE_VERSIONS="1.31.0 1.33.0" deploy/validate.sh   to pick the versions.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s="$here/k8s"
dashboard="$here/grafana/lockd-dashboard.json"

# The oldest Kubernetes the manifests are written for: the preStop `sleep` action
# is on by default from 1.30 (native gRPC probes need 1.27).
MIN_KUBE_VERSION="1.30.0"

PY="${PYTHON:-python3}"
passed=0
failed=0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

ok() { passed=$((passed + 1)); echo "ok    $*"; }
fail() { failed=$((failed + 1)); echo "FAIL  $*"; }

# Installs a PyPI package into the interpreter that runs the checks, if missing.
ensure_py() {
    local module="$1" package="$2"
    "$PY" -c "import $module" 2>/dev/null && return 0
    echo "installing $package from PyPI"
    "$PY" -m pip install --quiet "$package" 2>/dev/null \
        || "$PY" -m pip install --quiet --break-system-packages "$package" 2>/dev/null \
        || { echo "cannot install $package"; return 1; }
}

# Runs kubernetes-validate --strict; passes only on exit 0 with no WARN/ERROR line
# (a resource whose schema it does not know is only a warning there, and here a
# failure: these manifests use no custom resources).
kv() {
    local version="$1" label="$2"
    shift 2
    local out
    out="$("$PY" -m kubernetes_validate --strict -k "$version" "$@" 2>&1)"
    local rc=$?
    if [[ $rc -eq 0 ]] && ! grep -qE '^(WARN|ERROR)' <<<"$out"; then
        ok "kubernetes-validate --strict -k $version: $label ($(grep -c passed <<<"$out") resources)"
    else
        echo "$out" | grep -vE '^INFO'
        fail "kubernetes-validate --strict -k $version: $label"
    fi
}

# ---- 1. schemas --------------------------------------------------------------
mapfile -t manifests < <(cd "$k8s" && ls -1 ./*.yaml | sed 's|^\./||' | grep -vx 'kustomization.yaml' | sort)
if [[ ${#manifests[@]} -eq 0 ]]; then
    fail "no manifests found in $k8s"
fi

if ensure_py yaml PyYAML && ensure_py kubernetes_validate kubernetes-validate; then
    latest="$("$PY" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')"
    versions="${KUBE_VERSIONS:-$MIN_KUBE_VERSION $latest}"
    echo "kubernetes-validate $("$PY" -m kubernetes_validate --version); Kubernetes versions: $versions"
    for v in $versions; do
        kv "$v" "deploy/k8s/*.yaml" "${manifests[@]/#/$k8s/}"
    done
else
    fail "kubernetes-validate is not available"
fi

# ---- 2. kustomization ----------------------------------------------------------
if "$PY" - "$k8s" <<'EOF'
import os, sys, yaml
k8s = sys.argv[1]
with open(os.path.join(k8s, "kustomization.yaml")) as f:
    kz = yaml.safe_load(f)
listed = kz.get("resources", [])
present = sorted(n for n in os.listdir(k8s) if n.endswith((".yaml", ".yml")) and n != "kustomization.yaml")
errors = []
if kz.get("kind") != "Kustomization":
    errors.append("kind is not Kustomization")
if kz.get("namespace") != "lockd":
    errors.append("namespace is not lockd")
errors += [f"{n} is not in resources" for n in present if n not in listed]
errors += [f"resources lists {n}, which does not exist" for n in listed if n not in present]
errors += [f"resources lists {n} twice" for n in set(listed) if listed.count(n) > 1]
for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
EOF
then ok "kustomization.yaml lists every manifest exactly once"
else fail "kustomization.yaml resources"
fi

if command -v kubectl >/dev/null 2>&1; then
    if kubectl kustomize "$k8s" >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err"; then
        ok "kubectl kustomize deploy/k8s renders ($(grep -c '^kind:' "$tmp/rendered.yaml") resources)"
        for v in ${versions:-}; do
            kv "$v" "kustomize output" "$tmp/rendered.yaml"
        done
    else
        cat "$tmp/kustomize.err"
        fail "kubectl kustomize deploy/k8s"
    fi
else
    echo "skip  kubectl not installed: rendered kustomize output not checked"
fi

# ---- 3. cross-references ---------------------------------------------------------
if "$PY" - "$k8s" "$here/Dockerfile" <<'EOF'
import os, re, sys, yaml
k8s, dockerfile = sys.argv[1], sys.argv[2]
docs = []
for name in sorted(os.listdir(k8s)):
    if name.endswith(".yaml") and name != "kustomization.yaml":
        with open(os.path.join(k8s, name)) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "lockd":
        print(f"  {d['kind']}/{d['metadata']['name']} is not in namespace lockd")
        sys.exit(1)

errors = []
workloads = list(by_kind.get("Deployment", {}).values()) + list(by_kind.get("StatefulSet", {}).values())

def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

def pods_for(selector):
    return [w for w in workloads if matches(selector, w["spec"]["template"]["metadata"]["labels"])]

def containers(w):
    return w["spec"]["template"]["spec"]["containers"]

def container_ports(w):
    return {p["name"]: p["containerPort"] for c in containers(w) for p in c.get("ports", [])}

for w in workloads:
    ref = f"{w['kind']}/{w['metadata']['name']}"
    if not matches(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]):
        errors.append(f"{ref}: selector does not match its own pod labels")
    spec = w["spec"]["template"]["spec"]
    sa = spec.get("serviceAccountName")
    if sa and sa not in by_kind.get("ServiceAccount", {}):
        errors.append(f"{ref}: ServiceAccount {sa} is not defined")
    for v in spec.get("volumes", []):
        if "configMap" in v and v["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
            errors.append(f"{ref}: volume ConfigMap {v['configMap']['name']} is not defined")
    ports = set(container_ports(w).values())
    for c in containers(w):
        for e in c.get("envFrom", []):
            cm = e.get("configMapRef", {}).get("name")
            if cm and cm not in by_kind.get("ConfigMap", {}):
                errors.append(f"{ref}: envFrom ConfigMap {cm} is not defined")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe, {})
            port = (p.get("grpc") or {}).get("port")
            if port is not None and port not in ports:
                errors.append(f"{ref}: {probe} gRPC port {port} is not a container port")
    if w["kind"] == "StatefulSet":
        svc = by_kind.get("Service", {}).get(w["spec"]["serviceName"])
        if not svc or svc["spec"].get("clusterIP") != "None":
            errors.append(f"{ref}: serviceName {w['spec']['serviceName']} is not a headless Service here")

for svc in by_kind.get("Service", {}).values():
    ref = f"Service/{svc['metadata']['name']}"
    targets = pods_for(svc["spec"]["selector"])
    if not targets:
        errors.append(f"{ref}: selector matches no pod template")
    for p in svc["spec"]["ports"]:
        tp = p.get("targetPort", p["port"])
        for w in targets:
            cp = container_ports(w)
            if (isinstance(tp, str) and tp not in cp) or (isinstance(tp, int) and tp not in cp.values()):
                errors.append(f"{ref}: targetPort {tp} is not a port of {w['metadata']['name']}")

for pdb in by_kind.get("PodDisruptionBudget", {}).values():
    targets = pods_for(pdb["spec"]["selector"]["matchLabels"])
    if not targets:
        errors.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: selector matches no pod template")
    for w in targets:
        if w["spec"].get("replicas", 1) <= pdb["spec"].get("minAvailable", 0):
            errors.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: minAvailable leaves no eviction for {w['metadata']['name']}")

for np in by_kind.get("NetworkPolicy", {}).values():
    if not pods_for(np["spec"]["podSelector"]["matchLabels"]):
        errors.append(f"NetworkPolicy/{np['metadata']['name']}: podSelector matches no pod template")
    # Only peers of this namespace must be pods defined here; a peer with a
    # namespaceSelector may be anyone's pods (clients, Prometheus, DNS), and an
    # empty podSelector means every pod of the namespace.
    peers = [p for rule in np["spec"].get("ingress", []) for p in rule.get("from", [])]
    peers += [p for rule in np["spec"].get("egress", []) for p in rule.get("to", [])]
    for peer in peers:
        labels = (peer.get("podSelector") or {}).get("matchLabels")
        if "namespaceSelector" not in peer and labels and not pods_for(labels):
            errors.append(f"NetworkPolicy/{np['metadata']['name']}: a podSelector peer matches no pod template")
    # Secrets that pods read must be defined here.
    for w in workloads:
        for c in containers(w):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["name"] not in by_kind.get("Secret", {}):
                    errors.append(f"{w['kind']}/{w['metadata']['name']}: Secret {ref['name']} is not defined")

# lockd itself: the Deployment, the Dockerfile and the scrape annotations agree.
lockd = by_kind.get("Deployment", {}).get("lockd")
if not lockd:
    errors.append("Deployment/lockd is missing")
else:
    cp = container_ports(lockd)
    ann = lockd["spec"]["template"]["metadata"].get("annotations", {})
    if int(ann.get("prometheus.io/port", -1)) != cp.get("http"):
        errors.append("Deployment/lockd: prometheus.io/port is not the http container port")
    with open(dockerfile) as f:
        text = f.read()
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.*)$", text, re.M) for p in line.split()}
    if exposed != set(cp.values()):
        errors.append(f"Dockerfile EXPOSE {sorted(exposed)} != Deployment/lockd ports {sorted(cp.values())}")
    cfg = by_kind.get("ConfigMap", {}).get("lockd-config", {}).get("data", {})
    for key, port in (("LOCKD_LISTEN", cp.get("grpc")), ("LOCKD_HTTP_LISTEN", cp.get("http"))):
        if not str(cfg.get(key, "")).endswith(f":{port}"):
            errors.append(f"ConfigMap/lockd-config: {key} does not listen on container port {port}")

# Redis is configured for lockd's keyspace notifications and durable.
redis_conf = by_kind.get("ConfigMap", {}).get("redis-config", {}).get("data", {}).get("redis.conf", "")
conf = {}
for line in redis_conf.splitlines():
    parts = line.split(None, 1)
    if parts and not parts[0].startswith("#"):
        conf[parts[0]] = parts[1].strip('"') if len(parts) > 1 else ""
if not set("Kghxze") <= set(conf.get("notify-keyspace-events", "")):
    errors.append("redis.conf: notify-keyspace-events lacks some of Kghxze")
if conf.get("appendonly") != "yes":
    errors.append("redis.conf: appendonly is not yes")
if conf.get("maxmemory-policy") != "noeviction":
    errors.append("redis.conf: maxmemory-policy is not noeviction")

for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
EOF
then ok "manifests agree with each other and with the Dockerfile"
else fail "cross-references between manifests"
fi

# ---- 4. dashboard ------------------------------------------------------------------
if "$PY" -m json.tool "$dashboard" >/dev/null; then
    ok "grafana/lockd-dashboard.json is valid JSON (python3 -m json.tool)"
else
    fail "grafana/lockd-dashboard.json is not valid JSON"
fi

if ensure_py promql_parser promql-parser && "$PY" - "$dashboard" <<'EOF'
import json, re, sys
import promql_parser
with open(sys.argv[1]) as f:
    d = json.load(f)
errors = []
if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
    errors.append("schemaVersion is missing or older than 36")
variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
    errors.append("no Prometheus datasource variable named datasource")
ids, exprs = set(), []
for p in d.get("panels", []):
    if p["id"] in ids:
        errors.append(f"panel id {p['id']} is used twice")
    ids.add(p["id"])
    if p["type"] == "row":
        continue
    g = p.get("gridPos", {})
    if not all(k in g for k in "xywh") or g["x"] + g["w"] > 24:
        errors.append(f"panel {p['title']!r}: bad gridPos {g}")
    if p.get("datasource", {}).get("uid") != "${datasource}":
        errors.append(f"panel {p['title']!r}: does not use the datasource variable")
    if not p.get("targets"):
        errors.append(f"panel {p['title']!r}: no queries")
    for t in p.get("targets", []):
        exprs.append((p["title"], t.get("expr", "")))
for v in variables.values():
    if v.get("type") == "query":
        exprs.append((f"variable {v['name']}", None))
# Grafana's variables are not PromQL: give them values before parsing.
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
known = {"lockd_grants_total", "lockd_releases_total", "lockd_expiries_total", "lockd_renewals_total",
         "lockd_wait_timeouts_total", "lockd_errors_total", "lockd_acquire_wait_seconds_bucket",
         "lockd_hold_seconds_bucket", "lockd_rpc_duration_seconds_bucket", "lockd_waiters",
         "lockd_active_leases", "lockd_redis_up"}
for title, expr in exprs:
    if expr is None:
        continue
    if not expr.strip():
        errors.append(f"{title}: empty query")
        continue
    e = expr
    for k, v in subst.items():
        e = e.replace(k, v)
    try:
        promql_parser.parse(e)
    except Exception as ex:
        errors.append(f"{title}: PromQL does not parse: {ex}: {expr}")
    for m in re.findall(r"\blockd_[a-z_]+", e):
        if m not in known:
            errors.append(f"{title}: unknown metric {m}")
for e in errors:
    print("  " + e)
print(f"  {len(ids)} panels, {sum(1 for _, e in exprs if e)} PromQL expressions")
sys.exit(1 if errors else 0)
EOF
then ok "dashboard panels are well formed and their PromQL parses"
else fail "dashboard structure or PromQL"
fi

echo "deploy/validate.sh: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
