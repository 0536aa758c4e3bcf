"""The deploy recipes in deploy/: the Dockerfile, the Kubernetes manifests and the KServe
InferenceServices agree with each other and with the real `adamix-serve`.

What can be checked without a cluster or a container build (no registry for base images here):
- the core Kubernetes manifests validate against the Kubernetes API schemas bundled with `kubernetes-validate`
  (strict: unknown fields fail), offline;
- every container command line is a valid `adamix-serve` call, parsed by the real click command;
- the probes' paths are routes of the real app, and the ports, UID, image and timeouts agree across files;
- the Dockerfile is multi-stage, its runtime stage installs `[serve]` only (no torch), runs as a non-root UID,
  has a HEALTHCHECK on /health and EXPOSEs the manifests' port;
- the KServe InferenceServices (a CRD, not in the bundled schemas) have the required structure, and the
  custom predictor's pod fields validate as a Kubernetes Pod.
"""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from adamix_deploy.serving.cli import serve_cli
from adamix_deploy.serving.engine.runtime import ServerSettings
from adamix_deploy.serving.http.app import create_app

from helpers import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
KSERVE = DEPLOY / "kserve"
# the oldest Kubernetes still commonly run, and the newest whose schemas kubernetes-validate 1.37 bundles
K8S_VERSIONS = ("1.30.0", "1.37.0")
CORE_MANIFESTS = ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "pvc.yaml", "models-loader.yaml")


def load(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, f"{path.name}: one resource per file"
    return docs[0]


# ---- the Dockerfile -------------------------------------------------------------------------------------
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage, as (INSTRUCTION, rest), with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    stages: list[list[tuple[str, str]]] = [[]]
    for instruction in logical:
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest.strip()))
    return stages  # stages[0]: global ARGs before the first FROM


def exec_form(rest: str) -> list[str]:
    """ENTRYPOINT/CMD/HEALTHCHECK CMD in exec (JSON) form."""
    assert rest.startswith("["), f"use the exec form (JSON array): {rest}"
    return yaml.safe_load(rest)


def instruction(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for k, rest in stage if k == keyword]


@pytest.fixture(scope="module")
def dockerfile() -> dict:
    stages = dockerfile_stages()
    global_args = dict(a.split("=", 1) for a in instruction(stages[0], "ARG"))
    runtime = stages[-1]
    return {
        "stages": stages[1:],
        "args": global_args,
        "runtime": runtime,
        "entrypoint": exec_form(instruction(runtime, "ENTRYPOINT")[-1]),
        "cmd": exec_form(instruction(runtime, "CMD")[-1]),
        "user": instruction(runtime, "USER")[-1],
        "expose": [int(p.split("/")[0]) for e in instruction(runtime, "EXPOSE") for p in e.split()],
    }


def test_dockerfile_is_multi_stage_on_python_311_slim(dockerfile):
    stages = dockerfile["stages"]
    assert len(stages) >= 2
    for stage in stages:
        image = instruction(stage, "FROM")[0].split()[0]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: dockerfile["args"][m.group(1)], image)
        assert image == "python:3.11-slim"
    builder_runs = " ".join(instruction(stages[0], "RUN"))
    assert "pip wheel --no-deps" in builder_runs
    runtime_copies = instruction(dockerfile["runtime"], "COPY")
    assert any(c.startswith("--from=builder") for c in runtime_copies), "the runtime stage takes the built wheel"


def test_dockerfile_copies_every_package_the_wheel_needs():
    section = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-dir]")[1].split("\n[")[0]
    package_dirs = set(re.findall(r'^"[\w.]+" = "([\w/]+)"', section, re.M))
    assert {"serving", "exporters", "adamix_deploy"} <= package_dirs
    builder = dockerfile_stages()[1]
    copied = {src.rstrip("/") for c in instruction(builder, "COPY") for src in c.split()[:-1]}
    assert package_dirs | {"pyproject.toml", "README.md"} <= copied
    for src in copied:
        assert (REPO / src).exists(), src
    # BuildKit reads deploy/Dockerfile.dockerignore for `docker build -f deploy/Dockerfile .`
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore
    for src in copied:
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is copied but ignored in the context"


def test_dockerfile_runtime_installs_serve_only_without_torch(dockerfile):
    runs = instruction(dockerfile["runtime"], "RUN")
    installs = [cmd for run in runs for cmd in re.split(r";|&&", run) if "pip install" in cmd]
    assert installs, "the runtime stage installs the wheel"
    for cmd in installs:
        assert "[serve]" in cmd and "adamix_deploy-" in " ".join(runs)
        for forbidden in ("torch", "[train", "[gpu", "train]", "transformers", "optimum"):
            assert forbidden not in cmd, cmd
    env = " ".join(instruction(dockerfile["runtime"], "ENV"))
    assert "HF_HUB_OFFLINE=1" in env


def test_dockerfile_runs_as_non_root_with_healthcheck_on_health(dockerfile):
    uid = dockerfile["user"].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root UID (runAsNonRoot checks it)"
    (healthcheck,) = instruction(dockerfile["runtime"], "HEALTHCHECK")
    assert "urllib.request" in healthcheck and "/health" in healthcheck and "curl" not in healthcheck
    probe_port = int(re.search(r"127\.0\.0\.1:(\d+)/health", healthcheck).group(1))
    assert dockerfile["expose"] == [probe_port]


def test_dockerfile_command_is_the_documented_call(dockerfile):
    assert dockerfile["entrypoint"] == ["adamix-serve"]
    params = adamix_serve_params(dockerfile["cmd"])
    assert params["host"] == "0.0.0.0" and params["port"] in dockerfile["expose"]
    assert params["folders"] and all(f.startswith("/models/") for f in params["folders"])


# ---- adamix-serve and the app ---------------------------------------------------------------------------
def adamix_serve_params(args: list[str]) -> dict:
    """Parse like `adamix-serve ARGS` would (unknown options, bad types and ranges raise)."""
    assert all(isinstance(a, str) for a in args), f"every argument must be a string: {args}"
    with serve_cli.make_context("adamix-serve", list(args)) as ctx:
        return dict(ctx.params)


def test_adamix_serve_parser_rejects_unknown_options():
    with pytest.raises(click.UsageError):
        adamix_serve_params(["/models/x", "--workers", "4"])


@pytest.fixture(scope="module")
def app_paths() -> set[str]:
    app = create_app([], ServerSettings())
    return set(app.openapi()["paths"])


@pytest.fixture(scope="module")
def app_client():
    return TestClient(create_app([], ServerSettings()))


# ---- Kubernetes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", CORE_MANIFESTS)
def test_kubernetes_manifest_validates_against_schema(name, version, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)  # the bundled schemas are enough: offline
    assert kubernetes_validate.validate(load(K8S / name), version, strict=True) == version.rsplit(".", 1)[0]


def test_kubernetes_validate_is_strict():
    broken = load(K8S / "deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


@pytest.fixture(scope="module")
def deployment() -> dict:
    return load(K8S / "deployment.yaml")


def server_container(pod_spec: dict, name: str) -> dict:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return container


def resolve_port(port, container: dict) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return match


def probes(container: dict) -> dict[str, tuple[str, int]]:
    return {
        kind: (container[kind]["httpGet"]["path"], resolve_port(container[kind]["httpGet"]["port"], container))
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }


def pre_stop_sleep(container: dict) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return float(command[1])


def check_server_pod(pod_spec: dict, container: dict, dockerfile: dict, app_client, app_paths) -> dict:
    """What the Deployment and the KServe predictor share; returns the parsed adamix-serve parameters."""
    assert container["command"] == dockerfile["entrypoint"]
    params = adamix_serve_params(container["args"])
    (port,) = [p["containerPort"] for p in container["ports"]]
    assert params["host"] == "0.0.0.0" and params["port"] == port and [port] == dockerfile["expose"]
    assert probes(container) == {
        "startupProbe": ("/ready", port),
        "readinessProbe": ("/ready", port),
        "livenessProbe": ("/health", port),
    }
    for path, _ in probes(container).values():
        assert path in app_paths
        assert app_client.get(path).status_code == 200
    # SIGTERM comes after preStop; adamix-serve then drains for up to --graceful-timeout; keep a margin
    grace = pod_spec["terminationGracePeriodSeconds"]
    assert grace >= pre_stop_sleep(container) + params["graceful_timeout"] + 5
    # non-root, the image's UID
    uid = int(dockerfile["user"].split(":")[0])
    pod_security, security = pod_spec["securityContext"], container["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] == uid
    assert security["runAsUser"] == uid and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, "a writable /tmp (HOME in the image)"
    # onnxruntime threads match the CPU the pod gets
    resources = container["resources"]
    assert params["threads"] == int(resources["limits"]["cpu"]) == int(resources["requests"]["cpu"])
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    return params


def test_deployment_runs_adamix_serve_over_the_models_volume(deployment, dockerfile, app_client, app_paths):
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(pod, "adamix-serve")
    params = check_server_pod(pod, container, dockerfile, app_client, app_paths)
    (models_mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert models_mount["mountPath"] == "/models" and models_mount["readOnly"] is True
    assert all(Path(f).parent == Path("/models") for f in params["folders"])
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"]["claimName"] == load(K8S / "pvc.yaml")["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_hpa_and_pdb_point_at_the_deployment(deployment):
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(pod, "adamix-serve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = load(K8S / "service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert resolve_port(port["targetPort"], container) == container["ports"][0]["containerPort"]
    hpa = load(K8S / "hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = load(K8S / "pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_kustomization_lists_the_manifests_and_sets_the_image(deployment):
    kustomization = load(K8S / "kustomization.yaml")
    assert set(kustomization["resources"]) == set(CORE_MANIFESTS) - {"models-loader.yaml"}
    for name in kustomization["resources"]:
        assert (K8S / name).is_file()
    image = server_container(deployment["spec"]["template"]["spec"], "adamix-serve")["image"]
    (entry,) = kustomization["images"]
    assert image == f"{entry['name']}:{entry['newTag']}"


def test_models_loader_writes_as_the_server_uid(dockerfile):
    loader = load(K8S / "models-loader.yaml")
    uid = int(dockerfile["user"].split(":")[0])
    assert loader["spec"]["securityContext"]["runAsUser"] == uid
    (volume,) = loader["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == load(K8S / "pvc.yaml")["metadata"]["name"]
    assert "ReadWriteMany" in load(K8S / "pvc.yaml")["spec"]["accessModes"], "replicas on several nodes"


# ---- KServe ---------------------------------------------------------------------------------------------
def check_inference_service(isvc: dict) -> dict:
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])  # DNS-1035 label
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    return predictor


def test_kserve_triton_predictor_reads_a_model_repository():
    isvc = load(KSERVE / "triton.yaml")
    predictor = check_inference_service(isvc)
    if "triton" in predictor:
        spec = predictor["triton"]
    else:
        spec = predictor["model"]
        assert spec["modelFormat"]["name"] == "triton"
    assert spec["protocolVersion"] == "v2"
    assert re.fullmatch(r"(s3|gs|pvc|https?)://\S+", spec["storageUri"])
    assert {"cpu", "memory"} <= set(spec["resources"]["limits"])


def test_kserve_custom_predictor_is_the_same_server(deployment, dockerfile, app_client, app_paths):
    isvc = load(KSERVE / "adamix-serve.yaml")
    predictor = check_inference_service(isvc)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    container = server_container(predictor, "kserve-container")
    params = check_server_pod(predictor, container, dockerfile, app_client, app_paths)
    # the models: KServe provides /mnt/models from STORAGE_URI (pvc:// mounts the same claim)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"] == f"pvc://{load(K8S / 'pvc.yaml')['metadata']['name']}"
    assert all(Path(f).parent == Path("/mnt/models") for f in params["folders"])
    # same image, port, probes, resources and options as the Deployment (only the folders' root differs)
    pod = deployment["spec"]["template"]["spec"]
    deployed = server_container(pod, "adamix-serve")
    assert container["image"] == deployed["image"]
    assert [p["containerPort"] for p in container["ports"]] == [p["containerPort"] for p in deployed["ports"]]
    assert probes(container) == probes(deployed)
    assert container["resources"] == deployed["resources"]
    assert predictor["terminationGracePeriodSeconds"] == pod["terminationGracePeriodSeconds"]
    deployed_params = adamix_serve_params(deployed["args"])
    assert [Path(f).name for f in params["folders"]] == [Path(f).name for f in deployed_params["folders"]]
    assert {k: v for k, v in params.items() if k != "folders"} == {
        k: v for k, v in deployed_params.items() if k != "folders"
    }
    # the predictor's pod fields are plain Kubernetes: validate them as a Pod
    pod_fields = ("containers", "volumes", "securityContext", "terminationGracePeriodSeconds")
    as_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": isvc["metadata"]["name"]},
        "spec": {k: predictor[k] for k in (*pod_fields, "automountServiceAccountToken") if k in predictor},
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(as_pod, version, strict=True)


def test_docker_run_lines_in_the_dockerfile_header_are_valid_calls(dockerfile):
    """The `docker run` examples at the top of the Dockerfile: what follows the image is a valid adamix-serve call."""
    logical, current = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not line.startswith("#"):
            continue
        text = line[1:].strip()
        if text.endswith("\\"):
            current += text[:-1] + " "
        else:
            logical.append(current + text)
            current = ""
    runs = [shlex.split(line) for line in logical if line.startswith("docker run")]
    assert len(runs) >= 2
    for tokens in runs:
        (image_at,) = [i for i, t in enumerate(tokens) if re.fullmatch(r"adamix-serve:[\w.-]+", t)]
        mounts = [tokens[i + 1] for i, t in enumerate(tokens) if t == "-v"]
        assert any(m.split(":")[1] == "/models" for m in mounts)
        args = tokens[image_at + 1 :] or dockerfile["cmd"]
        params = adamix_serve_params(args)
        assert params["host"] == "0.0.0.0" and params["port"] in dockerfile["expose"]
        assert all(f.startswith("/models/") for f in params["folders"])
