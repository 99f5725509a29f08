"""`llama-tui export kubernetes`: manifests that Kubernetes' own schemas accept, with the local fleet's flags
and the local fleet's NGINX config, and an NGINX that serves through them.

Validation is offline with kubernetes-validate (the `[k8s]` extra) in strict mode (unknown fields are
errors), against Kubernetes 1.30 (the oldest version the README promises) and the newest schemas it
bundles. The NGINX part runs the ConfigMap's own start.sh and nginx.conf for real, unprivileged, with
only the pods' names (and the container paths) replaced by loopback ones.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import shlex
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from llama_tui.cli import main
from llama_tui.core import config
from llama_tui.core.export import kubernetes as k8s
from llama_tui.core.fleet import FleetSpec
from llama_tui.core.sweep import results

from conftest import LOOPBACK, REPO, free_port, free_port_block, wait_for, wait_ready

kv = pytest.importorskip("kubernetes_validate", reason="the [k8s] extra (kubernetes-validate) validates manifests")
OLDEST = "1.30"
VERSIONS = (OLDEST, kv.utils.latest_version())

BEST = {"status": "ok", "instances": 3, "parallel": 4, "threads": 2, "batch": 1024, "ubatch": 256,
        "n_predict": 32, "concurrency": 12, "repeat": 0, "ctx_per_slot": 1024, "policy": "round_robin",
        "output_tok_s": 4321.0, "ttft_p50_ms": 20.0, "ttft_p95_ms": 40.0, "e2e_p95_ms": 90.0, "errors": 0,
        "requests_ok": 50, "valid": True}


@pytest.fixture
def sweep_dir(tmp_path: Path, tiny_model: Path) -> Path:
    """A finished sweep: its best shape is 3 x 4 at 2 threads, batch 1024 / ubatch 256, round_robin."""
    out = tmp_path / "sweep"
    store = results.ResultStore(out)
    store.append({**BEST, "instances": 1, "parallel": 1, "output_tok_s": 1000.0})
    store.append(BEST)
    store.append({**BEST, "instances": 4, "output_tok_s": 9000.0, "errors": 5, "status": "error"})
    store.write_metadata({"fingerprint": results.fingerprint(tiny_model),
                          "params": {"ctx_per_slot": 1024, "policy": "round_robin", "gpu_layers": None, "gpus": [],
                                     "extra_args": ""}})
    return out


def run_export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(["export", "kubernetes", *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def exported(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    code, out, err = run_export(capsys, *args)
    assert code == 0, err
    return list(yaml.safe_load_all(out))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = by_kind(docs, kind)
    return doc


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def validate_all(docs: list[dict[str, Any]]) -> None:
    for version in VERSIONS:
        for doc in docs:
            kv.validate(doc, version, strict=True)  # raises on any schema error


# --------------------------------------------------------------------------------------------- sources


@pytest.mark.binaries  # the sweep's extra args are checked against llama-server --help
def test_from_sweep_is_the_best_shape_with_its_flags_and_validates(capsys, sweep_dir: Path) -> None:
    docs = exported(capsys, "--from-sweep", str(sweep_dir), "--namespace", "llm", "--name", "chat")
    validate_all(docs)
    assert [d["kind"] for d in docs] == ["Secret", "StatefulSet", "Service", "NetworkPolicy", "ConfigMap",
                                          "Deployment", "Service"]
    assert {d["metadata"]["namespace"] for d in docs} == {"llm"}
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == "chat"
    cmd = container(sts)["command"]
    # the local fleet's command builder, for the same shape: only the address and the model path differ
    spec = FleetSpec.from_settings(config.load_settings(cli={
        "fleet.model": "tiny", "fleet.instances": 3, "fleet.parallel": 4, "fleet.threads": 2,
        "fleet.ctx_per_slot": 1024, "fleet.extra_args": "--batch-size 1024 --ubatch-size 256"}))
    local = spec.command("/app/llama-server", 0, 2)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and local[local.index("--host") + 1] == "127.0.0.1"
    swap = {"127.0.0.1": "0.0.0.0", str(spec.model): f"/models/{spec.model.name}"}
    assert cmd == [swap.get(a, a) for a in local]
    assert cmd[cmd.index("-np") + 1] == "4" and cmd[cmd.index("-c") + 1] == "4096"
    assert cmd[cmd.index("--batch-size") + 1] == "1024" and cmd[cmd.index("--ubatch-size") + 1] == "256"
    res = container(sts)["resources"]
    assert res["requests"]["cpu"] == "2" and "limits" not in res  # no GPU: no nvidia.com/gpu
    assert res["requests"]["memory"].endswith("Mi") and int(res["requests"]["memory"][:-2]) > 0  # the fit estimate
    assert container(sts)["image"] == k8s.DEFAULT_IMAGES[False]
    nginx_conf = one(docs, "ConfigMap")["data"]["nginx.conf"]
    assert "round_robin" in nginx_conf.splitlines()[1]  # the sweep's policy
    for i in range(3):
        assert f"server chat-{i}.chat.llm.svc.cluster.local:{spec.port_of(0)} " in nginx_conf


def test_preset_validates_and_keeps_keys_out_of_the_configmap(capsys) -> None:
    docs = exported(capsys, "--preset", "demo")
    validate_all(docs)
    key = one(docs, "Secret")["stringData"]["api-key"]
    assert len(key) >= 32 and key.isalnum()
    cm = one(docs, "ConfigMap")
    assert key not in cm["data"]["nginx.conf"] and key not in cm["data"]["start.sh"]
    assert f'proxy_set_header Authorization "Bearer {k8s.INTERNAL_KEY_PLACEHOLDER}";' in cm["data"]["nginx.conf"]
    sts, dep = one(docs, "StatefulSet"), one(docs, "Deployment")
    ref = {"secretKeyRef": {"name": "llama-internal-key", "key": "api-key"}}
    assert container(sts)["env"] == [{"name": "LLAMA_API_KEY", "valueFrom": ref}]
    assert {"name": "LLAMA_API_KEY", "valueFrom": ref} in container(dep)["env"]
    assert "--api-key" not in container(sts)["command"]  # the key never on a command line
    # a new key rolls both sides together
    ann = [d["spec"]["template"]["metadata"]["annotations"]["llama-tui/internal-key-sha256"] for d in (sts, dep)]
    assert ann[0] == ann[1]
    assert sts["spec"]["replicas"] == 2 and container(sts)["resources"]["requests"]["cpu"] == "1"  # demo: 2 x t1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container(sts)[probe]["httpGet"] == {"path": "/health", "port": "http"}
    svc = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "llama"][0]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True


def test_fleet_options_with_gpus_request_nvidia_gpus_and_validate(capsys, tiny_model: Path) -> None:
    docs = exported(capsys, "--model", str(tiny_model), "--instances", "4", "--parallel", "8", "--threads", "4",
                    "--gpu-layers", "99", "--gpus", "0,1", "--gpus-per-pod", "2", "--policy", "hash",
                    "--model-host-path", "/srv/models", "--internal-key-secret", "shared-key",
                    "--service-type", "LoadBalancer", "--image", "registry.local/llama:cuda")
    validate_all(docs)
    assert not by_kind(docs, "Secret")  # the existing Secret is referenced, none generated
    sts = one(docs, "StatefulSet")
    c = container(sts)
    assert sts["spec"]["replicas"] == 4 and c["image"] == "registry.local/llama:cuda"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 2} and c["resources"]["requests"]["cpu"] == "4"
    assert c["command"][c["command"].index("-ngl") + 1] == "99"
    assert c["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "shared-key"
    assert sts["spec"]["template"]["spec"]["volumes"] == [
        {"name": "models", "hostPath": {"path": "/srv/models", "type": "Directory"}}]
    assert "hash $llama_tui_hash_key consistent;" in one(docs, "ConfigMap")["data"]["nginx.conf"]
    nginx_svc = [d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "llama-nginx"][0]
    assert nginx_svc["spec"]["type"] == "LoadBalancer"


def test_a_reachable_service_without_an_api_key_is_warned_about(capsys) -> None:
    code, _, err = run_export(capsys, "--preset", "demo", "--service-type", "NodePort")
    assert code == 0 and "WARNING: NGINX's Service is a NodePort WITHOUT an API key" in err
    code, _, err = run_export(capsys, "--preset", "demo", "--service-type", "NodePort", "--api-key-secret", "k")
    assert code == 0 and "WARNING" not in err
    code, _, err = run_export(capsys, "--preset", "demo")
    assert code == 0 and "WARNING" not in err  # ClusterIP: inside the cluster only


def test_fleet_options_on_cpu_with_an_api_key_and_a_model_elsewhere(capsys, tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("client-key-0123456789abcdef\n")
    docs = exported(capsys, "--model", "/nowhere/qwen-7b-q4.gguf", "--instances", "2", "--threads", "8",
                    "--api-key-file", str(keyfile), "--model-pvc", "models", "--memory", "6Gi")
    validate_all(docs)
    secrets = {d["metadata"]["name"]: d["stringData"]["api-key"] for d in by_kind(docs, "Secret")}
    assert secrets["llama-api-key"] == "client-key-0123456789abcdef"
    c = container(one(docs, "StatefulSet"))
    assert c["command"][c["command"].index("-m") + 1] == "/models/qwen-7b-q4.gguf"
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "6Gi"}}
    cm = one(docs, "ConfigMap")["data"]
    assert "client-key" not in cm["nginx.conf"] and k8s.API_KEY_PLACEHOLDER in cm["nginx.conf"]
    assert f"${k8s.API_KEY_ENV}" in cm["start.sh"]


def test_strict_validation_can_fail() -> None:
    """The validator is not a rubber stamp: an unknown field and a wrong type are rejected."""
    ex = dataclasses.replace(_export(), internal_key="k" * 48)
    sts = k8s.statefulset(ex)
    kv.validate(sts, OLDEST, strict=True)
    container(sts)["readinessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, OLDEST, strict=True)
    sts = k8s.statefulset(ex)
    sts["spec"]["replicas"] = "3"
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, OLDEST, strict=True)


def _export(**options: Any) -> k8s.Export:
    settings = config.load_settings(preset="demo")
    return k8s.build(settings, k8s.KubeOptions(**options))


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, cause", [
    (("--preset", "no-such-preset"), "unknown preset"),
    (("--preset", "demo", "--namespace", "Bad_NS"), "--namespace 'Bad_NS' is not a valid RFC 1123 label"),
    (("--preset", "demo", "--namespace", "a" * 64), "is not a valid RFC 1123 label"),
    (("--preset", "demo", "--namespace=-llm"), "is not a valid RFC 1123 label"),
    (("--preset", "demo", "--namespace", "llm.prod"), "is not a valid RFC 1123 label"),
    (("--preset", "demo", "--name", "Chat"), "--name 'Chat'"),
    (("--preset", "demo", "--service-type", "Ingress"), "--service-type"),
    (("--preset", "demo", "--model-file", "../etc/passwd"), "--model-file"),
    (("--preset", "demo", "--memory", "6 GB"), "--memory"),
    (("--model", "tiny"), "--threads on auto"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args: tuple[str, ...], cause: str) -> None:
    code, out, err = run_export(capsys, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and cause in lines[0] and "(fix: " in lines[0], err


def test_a_directory_that_is_not_a_sweep_is_refused(capsys, tmp_path: Path, sweep_dir: Path) -> None:
    for d in (tmp_path / "missing", tmp_path):
        code, out, err = run_export(capsys, "--from-sweep", str(d))
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "has no best.json" in err and "(fix: " in err
    (sweep_dir / results.BEST).unlink()
    code, _, err = run_export(capsys, "--from-sweep", str(sweep_dir))
    assert code == 2 and "has no best.json" in err


def test_output_file_is_private(capsys, tmp_path: Path) -> None:
    out = tmp_path / "fleet.yaml"
    code, stdout, _ = run_export(capsys, "--preset", "demo", "-o", str(out))
    assert code == 0 and stdout == ""
    assert out.stat().st_mode & 0o777 == 0o600
    assert [d["kind"] for d in yaml.safe_load_all(out.read_text())][0] == "Secret"


# --------------------------------------------------------------------------------------------- NGINX, for real


@pytest.fixture
def container_dirs() -> Iterator[tuple[Path, Path]]:
    """The pod's /etc/llama-tui (read-only config) and /var/lib/llama-tui (an emptyDir: mode 0777) on
    this machine, outside pytest's private tmp dir so an unprivileged user can reach them."""
    root = Path(tempfile.mkdtemp(prefix="llama-tui-k8s-"))
    os.chmod(root, 0o755)
    etc, run = root / "etc", root / "run"
    etc.mkdir(mode=0o755)
    run.mkdir(mode=0o777)
    os.chmod(run, 0o777)
    yield etc, run
    shutil.rmtree(root, ignore_errors=True)


def _start_key_server(started, llama_server_bin: Path, tiny_model: Path, port: int, key: str, state: Path) -> str:
    """A llama-server that requires `key` (from LLAMA_API_KEY, as in the pod)."""
    cmd = [str(llama_server_bin), "-m", str(tiny_model), "--host", LOOPBACK, "--port", str(port), "-np", "2",
           "-c", "1024", "-t", "1", "-tb", "1", "--metrics"]
    env = {**os.environ, "LLAMA_TUI_OWNER": str(state), k8s.INTERNAL_KEY_ENV: key}
    started.add(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL, start_new_session=True, env=env))
    url = f"http://{LOOPBACK}:{port}"
    wait_ready(url)
    return url


@pytest.mark.integration
def test_the_configmap_serves_through_real_nginx_unprivileged_with_the_secret_key(
        capsys, started, llama_server_bin: Path, nginx_bin: Path, tiny_model: Path, isolated_dirs: Path,
        container_dirs: tuple[Path, Path]) -> None:
    nginx_port = free_port()
    docs = exported(capsys, "--model", str(tiny_model), "--instances", "2", "--parallel", "2", "--threads", "1",
                    "--nginx-port", str(nginx_port), "--namespace", "llm", "--upstream-header")
    key = one(docs, "Secret")["stringData"]["api-key"]
    cm = one(docs, "ConfigMap")["data"]
    pod_port = container(one(docs, "StatefulSet"))["ports"][0]["containerPort"]
    base = free_port_block(2)
    urls = [_start_key_server(started, llama_server_bin, tiny_model, base + i, key, isolated_dirs) for i in range(2)]
    assert httpx.post(f"{urls[0]}/completion", json={"prompt": "hi", "n_predict": 2}).status_code == 401

    etc, run = container_dirs
    conf, script = cm["nginx.conf"], cm["start.sh"]
    for i in range(2):  # the pods' names -> this machine's instances; the container's paths -> ours
        conf = conf.replace(f"{k8s.pod_host(k8s.KubeOptions(namespace='llm'), i)}:{pod_port}", f"127.0.0.1:{base + i}")
        script = script.replace(k8s.pod_host(k8s.KubeOptions(namespace="llm"), i), "127.0.0.1")
    assert "svc.cluster.local" not in conf + script
    conf = conf.replace(f"listen 0.0.0.0:{nginx_port}", f"listen 127.0.0.1:{nginx_port}")  # loopback only here
    conf = conf.replace(str(k8s.NGINX_PREFIX), str(run / "nginx"))
    script = script.replace(str(k8s.NGINX_PREFIX), str(run / "nginx")).replace(str(k8s.CONFIG_MOUNT), str(etc))
    script = script.replace("exec nginx ", f"exec {nginx_bin} ")
    (etc / "nginx.conf").write_text(conf)
    (etc / "start.sh").write_text(script)
    for f in etc.iterdir():
        f.chmod(0o444)  # the ConfigMap's defaultMode

    uid = 65534 if os.geteuid() == 0 else None  # as the pod does: not root
    out = run / "stdout.log"
    out.touch(mode=0o666)
    os.chmod(out, 0o666)
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
    env = {**os.environ, "LLAMA_TUI_OWNER": str(isolated_dirs), k8s.INTERNAL_KEY_ENV: key}
    with open(out, "ab") as f:
        proc = started.add(subprocess.Popen([*prefix, "/bin/sh", str(etc / "start.sh")], stdout=f,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True))
    url = f"http://127.0.0.1:{nginx_port}"
    wait_for(lambda: proc.poll() is not None or _listening(nginx_port), 20, "nginx from start.sh")
    assert proc.poll() is None, out.read_text()
    served = set()
    for _ in range(6):
        r = httpx.post(f"{url}/completion", json={"prompt": "hello", "n_predict": 4}, timeout=30)
        assert r.status_code == 200, r.text  # NGINX added the internal key; the client sent none
        served.add(r.headers.get("x-upstream"))
    assert served == {f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"}
    assert key not in (etc / "nginx.conf").read_text()  # the key only in the private copy under the prefix
    assert key in (run / "nginx" / "nginx.conf").read_text()
    # the access log goes to the container's stdout (kubectl logs)
    wait_for(lambda: '"uri":"/completion"' in out.read_text(), 5, "the access log on stdout")
    if uid is not None:  # start.sh exec'd NGINX: the process we started is its master now
        tree = _tree(proc.pid)
        assert "nginx: master" in tree[0][1] and any("nginx: worker" in p[1] for p in tree), tree
        assert all(p[2] == uid for p in tree), tree
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def test_start_script_refuses_a_key_with_a_newline(tmp_path: Path) -> None:
    """An existing Secret made with `--from-file` often ends in a newline; start.sh says so instead of
    starting an NGINX whose key never matches the instances'."""
    script = k8s.start_script(_export())
    path = tmp_path / "start.sh"
    path.write_text(script.replace(str(k8s.NGINX_PREFIX), str(tmp_path / "p")))
    for bad in ("0123456789abcdef0123\n", "short", "with space 0123456789"):
        r = subprocess.run(["/bin/sh", str(path)], env={"PATH": os.environ["PATH"], k8s.INTERNAL_KEY_ENV: bad},
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 1 and "LLAMA_API_KEY must be 16-200 characters" in r.stderr
    assert not (tmp_path / "p").exists()  # refused before anything was written


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _tree(pid: int) -> list[tuple[int, str, int]]:
    """(pid, command line, real uid) of `pid` and its descendants."""
    import psutil

    out = []
    top = psutil.Process(pid)
    for p in [top, *top.children(recursive=True)]:
        try:
            out.append((p.pid, " ".join(p.cmdline()), p.uids().real))
        except psutil.Error:
            continue
    return out


def test_read_only_root_nginx_writes_only_under_its_prefix(nginx_bin: Path, container_dirs: tuple[Path, Path]) -> None:
    """readOnlyRootFilesystem: `nginx -t` on the exported config, traced, creates and writes files only in
    the prefix (the emptyDir); every temp path, the pid file and the logs live there."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    etc, run = container_dirs
    conf = k8s.nginx_config(dataclasses.replace(_export(), internal_key="k" * 48)).replace(
        str(k8s.NGINX_PREFIX), str(run / "nginx"))
    for i in range(2):
        conf = conf.replace(k8s.pod_host(k8s.KubeOptions(), i), "127.0.0.1")
    (run / "nginx" / "logs").mkdir(parents=True)
    (run / "nginx" / "tmp").mkdir()
    (etc / "nginx.conf").write_text(conf)
    trace = run / "trace.txt"
    r = subprocess.run(["strace", "-f", "-o", str(trace), "-e", "trace=openat,open,creat,mkdir,mkdirat,unlink,"
                        "unlinkat,rename,renameat,symlink,chmod,bind", str(nginx_bin), "-p", str(run / "nginx"), "-e",
                        str(run / "nginx" / "logs" / "error.log"), "-c", str(etc / "nginx.conf"), "-t"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    writes = []
    for line in trace.read_text().splitlines():
        if "= -1" in line and "EEXIST" not in line:
            continue
        if ("open" in line and not any(m in line for m in ("O_WRONLY", "O_RDWR", "O_CREAT"))) or "+++" in line:
            continue
        if any(call in line for call in ("open", "creat", "mkdir", "unlink", "rename", "symlink", "chmod")):
            writes.append(line)
    outside = [w for w in writes if str(run / "nginx") not in w and "EEXIST" not in w and "/dev/" not in w]
    assert writes and not outside, outside


# --------------------------------------------------------------------------------------------- KubeRay


RAYCLUSTER = REPO / "docs" / "kuberay" / "raycluster.yaml"
RAY_OPTIONS = {"--engine", "ray", "--ray-address", "127.0.0.1:6379", "--placement", "spread",
               "--gpus-per-instance", "1"}  # the Ray engine's options (its own branch adds them to the CLI)


def test_the_kuberay_example_validates_as_far_as_schemas_exist() -> None:
    """kubernetes-validate bundles no schema for KubeRay's RayCluster (a custom resource): its pod
    templates are validated as core PodTemplates, the Service as itself, the rest by shape."""
    cluster, service = yaml.safe_load_all(RAYCLUSTER.read_text())
    with pytest.raises(kv.SchemaNotFoundError):
        kv.validate(cluster, OLDEST, strict=True)
    for version in VERSIONS:
        kv.validate(service, version, strict=True)
    spec = cluster["spec"]
    assert cluster["apiVersion"] == "ray.io/v1" and spec["rayVersion"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, group in groups:
        assert isinstance(group["rayStartParams"], dict)
        for version in VERSIONS:
            kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                         "template": group["template"]}, version, strict=True)
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    # the fleet's command: every option other than the Ray engine's is one `llama-tui fleet up` takes
    (head,) = [c for c in spec["headGroupSpec"]["template"]["spec"]["containers"] if c["name"] == "llama-tui"]
    script = head["command"][-1]
    argv = shlex.split(script.split("exec llama-tui ", 1)[1])
    from llama_tui.cli import build_parser

    args, unknown = build_parser().parse_known_args(argv)
    assert args.fleet_command == "up" and set(unknown) <= RAY_OPTIONS, unknown
    assert args.metrics_listen == "0.0.0.0:9464" and args.metrics_public
    mounts = {c["name"]: {m["mountPath"] for m in c["volumeMounts"]}
              for _, g in groups for c in g["template"]["spec"]["containers"]}
    assert all("/models" in m for m in mounts.values())  # the model at the same path on every node
    assert args.model.startswith("/models/")
