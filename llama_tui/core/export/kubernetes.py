"""Kubernetes manifests for a fleet shape: the local fleet's llama-server command line and NGINX config,
placed as Kubernetes objects.

    Secret         NAME-internal-key   the instances' internal key (random; or an existing Secret)
    Secret         NAME-api-key        the public API key NGINX requires (only when the fleet has one)
    StatefulSet    NAME                llama-server x instances, pods NAME-0, NAME-1 ...
    Service        NAME                headless: NAME-i.NAME.NS.svc.DOMAIN per pod, published before ready
    NetworkPolicy  NAME-llama-server   only NGINX's pods reach the instances (where the CNI enforces it)
    ConfigMap      NAME-nginx          nginx.conf (`frontdoor.render`, the templates a local fleet uses) and start.sh
    Deployment     NAME-nginx          NGINX, unprivileged, read-only root
    Service        NAME-nginx          the fleet's endpoint

Each pod runs `FleetSpec.command` (the builder the local fleet uses) with the pod's address, the model
inside the models volume and the instance-0 port (every pod has its own address, so one port serves).
The instances require the internal key (`LLAMA_API_KEY` from the Secret, never on a command line);
NGINX sends it in place of the client's Authorization header. The ConfigMap holds no key: the
rendered config carries placeholders that start.sh replaces from the Secrets' environment.

NGINX resolves upstream names when it (re)loads its config. start.sh waits until every pod's name
resolves, then reloads NGINX when an address changes (a pod re-created elsewhere); the headless
Service publishes the names of pods that are not ready yet, so a loading model does not block NGINX
(it answers 503 and NGINX tries the next backend).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from llama_tui import __version__
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import frontdoor, frontdoor_rules
from llama_tui.core.fleet.placement import Endpoint
from llama_tui.core.fleet.spec import FleetSpec

MODELS_MOUNT = PurePosixPath("/models")
CONFIG_MOUNT = PurePosixPath("/etc/llama-tui")
RUN_MOUNT = PurePosixPath("/var/lib/llama-tui")  # NGINX's prefix lives here, on an emptyDir
NGINX_PREFIX = RUN_MOUNT / "nginx"
NGINX_NOFILE = 1 << 20  # containerd's and Docker's default open-files limit
LLAMA_UID = 1000
NGINX_UID = 101  # the nginx user of the official image
# Placeholders the ConfigMap's nginx.conf carries instead of the keys (valid keys themselves, so the
# same render checks pass); start.sh replaces them from the Secrets.
INTERNAL_KEY_PLACEHOLDER = "llama-tui-internal-key-from-secret"
API_KEY_PLACEHOLDER = "llama-tui-api-key-from-secret"
INTERNAL_KEY_ENV = "LLAMA_API_KEY"  # llama-server reads its --api-key from here (keys.INSTANCE_KEY_ENV)
API_KEY_ENV = "LLAMA_TUI_API_KEY"
SECRET_KEY = "api-key"  # the key inside each Secret
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
DEFAULT_IMAGES = {False: "ghcr.io/ggml-org/llama.cpp:server", True: "ghcr.io/ggml-org/llama.cpp:server-cuda"}
DEFAULT_NGINX_IMAGE = "nginx:1.27"

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # RFC 1123 label
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


@dataclass(frozen=True)
class KubeOptions:
    """Where and how the fleet runs on Kubernetes (everything the fleet's shape does not say)."""

    namespace: str = "default"
    name: str = "llama"
    image: str | None = None  # None: the llama.cpp server image (CUDA when the shape uses GPUs)
    nginx_image: str = DEFAULT_NGINX_IMAGE
    server_binary: str = "/app/llama-server"  # where the image has llama-server
    model_pvc: str | None = None  # the models volume: a PersistentVolumeClaim ...
    model_host_path: str | None = None  # ... or a directory on every node (default: the claim "llama-models")
    model_file: str | None = None  # the model's path inside the volume (default: its file name)
    internal_key_secret: str | None = None  # an existing Secret (key "api-key"); None: one is generated
    api_key_secret: str | None = None  # an existing Secret with the public API key; None: from the fleet's key
    gpus_per_pod: int = 1
    memory: str | None = None  # the instances' memory request; None: the fit estimate when the model is here
    cluster_domain: str = "cluster.local"
    service_type: str = "ClusterIP"
    nginx_replicas: int = 1
    nginx_workers: int = 2

    def validate(self) -> None:
        check_label(self.namespace, "--namespace")
        check_label(self.name, "--name", max_len=40)  # leaves room for "-internal-key" and pod indexes
        for what, value in (("--internal-key-secret", self.internal_key_secret),
                            ("--api-key-secret", self.api_key_secret), ("--model-pvc", self.model_pvc)):
            if value is not None:
                check_label(value, what, dns_subdomain=True)
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", self.cluster_domain):
            raise UserError(f"--cluster-domain {self.cluster_domain!r} is not a DNS name",
                            "pass the cluster's DNS domain, usually cluster.local")
        if self.service_type not in SERVICE_TYPES:
            raise UserError(f"--service-type {self.service_type!r} is not one of {', '.join(SERVICE_TYPES)}",
                            "use ClusterIP (in-cluster only, the default), NodePort or LoadBalancer")
        if self.model_host_path is not None and not PurePosixPath(self.model_host_path).is_absolute():
            raise UserError(f"--model-host-path {self.model_host_path!r} is not an absolute path",
                            "pass the directory that holds the model on every node, e.g. /srv/models")
        if self.model_file is not None:
            rel = PurePosixPath(self.model_file)
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise UserError(f"--model-file {self.model_file!r} must be a path inside the models volume",
                                "pass it relative to the volume, e.g. qwen2.5-7b-q4_k_m.gguf")
        if self.memory is not None and not _QUANTITY.match(self.memory):
            raise UserError(f"--memory {self.memory!r} is not a Kubernetes quantity", "pass e.g. 6Gi or 512Mi")
        for what, value in (("--gpus-per-pod", self.gpus_per_pod), ("--nginx-replicas", self.nginx_replicas),
                            ("--nginx-workers", self.nginx_workers)):
            if value < 1:
                raise UserError(f"{what} must be 1 or more, got {value}", f"pass {what} 1 or more")
        for what, image in (("--image", self.image), ("--nginx-image", self.nginx_image)):
            if image is not None and (not image or any(c.isspace() for c in image)):
                raise UserError(f"{what} {image!r} is not an image reference", f"pass e.g. {what} REGISTRY/NAME:TAG")


def check_label(value: str, what: str, max_len: int = 63, dns_subdomain: bool = False) -> str:
    """`value` when it is an RFC 1123 label (or DNS subdomain), else a UserError naming the option."""
    parts = value.split(".") if dns_subdomain else [value]
    limit = 253 if dns_subdomain else max_len
    if not value or len(value) > limit or not all(_LABEL.match(p) and len(p) <= 63 for p in parts):
        kind = "DNS subdomain" if dns_subdomain else "RFC 1123 label"
        raise UserError(f"{what} {value!r} is not a valid {kind}",
                        f"use at most {limit} lowercase letters, digits and '-', starting and ending with a "
                        "letter or digit, e.g. llama")
    return value


@dataclass(frozen=True)
class Export:
    """What the manifests are made from: the fleet's shape, the Kubernetes options, and facts from here."""

    spec: FleetSpec  # as validated for a local fleet (host, ports, policy, extra args)
    options: KubeOptions
    threads: int
    model_file: str  # the model's path inside the models volume
    memory_bytes: int | None = None  # the fit estimate of one instance (None: the model is not here)
    api_key: str | None = None  # the fleet's public key, for a generated Secret
    internal_key: str | None = None  # the generated internal key (None: options.internal_key_secret)

    @property
    def uses_gpu(self) -> bool:
        return bool(self.spec.gpus) or bool(self.spec.gpu_layers)

    @property
    def image(self) -> str:
        return self.options.image or DEFAULT_IMAGES[self.uses_gpu]


def build(settings: Any, options: KubeOptions) -> Export:
    """The export of the fleet that resolved `settings` (config.Settings) describe. The model need not
    be on this machine; when it is, its GGUF header gives the instances' memory request (sweep.fit)."""
    from llama_tui.core import binaries
    from llama_tui.core.fleet.spec import validate_extra_args

    options.validate()
    spec = FleetSpec.from_settings(settings, check_extra_args=False, resolve_model=False)
    llama_server, _source = binaries.find_llama_server()
    if spec.extra_args and llama_server is not None:  # the flags this llama-server knows, none llama-tui manages
        validate_extra_args(spec.extra_args, llama_server)
    if spec.threads is None:
        raise UserError("the shape leaves --threads on auto (this machine's cores // instances), which says "
                        "nothing about the cluster's nodes", "pass --threads T: each pod requests T CPUs")
    local = _local_model(settings.get("fleet.model"))
    door = frontdoor.FrontDoorSpec(port=spec.nginx_port, backends=(), api_key=spec.api_key,
                                   api_key_file=spec.api_key_file)
    return Export(spec=spec, options=options, threads=spec.threads,
                  model_file=options.model_file or (local or spec.model).name,
                  memory_bytes=_memory_estimate(spec, local) if local is not None else None,
                  api_key=None if options.api_key_secret else frontdoor_rules.read_api_key(door),
                  internal_key=None if options.internal_key_secret else new_key())


def _local_model(value: str | None) -> Path | None:
    """The model as a file on this machine, or None when it is not here."""
    from llama_tui.core import model as model_mod

    try:
        return model_mod.resolve_model(value)
    except UserError:
        return None


def _memory_estimate(spec: FleetSpec, model: Path) -> int | None:
    """One instance's RAM from the fit estimate (weights not offloaded, its slots' KV cache, overhead)."""
    from llama_tui.core.gguf_header import GGUFHeaderError
    from llama_tui.core.sweep import fit

    try:
        facts = fit.read_model_facts(model)
    except (GGUFHeaderError, OSError):
        return None
    ubatch = None
    args = list(spec.extra_args)
    for flag, value in zip(args, args[1:]):
        if flag in ("-ub", "--ubatch-size") and value.isdigit():
            ubatch = int(value)
    return fit.estimate(facts, 1, spec.parallel, spec.ctx_per_slot, spec.gpu_layers, ubatch, args).ram_bytes


def new_key() -> str:
    """A random internal key that NGINX, sed and llama-server all carry as it is (hex)."""
    return secrets.token_hex(24)


def pod_host(o: KubeOptions, index: int) -> str:
    """The stable DNS name of pod `index` (through the headless Service)."""
    return f"{o.name}-{index}.{o.name}.{o.namespace}.svc.{o.cluster_domain}"


def labels(o: KubeOptions, component: str) -> dict[str, str]:
    name = "llama-server" if component == "instance" else "nginx"
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": o.name,
            "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "llama-tui"}


def _meta(o: KubeOptions, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": o.namespace,
            "labels": {**labels(o, component), "app.kubernetes.io/managed-by": "llama-tui"}}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------- llama-server


def server_command(ex: Export) -> list[str]:
    """The instances' command line: the local fleet's builder, with the pod's address and the volume's model."""
    pod_spec = dataclasses.replace(ex.spec, host="0.0.0.0", model=MODELS_MOUNT / ex.model_file)
    return pod_spec.command(ex.options.server_binary, 0, ex.threads)


def _secret_ref(name: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": SECRET_KEY}}


def internal_secret_name(o: KubeOptions) -> str:
    return o.internal_key_secret or f"{o.name}-internal-key"


def api_secret_name(ex: Export) -> str | None:
    if ex.options.api_key_secret:
        return ex.options.api_key_secret
    return f"{ex.options.name}-api-key" if ex.api_key else None


def _health_probe(period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def _hardened(read_only: bool = True) -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": read_only,
            "capabilities": {"drop": ["ALL"]}}


def _pod_security(uid: int) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "seccompProfile": {"type": "RuntimeDefault"}}


def models_volume(o: KubeOptions) -> dict[str, Any]:
    if o.model_host_path is not None:
        return {"name": "models", "hostPath": {"path": o.model_host_path, "type": "Directory"}}
    return {"name": "models", "persistentVolumeClaim": {"claimName": o.model_pvc or "llama-models", "readOnly": True}}


def statefulset(ex: Export) -> dict[str, Any]:
    o, spec = ex.options, ex.spec
    resources: dict[str, Any] = {"requests": {"cpu": str(ex.threads)}}
    if o.memory is not None:
        resources["requests"]["memory"] = o.memory
    elif ex.memory_bytes is not None:
        resources["requests"]["memory"] = f"{math.ceil(ex.memory_bytes / (1 << 20))}Mi"
    if ex.uses_gpu:
        resources["limits"] = {"nvidia.com/gpu": ex.options.gpus_per_pod}
    annotations = {"llama-tui/shape": f"{spec.instances} instances x {spec.parallel} slots, {ex.threads} threads",
                   "llama-tui/version": __version__}
    if ex.internal_key is not None:  # a new key rolls the pods (NGINX's too), so both sides hold the same one
        annotations["llama-tui/internal-key-sha256"] = _sha(ex.internal_key)
    container = {
        "name": "llama-server", "image": ex.image, "command": server_command(ex),
        "ports": [{"name": "http", "containerPort": spec.port_of(0), "protocol": "TCP"}],
        "env": [{"name": INTERNAL_KEY_ENV, "valueFrom": _secret_ref(internal_secret_name(o))}],
        "resources": resources,
        # Loading a model takes up to --ready-timeout; /health answers 503 meanwhile.
        "startupProbe": _health_probe(5, max(2, math.ceil(spec.ready_timeout / 5))),
        "readinessProbe": _health_probe(5, 2),
        # /health can queue behind streams when every HTTP thread is busy: a minute of silence before a restart.
        "livenessProbe": _health_probe(10, 6, timeout=5),
        "volumeMounts": [{"name": "models", "mountPath": str(MODELS_MOUNT), "readOnly": True}],
        "securityContext": _hardened(),
    }
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(o, o.name, "instance"),
        "spec": {
            "serviceName": o.name, "replicas": spec.instances, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels(o, "instance")},
            "template": {
                "metadata": {"labels": labels(o, "instance"), "annotations": annotations},
                "spec": {"automountServiceAccountToken": False, "enableServiceLinks": False,
                         "terminationGracePeriodSeconds": int(spec.drain_timeout),
                         "securityContext": _pod_security(LLAMA_UID), "containers": [container],
                         "volumes": [models_volume(o)]},
            },
        },
    }


def headless_service(ex: Export) -> dict[str, Any]:
    o = ex.options
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(o, o.name, "instance"),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": labels(o, "instance"),
                     "ports": [{"name": "http", "port": ex.spec.port_of(0), "targetPort": "http", "protocol": "TCP"}]}}


def network_policy(ex: Export) -> dict[str, Any]:
    o = ex.options
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(o, f"{o.name}-llama-server", "instance"),
            "spec": {"podSelector": {"matchLabels": labels(o, "instance")}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": labels(o, "frontdoor")}}],
                                  "ports": [{"protocol": "TCP", "port": ex.spec.port_of(0)}]}]}}


def secret(o: KubeOptions, name: str, key: str, component: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(o, name, component), "type": "Opaque",
            "stringData": {SECRET_KEY: key}}


# --------------------------------------------------------------------------------------------- NGINX


def frontdoor_spec(ex: Export) -> frontdoor.FrontDoorSpec:
    """The fleet's front door (`FrontDoorSpec.for_fleet`, as a local fleet makes it) in front of the pods."""
    o, spec = ex.options, ex.spec
    pods = [Endpoint(pod_host(o, i), spec.port_of(0), f"{o.name}-{i}") for i in range(spec.instances)]
    door = frontdoor.FrontDoorSpec.for_fleet(spec, pods)
    # Behind a Service, clients often arrive with a node's address (SNAT): no per-address limit unless asked.
    conn_limit = 0 if spec.conn_limit is None else spec.conn_limit
    return dataclasses.replace(door, listen="0.0.0.0", worker_processes=o.nginx_workers, conn_limit=conn_limit,
                               internal_key=INTERNAL_KEY_PLACEHOLDER, api_key_file=None,
                               api_key=API_KEY_PLACEHOLDER if api_secret_name(ex) else None)


def nginx_config(ex: Export) -> str:
    """nginx.conf for the pods, rendered by `frontdoor.render` from the fleet's templates."""
    return frontdoor.render(frontdoor_spec(ex), Path(str(NGINX_PREFIX)), nofile=NGINX_NOFILE, as_root=False)


START_SCRIPT = """#!/bin/sh
# Generated by llama-tui {version}: NGINX in front of the llama-server pods of {name}.
# The keys come from the Secrets' environment into a private copy of nginx.conf (the ConfigMap holds
# none). NGINX resolves the pods' names when it loads its config: wait until all of them resolve, then
# reload it whenever an address changes (a pod re-created on another node).
set -eu
prefix={prefix}
hosts={hosts}
check_key() {{
    case "$2" in
        *[!A-Za-z0-9._~+/=-]*|"") ok=no ;;
        *) ok=yes ;;
    esac
    if [ "$ok" = no ] || [ "${{#2}}" -lt 16 ] || [ "${{#2}}" -gt 200 ]; then
        echo "llama-tui: $1 must be 16-200 characters of letters, digits and ._~+/=- (no newline)" >&2
        exit 1
    fi
}}
check_key {internal_env} "${{{internal_env}:-}}"
{api_check}mkdir -p "$prefix/logs" "$prefix/tmp"
ln -sf /dev/stdout "$prefix/logs/access.log"
ln -sf /dev/stderr "$prefix/logs/error.log"
sed -e "s|{internal_placeholder}|${internal_env}|g"{api_sed} {conf} > "$prefix/nginx.conf"
resolved() {{
    for h in $hosts; do getent hosts "$h" || echo "unresolved $h"; done
}}
while resolved | grep -q '^unresolved '; do
    echo "llama-tui: waiting until every instance's name resolves" >&2
    sleep 2
done
(
    last=$(resolved)
    while sleep 10; do
        now=$(resolved)
        if [ "$now" != "$last" ] && ! printf '%s\\n' "$now" | grep -q '^unresolved '; then
            echo "llama-tui: an instance moved, reloading nginx" >&2
            kill -HUP "$(cat "$prefix/nginx.pid")" && last=$now
        fi
    done
) &
exec nginx -p "$prefix" -e /dev/stderr -c "$prefix/nginx.conf"
"""


def start_script(ex: Export) -> str:
    o = ex.options
    api = api_secret_name(ex) is not None
    return START_SCRIPT.format(
        version=__version__, name=o.name, prefix=shlex.quote(str(NGINX_PREFIX)),
        hosts=shlex.quote(" ".join(pod_host(o, i) for i in range(ex.spec.instances))),
        internal_env=INTERNAL_KEY_ENV, internal_placeholder=INTERNAL_KEY_PLACEHOLDER,
        api_check=f'check_key {API_KEY_ENV} "${{{API_KEY_ENV}:-}}"\n' if api else "",
        api_sed=f' -e "s|{API_KEY_PLACEHOLDER}|${API_KEY_ENV}|g"' if api else "",
        conf=shlex.quote(str(CONFIG_MOUNT / "nginx.conf")))


def config_map(ex: Export) -> dict[str, Any]:
    o = ex.options
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(o, f"{o.name}-nginx", "frontdoor"),
            "data": {"nginx.conf": nginx_config(ex), "start.sh": start_script(ex)}}


def nginx_deployment(ex: Export, cm: dict[str, Any]) -> dict[str, Any]:
    o, port = ex.options, ex.spec.nginx_port
    env = [{"name": INTERNAL_KEY_ENV, "valueFrom": _secret_ref(internal_secret_name(o))}]
    api = api_secret_name(ex)
    if api:
        env.append({"name": API_KEY_ENV, "valueFrom": _secret_ref(api)})
    annotations = {"llama-tui/config-sha256": _sha(cm["data"]["nginx.conf"] + cm["data"]["start.sh"])}
    if ex.internal_key is not None:
        annotations["llama-tui/internal-key-sha256"] = _sha(ex.internal_key)
    container = {
        "name": "nginx", "image": o.nginx_image, "command": ["/bin/sh", str(CONFIG_MOUNT / "start.sh")],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}], "env": env,
        "resources": {"requests": {"cpu": f"{250 * o.nginx_workers}m", "memory": "64Mi"}},
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": "config", "mountPath": str(CONFIG_MOUNT), "readOnly": True},
                         {"name": "run", "mountPath": str(RUN_MOUNT)}],
        "securityContext": _hardened(),
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(o, f"{o.name}-nginx", "frontdoor"),
        "spec": {
            "replicas": o.nginx_replicas, "selector": {"matchLabels": labels(o, "frontdoor")},
            "template": {
                "metadata": {"labels": labels(o, "frontdoor"), "annotations": annotations},
                "spec": {"automountServiceAccountToken": False, "enableServiceLinks": False,
                         "securityContext": _pod_security(NGINX_UID), "containers": [container],
                         "volumes": [{"name": "config", "configMap": {"name": cm["metadata"]["name"],
                                                                      "defaultMode": 0o444}},
                                     {"name": "run", "emptyDir": {"sizeLimit": "1Gi"}}]},
            },
        },
    }


def nginx_service(ex: Export) -> dict[str, Any]:
    o = ex.options
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(o, f"{o.name}-nginx", "frontdoor"),
            "spec": {"type": o.service_type, "selector": labels(o, "frontdoor"),
                     "ports": [{"name": "http", "port": ex.spec.nginx_port, "targetPort": "http", "protocol": "TCP"}]}}


# --------------------------------------------------------------------------------------------- all of it


def manifests(ex: Export) -> list[dict[str, Any]]:
    """Every object, in the order `kubectl apply -f` should create them."""
    o = ex.options
    o.validate()
    docs = []
    if o.internal_key_secret is None:
        if ex.internal_key is None:
            raise UserError("no internal key for the generated Secret", "pass --internal-key-secret EXISTING")
        docs.append(secret(o, internal_secret_name(o), ex.internal_key, "instance"))
    if ex.api_key and not o.api_key_secret:
        docs.append(secret(o, f"{o.name}-api-key", ex.api_key, "frontdoor"))
    cm = config_map(ex)
    docs += [statefulset(ex), headless_service(ex), network_policy(ex), cm, nginx_deployment(ex, cm),
             nginx_service(ex)]
    return docs


class _Dumper(yaml.SafeDumper):
    """Block style, config files as literal blocks (`|`), keys in the order they were written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def to_yaml(docs: list[dict[str, Any]], header: str = "") -> str:
    """Multi-document YAML (PyYAML), each document after `---`."""
    body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120,
                         explicit_start=True, allow_unicode=True)
    return header + body
