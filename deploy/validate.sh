#!/usr/bin/env bash
# Checks everything under deploy/ without a cluster or a Docker engine:
#
#   1. every manifest under deploy/k8s against the Kubernetes OpenAPI schemas,
#      strictly (unknown fields are errors), with kubernetes-validate's offline
#      schemas, for the oldest Kubernetes these manifests support and the newest
#      the tool knows;
#   2. each folder's kustomization.yaml lists exactly its manifests; the two
#      deployments, deploy/k8s (one Redis) and deploy/k8s/sentinel (a Sentinel
#      group), render; where kubectl is installed, kustomize's rendering of each
#      validates too and has the same objects;
#   3. within each deployment the manifests agree with each other and with the
#      Dockerfile: selectors match pod labels, named ports, volumes, ConfigMaps
#      and Secrets exist, probe and scrape ports are the container's ports, and
#      LOCKD_REDIS_URL names a Redis or Sentinel group of that deployment,
#      configured as lockd needs (validate_manifests.py has the details);
#   4. the Grafana dashboard is valid JSON, well formed, and every PromQL
#      expression in it parses.
#
# Usage: deploy/validate.sh            (from anywhere; exits non-zero on any failure)
#        KUBE_VERSIONS="1.31.0 1.33.0" deploy/validate.sh   to pick the versions.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s="$here/k8s"
dashboard="$here/grafana/lockd-dashboard.json"
checker="$here/validate_manifests.py"
# The keyspace notification flags lockd needs, read from the source.
flags_rs="$here/../crates/lockd-redis/src/flags.rs"

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
# Every manifest file of every kustomization (base/, redis/, sentinel/, ...).
mapfile -t manifests < <(cd "$k8s" && find . -name '*.yaml' ! -name kustomization.yaml | sed 's|^\./||' | sort)
if [[ ${#manifests[@]} -eq 0 ]]; then
    fail "no manifests found in $k8s"
fi

if ensure_py yaml PyYAML && ensure_py kubernetes_validate kubernetes-validate; then
    latest="$("$PY" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')"
    versions="${KUBE_VERSIONS:-$MIN_KUBE_VERSION $latest}"
    echo "kubernetes-validate $("$PY" -m kubernetes_validate --version); Kubernetes versions: $versions"
    for v in $versions; do
        kv "$v" "deploy/k8s/**/*.yaml" "${manifests[@]/#/$k8s/}"
    done
else
    fail "kubernetes-validate is not available"
fi

# ---- 2. kustomizations -----------------------------------------------------------
# The two deployments one applies: deploy/k8s (one Redis) and deploy/k8s/sentinel
# (a Sentinel group). Each folder's kustomization lists its manifests exactly
# once, and every manifest belongs to one of the deployments.
deployments=(k8s k8s/sentinel)
if "$PY" "$checker" kustomizations "$k8s" "${deployments[@]/#/$here/}"; then
    ok "every kustomization lists its folder's manifests exactly once, each in a deployment"
else
    fail "kustomization resources"
fi

# Each deployment rendered by validate_manifests.py, which the cross-references
# below read, and, where kubectl is installed, by kustomize itself: its output
# must validate and hold the same objects.
for d in "${deployments[@]}"; do
    name="${d//\//-}"
    if "$PY" "$checker" render "$here/$d" >"$tmp/$name.yaml"; then
        ok "deploy/$d renders ($(grep -c '^kind:' "$tmp/$name.yaml") resources)"
    else
        cat "$tmp/$name.yaml"
        fail "deploy/$d does not render"
        continue
    fi
    if command -v kubectl >/dev/null 2>&1; then
        if kubectl kustomize "$here/$d" >"$tmp/$name.kustomize.yaml" 2>"$tmp/kustomize.err"; then
            ok "kubectl kustomize deploy/$d renders ($(grep -c '^kind:' "$tmp/$name.kustomize.yaml") resources)"
            for v in ${versions:-}; do
                kv "$v" "kustomize output of deploy/$d" "$tmp/$name.kustomize.yaml"
            done
            if "$PY" "$checker" same "$tmp/$name.yaml" "$tmp/$name.kustomize.yaml"; then
                ok "kubectl kustomize deploy/$d gives the objects the checks below read"
            else
                fail "kubectl kustomize deploy/$d and validate_manifests.py render differ"
            fi
        else
            cat "$tmp/kustomize.err"
            fail "kubectl kustomize deploy/$d"
        fi
    else
        echo "skip  kubectl not installed: kustomize's own rendering of deploy/$d not checked"
    fi
done

# ---- 3. cross-references ---------------------------------------------------------
# Within each deployment: selectors match pod labels; named ports, volumes,
# ConfigMaps, Secrets and ServiceAccounts exist; $(VAR) references come after
# their variable; probe, scrape and EXPOSE ports agree; LOCKD_REDIS_URL names
# Redis (or Sentinel) pods of this deployment, reachable through the
# NetworkPolicies, configured with lockd's keyspace notifications
# (NOTIFY_FLAGS in crates/lockd-redis/src/flags.rs), appendonly and noeviction;
# for Sentinel, the master name, quorum, replica counts and
# --min-replicas-ack agree, and repl-backlog-ttl is 0.
for d in "${deployments[@]}"; do
    name="${d//\//-}"
    [[ -s "$tmp/$name.yaml" ]] || continue
    if "$PY" "$checker" crossref "$tmp/$name.yaml" "$here/Dockerfile" "$flags_rs"; then
        ok "deploy/$d: manifests agree with each other and with the Dockerfile"
    else
        fail "deploy/$d: cross-references between manifests"
    fi
done

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
