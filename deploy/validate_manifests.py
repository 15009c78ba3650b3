#!/usr/bin/env python3
"""The manifest checks of deploy/validate.sh, without a cluster or kubectl.

    validate_manifests.py kustomizations K8S_DIR ROOT...   the kustomizations are consistent
    validate_manifests.py render DIR                       DIR's kustomization, rendered, on stdout
    validate_manifests.py same RENDERED_A RENDERED_B       the two renderings have the same objects
    validate_manifests.py crossref RENDERED DOCKERFILE FLAGS_RS
                                                           one deployment's objects agree

`render` does what kustomize does for the features deploy/k8s uses (resources,
namespace, images, JSON patches, strategic-merge patches of maps) and refuses
anything else, so that the cross-reference checks see the objects a cluster
would get even where kubectl is not installed; where it is, validate.sh
compares the two renderings with `same`.

Each command prints what is wrong, indented, and exits 1 if anything is.
"""

import copy
import os
import re
import sys
from urllib.parse import unquote

import yaml


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def load_kustomization(root):
    with open(os.path.join(root, "kustomization.yaml")) as f:
        return yaml.safe_load(f) or {}


def finish(errors):
    for e in errors:
        print("  " + e)
    sys.exit(1 if errors else 0)


# ---- kustomizations -------------------------------------------------------------


def reached_files(root):
    """The manifest files a kustomization includes, through its directories too."""
    files = set()
    for entry in load_kustomization(root).get("resources", []):
        path = os.path.normpath(os.path.join(root, entry))
        if os.path.isdir(path):
            files |= reached_files(path)
        else:
            files.add(path)
    return files


def check_kustomizations(k8s, roots):
    errors = []
    manifests = set()
    for dirpath, _, names in os.walk(k8s):
        rel = os.path.relpath(dirpath, k8s)
        yamls = sorted(n for n in names if n.endswith((".yaml", ".yml")) and n != "kustomization.yaml")
        manifests |= {os.path.normpath(os.path.join(dirpath, n)) for n in yamls}
        if "kustomization.yaml" not in names:
            if yamls:
                errors.append(f"{rel}: manifests but no kustomization.yaml")
            continue
        kz = load_kustomization(dirpath)
        if kz.get("kind") != "Kustomization":
            errors.append(f"{rel}/kustomization.yaml: kind is not Kustomization")
        if kz.get("namespace") != "lockd":
            errors.append(f"{rel}/kustomization.yaml: namespace is not lockd")
        listed = kz.get("resources", [])
        files = [e for e in listed if not os.path.isdir(os.path.join(dirpath, e))]
        for e in listed:
            path = os.path.join(dirpath, e)
            if os.path.isdir(path) and not os.path.exists(os.path.join(path, "kustomization.yaml")):
                errors.append(f"{rel}/kustomization.yaml: resource {e} is a folder without a kustomization.yaml")
        errors += [f"{rel}: {n} is not in resources" for n in yamls if n not in files]
        errors += [f"{rel}: resources lists {n}, which does not exist" for n in files if n not in yamls]
        errors += [f"{rel}: resources lists {n} twice" for n in sorted(set(listed)) if listed.count(n) > 1]
    reached = set()
    for root in roots:
        reached |= reached_files(root)
    for path in sorted(manifests - reached):
        errors.append(f"{os.path.relpath(path, k8s)} is in no deployment ({', '.join(roots)})")
    finish(errors)


# ---- rendering --------------------------------------------------------------------


def selects(target, doc):
    group, _, version = doc["apiVersion"].rpartition("/")
    have = {"kind": doc["kind"], "name": doc["metadata"]["name"], "group": group, "version": version,
            "namespace": doc["metadata"].get("namespace")}
    unknown = set(target) - set(have)
    if unknown:
        raise ValueError(f"patch target fields {sorted(unknown)} are not supported here")
    return all(have[k] == v for k, v in target.items())


def pointer(path):
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, ops):
    for op in ops:
        *parents, last = pointer(op["path"])
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[index]
            elif kind == "test":
                if node[index] != op["value"]:
                    raise ValueError(f"JSON patch test failed at {op['path']}: {node[index]!r}")
            else:
                raise ValueError(f"JSON patch op {kind} is not supported here")
        else:
            if kind in ("add", "replace"):
                if kind == "replace" and last not in node:
                    raise ValueError(f"JSON patch replace of missing {op['path']}")
                node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[last]
            elif kind == "test":
                if node.get(last) != op["value"]:
                    raise ValueError(f"JSON patch test failed at {op['path']}: {node.get(last)!r}")
            else:
                raise ValueError(f"JSON patch op {kind} is not supported here")


def merge_maps(dst, src, where):
    """A strategic merge restricted to maps. Lists are refused: kustomize merges
    lists of named items by name and puts the patched items first, which
    reorders env (and breaks $(VAR) references); use a JSON patch for lists."""
    for k, v in src.items():
        if isinstance(v, list):
            raise ValueError(f"strategic merge patch of the list {where}{k}: use a JSON patch")
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge_maps(dst[k], v, f"{where}{k}.")
        else:
            dst[k] = copy.deepcopy(v)


def render(root):
    kz = load_kustomization(root)
    known = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
    if set(kz) - known:
        raise ValueError(f"{root}/kustomization.yaml: fields {sorted(set(kz) - known)} are not supported here")
    docs = []
    for entry in kz.get("resources", []):
        path = os.path.normpath(os.path.join(root, entry))
        docs += render(path) if os.path.isdir(path) else load_all(path)
    for p in kz.get("patches", []):
        body = yaml.safe_load(p["patch"] if "patch" in p else open(os.path.join(root, p["path"])).read())
        if isinstance(body, list):
            target = p["target"]
        else:
            target = p.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
        matched = [d for d in docs if selects(target, d)]
        if not matched:
            raise ValueError(f"{root}: patch target {target} matches nothing")
        for d in matched:
            if isinstance(body, list):
                json_patch(d, body)
            elif body.get("$patch") == "delete":
                docs.remove(d)
            else:
                rest = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
                merge_maps(d, rest, f"{d['kind']}/{d['metadata']['name']}: ")
    if kz.get("namespace"):
        for d in docs:
            if d["kind"] != "Namespace":
                d["metadata"]["namespace"] = kz["namespace"]
    for image in kz.get("images", []):
        for d in docs:
            spec = (d.get("spec") or {}).get("template", {}).get("spec", {})
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return docs


def key(doc):
    return (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])


def same(a_path, b_path):
    a = {key(d): d for d in load_all(a_path)}
    b = {key(d): d for d in load_all(b_path)}
    errors = [f"{'/'.join(k)} only in {a_path}" for k in sorted(set(a) - set(b))]
    errors += [f"{'/'.join(k)} only in {b_path}" for k in sorted(set(b) - set(a))]
    errors += [f"{'/'.join(k)} differs" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    finish(errors)


# ---- cross-references ---------------------------------------------------------------


def parse_conf(text):
    """A redis.conf or sentinel.conf as (directive, arguments) pairs, in order."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            out.append((parts[0].lower(), [p.strip('"') for p in parts[1:]]))
    return out


def conf_value(conf, name):
    values = [args for d, args in conf if d == name]
    return values[-1] if values else None


def notify_flags(flags_rs):
    """NOTIFY_FLAGS of crates/lockd-redis/src/flags.rs: the flags lockd needs."""
    try:
        with open(flags_rs) as f:
            m = re.search(r'pub const NOTIFY_FLAGS: &str = "([A-Za-z$]+)";', f.read())
        if m:
            return m.group(1)
    except OSError:
        pass
    return "Kghzxe"


def crossref(rendered, dockerfile, flags_rs):
    docs = load_all(rendered)
    errors = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "lockd":
            errors.append(f"{d['kind']}/{d['metadata']['name']} is not in namespace lockd")
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})
    workloads = list(by_kind.get("Deployment", {}).values()) + list(by_kind.get("StatefulSet", {}).values())

    def matches(selector, labels):
        return all(labels.get(k) == v for k, v in selector.items())

    def pods_for(selector):
        return [w for w in workloads if matches(selector, w["spec"]["template"]["metadata"]["labels"])]

    def pod_spec(w):
        return w["spec"]["template"]["spec"]

    def all_containers(w):
        return pod_spec(w).get("initContainers", []) + pod_spec(w)["containers"]

    def container_ports(w):
        return {p["name"]: p["containerPort"] for c in pod_spec(w)["containers"] for p in c.get("ports", [])}

    def ref(w):
        return f"{w['kind']}/{w['metadata']['name']}"

    def env_value(w, container, name):
        """A container's variable, from env or from an envFrom ConfigMap defined here."""
        for c in pod_spec(w)["containers"]:
            if c["name"] != container:
                continue
            for e in c.get("env", []):
                if e["name"] == name:
                    return e.get("value")
            for e in c.get("envFrom", []):
                cm = configmaps.get(e.get("configMapRef", {}).get("name"), {})
                if name in cm.get("data", {}):
                    return cm["data"][name]
        return None

    for w in workloads:
        spec = pod_spec(w)
        if not matches(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]):
            errors.append(f"{ref(w)}: selector does not match its own pod labels")
        sa = spec.get("serviceAccountName")
        if sa and sa not in by_kind.get("ServiceAccount", {}):
            errors.append(f"{ref(w)}: ServiceAccount {sa} is not defined")
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                errors.append(f"{ref(w)}: volume ConfigMap {v['configMap']['name']} is not defined")
        ports = container_ports(w)
        for c in all_containers(w):
            where = f"{ref(w)} container {c['name']}"
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    errors.append(f"{where}: volumeMount {m['name']} is not a volume")
            # $(VAR) in env values refers to variables defined before it; in
            # command and args, to any of the container's variables.
            defined = set()
            for e in c.get("envFrom", []):
                cm = e.get("configMapRef", {}).get("name")
                if cm and cm not in configmaps:
                    errors.append(f"{where}: envFrom ConfigMap {cm} is not defined")
                defined |= set(configmaps.get(cm, {}).get("data", {}))
            for e in c.get("env", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
                    if var not in defined:
                        errors.append(f"{where}: env {e['name']} uses $({var}), which is not defined before it")
                defined.add(e["name"])
                secret = (e.get("valueFrom") or {}).get("secretKeyRef")
                if secret and secret["name"] not in by_kind.get("Secret", {}):
                    errors.append(f"{where}: Secret {secret['name']} is not defined")
            for arg in c.get("command", []) + c.get("args", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    if var not in defined:
                        errors.append(f"{where}: command uses $({var}), which is not defined")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe, {})
                port = (p.get("grpc") or {}).get("port")
                if port is not None and port not in ports.values():
                    errors.append(f"{where}: {probe} gRPC port {port} is not a container port")
                tcp = (p.get("tcpSocket") or {}).get("port")
                if isinstance(tcp, str) and tcp not in ports:
                    errors.append(f"{where}: {probe} port {tcp} is not a named container port")
        if w["kind"] == "StatefulSet":
            svc = services.get(w["spec"]["serviceName"])
            if not svc or svc["spec"].get("clusterIP") != "None":
                errors.append(f"{ref(w)}: serviceName {w['spec']['serviceName']} is not a headless Service here")

    for svc in services.values():
        where = f"Service/{svc['metadata']['name']}"
        targets = pods_for(svc["spec"]["selector"])
        if not targets:
            errors.append(f"{where}: selector matches no pod template")
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            for w in targets:
                cp = container_ports(w)
                if (isinstance(tp, str) and tp not in cp) or (isinstance(tp, int) and tp not in cp.values()):
                    errors.append(f"{where}: targetPort {tp} is not a port of {w['metadata']['name']}")

    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        where = f"PodDisruptionBudget/{pdb['metadata']['name']}"
        targets = pods_for(pdb["spec"]["selector"]["matchLabels"])
        if not targets:
            errors.append(f"{where}: selector matches no pod template")
        for w in targets:
            if w["spec"].get("replicas", 1) <= pdb["spec"].get("minAvailable", 0):
                errors.append(f"{where}: minAvailable leaves no eviction for {w['metadata']['name']}")

    def allowed_ports(rules, peers_key, pods):
        """The ports a NetworkPolicy's rules allow to or from any of `pods`."""
        out = set()
        for rule in rules:
            for peer in rule.get(peers_key, []):
                labels = (peer.get("podSelector") or {}).get("matchLabels")
                if labels is not None and any(matches(labels, w["spec"]["template"]["metadata"]["labels"]) for w in pods):
                    out |= {p["port"] for p in rule.get("ports", [])}
        return out

    for np in by_kind.get("NetworkPolicy", {}).values():
        where = f"NetworkPolicy/{np['metadata']['name']}"
        if not pods_for(np["spec"]["podSelector"]["matchLabels"]):
            errors.append(f"{where}: podSelector matches no pod template")
        # Only peers of this namespace must be pods defined here; a peer with a
        # namespaceSelector may be anyone's pods (clients, Prometheus, DNS), and
        # an empty podSelector means every pod of the namespace.
        peers = [p for rule in np["spec"].get("ingress", []) for p in rule.get("from", [])]
        peers += [p for rule in np["spec"].get("egress", []) for p in rule.get("to", [])]
        for peer in peers:
            labels = (peer.get("podSelector") or {}).get("matchLabels")
            if "namespaceSelector" not in peer and labels and not pods_for(labels):
                errors.append(f"{where}: a podSelector peer matches no pod template")

    # lockd itself: the Deployment, the Dockerfile and the scrape annotations agree.
    lockd = by_kind.get("Deployment", {}).get("lockd")
    if not lockd:
        errors.append("Deployment/lockd is missing")
        finish(errors)
    cp = container_ports(lockd)
    ann = lockd["spec"]["template"]["metadata"].get("annotations", {})
    if int(ann.get("prometheus.io/port", -1)) != cp.get("http"):
        errors.append("Deployment/lockd: prometheus.io/port is not the http container port")
    with open(dockerfile) as f:
        text = f.read()
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.*)$", text, re.M) for p in line.split()}
    if exposed != set(cp.values()):
        errors.append(f"Dockerfile EXPOSE {sorted(exposed)} != Deployment/lockd ports {sorted(cp.values())}")
    cfg = configmaps.get("lockd-config", {}).get("data", {})
    for name, port in (("LOCKD_LISTEN", cp.get("grpc")), ("LOCKD_HTTP_LISTEN", cp.get("http"))):
        if not str(cfg.get(name, "")).endswith(f":{port}"):
            errors.append(f"ConfigMap/lockd-config: {name} does not listen on container port {port}")

    # Redis: what LOCKD_REDIS_URL names exists here, listens where the URL
    # says, may be reached by lockd, and is configured as lockd needs.
    needed = notify_flags(flags_rs)
    lockd_np = [np for np in by_kind.get("NetworkPolicy", {}).values()
                if matches(np["spec"]["podSelector"]["matchLabels"], lockd["spec"]["template"]["metadata"]["labels"])]

    def check_reachable(store, ports):
        for np in lockd_np:
            if "Egress" in np["spec"].get("policyTypes", []):
                missing = set(ports) - allowed_ports(np["spec"].get("egress", []), "to", [store])
                if missing:
                    errors.append(f"NetworkPolicy/{np['metadata']['name']}: no egress to {ref(store)} on {sorted(missing)}")
        for np in by_kind.get("NetworkPolicy", {}).values():
            if matches(np["spec"]["podSelector"]["matchLabels"], store["spec"]["template"]["metadata"]["labels"]) \
                    and "Ingress" in np["spec"].get("policyTypes", ["Ingress"]):
                missing = set(ports) - allowed_ports(np["spec"].get("ingress", []), "from", [lockd])
                if missing:
                    errors.append(f"NetworkPolicy/{np['metadata']['name']}: no ingress from lockd on {sorted(missing)}")

    def mounted_conf(w, key_name):
        for v in pod_spec(w).get("volumes", []):
            data = configmaps.get((v.get("configMap") or {}).get("name"), {}).get("data", {})
            if key_name in data:
                return parse_conf(data[key_name]), f"ConfigMap/{v['configMap']['name']} {key_name}"
        return None, None

    def check_redis_conf(w):
        conf, where = mounted_conf(w, "redis.conf")
        if conf is None:
            errors.append(f"{ref(w)}: mounts no ConfigMap with a redis.conf")
            return None, None
        have = (conf_value(conf, "notify-keyspace-events") or [""])[0]
        lacking = [f for f in needed if f not in have and not (f != "K" and "A" in have)]
        if lacking:
            errors.append(f"{where}: notify-keyspace-events {have!r} lacks {''.join(lacking)} (lockd needs {needed})")
        if conf_value(conf, "appendonly") != ["yes"]:
            errors.append(f"{where}: appendonly is not yes")
        if conf_value(conf, "maxmemory-policy") != ["noeviction"]:
            errors.append(f"{where}: maxmemory-policy is not noeviction")
        return conf, where

    url = env_value(lockd, "lockd", "LOCKD_REDIS_URL") or ""
    scheme, _, rest = url.partition("://")
    hostpart = rest.rpartition("@")[2]
    if scheme == "redis":
        host, _, port = hostpart.partition("/")[0].partition(":")
        port = int(port or 6379)
        svc = services.get(host.split(".")[0])
        if not svc or port not in [p["port"] for p in svc["spec"]["ports"]]:
            errors.append(f"LOCKD_REDIS_URL: {host}:{port} is not a Service port here")
        else:
            for w in pods_for(svc["spec"]["selector"]):
                check_redis_conf(w)
                check_reachable(w, [port])
    elif scheme == "redis+sentinel":
        hosts, _, path = hostpart.partition("/")
        master = unquote(path.split("/")[0])
        sts_by_service = {s["spec"]["serviceName"]: s for s in by_kind.get("StatefulSet", {}).values()}
        group, ordinals = None, set()
        for hp in hosts.split(","):
            host, _, port = hp.partition(":")
            labels = host.split(".")
            sts = sts_by_service.get(labels[1]) if len(labels) > 1 else None
            m = re.fullmatch(rf"{re.escape(sts['metadata']['name'])}-(\d+)", labels[0]) if sts else None
            if not m or int(m.group(1)) >= sts["spec"]["replicas"]:
                errors.append(f"LOCKD_REDIS_URL: {host} is not a pod of a StatefulSet here")
                continue
            if group and group is not sts:
                errors.append("LOCKD_REDIS_URL: the Sentinels are not all of one StatefulSet")
            group = sts
            ordinals.add(int(m.group(1)))
            if int(port or 26379) not in container_ports(sts).values():
                errors.append(f"LOCKD_REDIS_URL: port {port} is not a container port of {ref(sts)}")
        if group:
            n = group["spec"]["replicas"]
            replicas = n - 1
            if ordinals != set(range(n)):
                errors.append(f"LOCKD_REDIS_URL: lists Sentinels {sorted(ordinals)} of {ref(group)}'s {n} pods")
            conf, where = check_redis_conf(group)
            sconf, swhere = mounted_conf(group, "sentinel.conf")
            redis_port = container_ports(group).get("redis")
            sentinel_port = container_ports(group).get("sentinel")
            if sconf is None:
                errors.append(f"{ref(group)}: mounts no ConfigMap with a sentinel.conf")
            else:
                monitor = [a for d, a in sconf if d == "sentinel" and a[:1] == ["monitor"]]
                if not monitor:
                    errors.append(f"{swhere}: no sentinel monitor line")
                else:
                    name, _, mport, quorum = monitor[-1][1:5]
                    if name != master:
                        errors.append(f"LOCKD_REDIS_URL: master {master!r}, but {swhere} monitors {name!r}")
                    if int(mport) != redis_port:
                        errors.append(f"{swhere}: monitors port {mport}, not the redis container port {redis_port}")
                    if not n // 2 < int(quorum) <= n:
                        errors.append(f"{swhere}: quorum {quorum} is not a majority of the {n} Sentinels")
                    down_after = [a for d, a in sconf if d == "sentinel" and a[:2] == ["down-after-milliseconds", name]]
                    lag = conf_value(conf, "min-replicas-max-lag") if conf else None
                    if down_after and lag and int(lag[0]) * 1000 >= int(down_after[-1][2]):
                        errors.append(f"{where}: min-replicas-max-lag {lag[0]} s is not below "
                                      f"down-after-milliseconds {down_after[-1][2]}")
                for c in pod_spec(group).get("initContainers", []):
                    env = {e["name"]: e.get("value") for e in c.get("env", [])}
                    for var, want in (("HEADLESS_SERVICE", group["spec"]["serviceName"]), ("REPLICAS", str(n)),
                                      ("MASTER_NAME", master)):
                        if var in env and env[var] != want:
                            errors.append(f"{ref(group)} init container {c['name']}: {var} is {env[var]!r}, not {want!r}")
            if conf:
                to_write = conf_value(conf, "min-replicas-to-write")
                if not to_write or not 1 <= int(to_write[0]) <= replicas:
                    errors.append(f"{where}: min-replicas-to-write is not between 1 and the {replicas} replicas")
                # A freed backlog changes master_replid: a needless quarantine.
                if conf_value(conf, "repl-backlog-ttl") != ["0"]:
                    errors.append(f"{where}: repl-backlog-ttl is not 0 (a freed backlog starts a needless quarantine)")
            ack = env_value(lockd, "lockd", "LOCKD_MIN_REPLICAS_ACK")
            if ack is not None and not 1 <= int(ack) <= replicas:
                errors.append(f"LOCKD_MIN_REPLICAS_ACK {ack} is not between 1 and the {replicas} replicas")
            check_reachable(group, [p for p in (redis_port, sentinel_port) if p])
    else:
        errors.append(f"LOCKD_REDIS_URL: no checks for the scheme {scheme!r} here")
    finish(errors)


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "kustomizations":
        check_kustomizations(args[0], args[1:])
    elif command == "render":
        try:
            docs = render(args[0])
        except (ValueError, KeyError, IndexError, OSError) as e:
            print(f"  cannot render {args[0]}: {e}")
            sys.exit(1)
        yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    elif command == "same":
        same(args[0], args[1])
    elif command == "crossref":
        crossref(args[0], args[1], args[2])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
