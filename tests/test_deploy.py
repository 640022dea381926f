"""docker-compose.yml, deploy/*.Dockerfile and deploy/k8s/, checked statically (no Docker engine or cluster
here): they parse; every service, port, command, entry point, flag and copied path exists in the project; and
the commands are exactly the ones `make demo` runs natively (demo/ builds both)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from vitcodec.demo import commands as demo_cmds
from vitcodec.demo import report as demo_report
from vitcodec.demo import run as demo_run
from vitcodec.packages import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {"cloud": DEPLOY / "cloud.Dockerfile", "cloud-gpu": DEPLOY / "cloud-gpu.Dockerfile",
               "edge": DEPLOY / "edge.Dockerfile"}
GPU_FLAGS = ["--device", "cuda", "--backend", "onnxruntime"]
HTTP_PORT, GRPC_PORT = demo_cmds.DEFAULT_HTTP_PORT, demo_cmds.DEFAULT_GRPC_PORT
WORKDIR = "/app"


# ---- helpers ------------------------------------------------------------------------------------------

@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@cache
def distributions() -> dict[str, tuple[str, dict[str, Any]]]:
    """Distribution name -> (folder, its pyproject), for every folder that is a distribution."""
    found = {}
    for config in sorted(ROOT.glob("*/pyproject.toml")):
        data = tomllib.loads(config.read_text())
        found[data["project"]["name"]] = (config.parent.name, data)
    return found


def requirement_name(dep: str) -> str:
    return re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower()


def closure(names: set[str], extras: tuple[str, ...] = ()) -> set[str]:
    """Every requirement name reached from `names` through our distributions (with `extras` of each)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in distributions():
            project = distributions()[name][1]["project"]
            deps = list(project.get("dependencies", []))
            for extra in extras:
                deps += project.get("optional-dependencies", {}).get(extra, [])
            todo += [requirement_name(d) for d in deps]
    return seen


def scripts() -> dict[str, str]:
    return {name: target for _, data in distributions().values()
            for name, target in data["project"].get("scripts", {}).items()}


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, Any]:
    return compose()["services"]


def k8s_documents() -> dict[str, list[dict[str, Any]]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [d for docs in k8s_documents().values() for d in docs if d.get("kind") == kind]


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    out = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) CMD/HEALTHCHECK CMD argument list."""
    value = yaml.safe_load(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def sh_commands(command: list[str]) -> list[list[str]]:
    """``["sh", "-c", "A && B && C"]`` -> [argv(A), argv(B), argv(C)]."""
    assert command[:2] == ["sh", "-c"] and len(command) == 3, command
    return [shlex.split(part) for part in command[2].split("&&")]


def first_sample() -> str:
    return f"samples/{demo_report.read_samples(ROOT / 'samples')[0].name}"


def expected_commands(host: str) -> dict[str, list[str]]:
    """What `make demo` runs with the default ports and every sample, with `host` for the server."""
    return demo_cmds.demo_commands(host, HTTP_PORT, GRPC_PORT, DEFAULT_MODEL, ["samples"], first_sample())


def click_command(program: str) -> Any:
    import typer

    module = {"vitcodec-cloud": "vitcodec.cloud.cli", "vitcodec-edge": "vitcodec.edge.cli",
              "vitcodec": "vitcodec.models.cli"}[program]
    target = scripts()[program]
    assert target.startswith(module + ":"), target
    app = __import__(module, fromlist=["app"]).app
    return typer.main.get_command(app)


def assert_cli_parses(argv: list[str]) -> None:
    """The program is a [project.scripts] entry point and the sub-command accepts these very arguments."""
    assert argv[0] in scripts(), f"{argv[0]} is not an entry point in pyproject's [project.scripts]"
    group = click_command(argv[0])
    sub = group.commands.get(argv[1])
    assert sub is not None, f"{argv[0]} has no command {argv[1]!r}"
    ctx = sub.make_context(argv[1], list(argv[2:]), resilient_parsing=False)  # raises on unknown flags
    ctx.close()


def command_ports(argv: list[str]) -> tuple[int, int]:
    return int(argv[argv.index("--http-port") + 1]), int(argv[argv.index("--grpc-port") + 1])


def container_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    out = {}
    for spec in service.get("ports", []):
        host, _, container = str(spec).rpartition(":")
        out[int(container.split("/")[0])] = int(host.rsplit(":", 1)[-1])
    return out


# ---- compose ------------------------------------------------------------------------------------------

def test_compose_services_and_profiles():
    svc = services()
    assert {"cloud", "edge", "cloud-gpu", "edge-gpu", "prometheus"} <= set(svc)
    assert "profiles" not in svc["cloud"] and "profiles" not in svc["edge"]  # `docker compose up` = CPU demo
    assert svc["cloud-gpu"]["profiles"] == ["gpu"] and svc["edge-gpu"]["profiles"] == ["gpu"]
    assert svc["prometheus"]["profiles"] == ["monitoring"]


@pytest.mark.parametrize("name", ["cloud", "edge", "cloud-gpu", "edge-gpu"])
def test_compose_builds_exist(name):
    build = services()[name]["build"]
    context = ROOT / build["context"]
    assert context.resolve() == ROOT
    assert (context / build["dockerfile"]).is_file()
    assert (context / build["dockerfile"]).resolve() in {p.resolve() for p in DOCKERFILES.values()}


def test_compose_commands_are_the_demos():
    svc = services()
    expected = expected_commands("cloud")
    assert svc["cloud"]["command"] == expected["serve"]
    assert sh_commands(svc["edge"]["command"]) == [expected["send_grpc"], expected["send_rest"],
                                                   expected["reconstruct"]]
    gpu = expected_commands("cloud-gpu")
    assert svc["cloud-gpu"]["command"] == gpu["serve"] + GPU_FLAGS
    assert sh_commands(svc["edge-gpu"]["command"]) == [gpu["send_grpc"], gpu["send_rest"], gpu["reconstruct"]]


def test_demo_runs_these_commands_by_default():
    """With no --samples, the demo sends the whole folder and reconstructs the first sample: the commands above."""
    args = demo_run.build_parser().parse_args([])
    assert (args.model, args.http_port, args.grpc_port, Path(args.out)) == (DEFAULT_MODEL, HTTP_PORT, GRPC_PORT,
                                                                           demo_cmds.OUT_DIR)
    assert demo_report.SAMPLES_DIR == Path("samples")


@pytest.mark.parametrize("name", ["cloud", "edge", "cloud-gpu", "edge-gpu"])
def test_compose_commands_parse_with_the_real_clis(name):
    command = services()[name]["command"]
    for argv in (sh_commands(command) if command[0] == "sh" else [command]):
        assert_cli_parses(argv)


@pytest.mark.parametrize("name", ["edge", "edge-gpu"])
def test_edge_paths_exist_in_the_image(name):
    """samples/ and the reconstructed sample are copied into WORKDIR; the output goes to the mounted demo-out."""
    svc = services()[name]
    instructions = dockerfile(DOCKERFILES["edge"])
    assert ("WORKDIR", WORKDIR) in instructions
    copied = {args.split()[-1].rstrip("/") for ins, args in instructions if ins == "COPY"}
    mounts = {v.split(":")[1] for v in svc["volumes"]}
    for argv in sh_commands(svc["command"]):
        if argv[1] == "send":
            paths = argv[2:argv.index("--server")]
            assert paths == ["samples"] and "./samples" in copied
            assert (ROOT / "samples").is_dir()
        else:
            assert (ROOT / argv[2]).is_file(), argv[2]
            output = argv[argv.index("--output") + 1]
            assert f"{WORKDIR}/{Path(output).parent}" in mounts
    for volume in svc["volumes"]:
        assert volume.split(":")[0] == "./demo-out"


@pytest.mark.parametrize("cloud_name, edge_name", [("cloud", "edge"), ("cloud-gpu", "edge-gpu")])
def test_compose_ports_healthcheck_and_dependency(cloud_name, edge_name):
    svc = services()
    cloud = svc[cloud_name]
    http, grpc = command_ports(cloud["command"])
    assert (http, grpc) == (HTTP_PORT, GRPC_PORT)
    assert set(container_ports(cloud)) == {http, grpc}
    probe = cloud["healthcheck"]["test"]
    assert probe[0] == "CMD" and f"http://127.0.0.1:{http}/v2/health/ready" in " ".join(probe)
    assert svc[edge_name]["depends_on"] == {cloud_name: {"condition": "service_healthy"}}
    urls = [a for argv in sh_commands(svc[edge_name]["command"]) for a in argv if "://" in a]
    assert set(urls) == {f"grpc://{cloud_name}:{grpc}", f"http://{cloud_name}:{http}"}


def test_compose_host_ports_do_not_collide():
    host_ports = [h for s in services().values() for h in container_ports(s).values()]
    assert len(host_ports) == len(set(host_ports))
    assert container_ports(services()["cloud"]) == {HTTP_PORT: HTTP_PORT, GRPC_PORT: GRPC_PORT}


def test_compose_gpu_reservation():
    devices = services()["cloud-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_prometheus_scrapes_the_servers():
    svc = services()
    prom = svc["prometheus"]
    source, target = prom["volumes"][0].split(":")[:2]
    assert (ROOT / source).is_file() and target in " ".join(prom["command"])
    config = yaml.safe_load((ROOT / source).read_text())
    targets = []
    for job in config["scrape_configs"]:
        assert job["metrics_path"] == "/metrics"
        targets += [t for sc in job["static_configs"] for t in sc["targets"]]
    assert "cloud:8000" in targets
    for t in targets:
        host, port = t.split(":")
        assert host in svc and int(port) == command_ports(svc[host]["command"])[0]


def test_compose_images_match_k8s_and_version():
    version = pyproject()["project"]["version"]
    images = {s.get("image") for s in services().values() if "build" in s}
    assert images == {f"vitcodec-cloud:{version}", f"vitcodec-cloud-gpu:{version}", f"vitcodec-edge:{version}"}
    k8s_images = {c["image"] for d in k8s_objects("Deployment") for c in d["spec"]["template"]["spec"]["containers"]}
    assert k8s_images <= images


# ---- Dockerfiles --------------------------------------------------------------------------------------

def dockerignore() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_copies_exist_and_build_the_distribution(name):
    instructions = dockerfile(DOCKERFILES[name])
    assert instructions[0][0] == "FROM"
    ignored = dockerignore()
    sources: list[str] = []
    for ins, args in instructions:
        if ins == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            for source in parts[:-1]:
                assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"
                assert source.rstrip("/") not in ignored, f"{name}: COPY {source} is excluded by .dockerignore"
                sources.append(source.rstrip("/"))
    # every folder pip installs is copied, and together they are every vitcodec-* distribution they need
    # (they are not on any index: a missing one would fail the build)
    folders = {name: folder for name, (folder, _) in distributions().items()}
    installed = {p.strip("./") for cmd in _pip_installs(name) if cmd.startswith("pip install ")
                 for p in cmd.split()[2:] if p.startswith("./")}
    assert installed, f"{name}: installs none of our distributions"
    missing = {f for f in installed if not any(f == s or f.startswith(s + "/") for s in sources)}
    assert not missing, f"{name}: not copied: {missing}"
    ours = {n for n in closure({n for n, f in folders.items() if f in installed}) if n.startswith("vitcodec")}
    assert {folders[n] for n in ours} == installed, f"{name}: installs {installed}, needs {ours}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_cmd_is_an_entry_point(name):
    cmds = [exec_form(args) for ins, args in dockerfile(DOCKERFILES[name]) if ins == "CMD"]
    assert len(cmds) == 1
    cmd = cmds[0]
    assert cmd[0] in scripts()
    if name == "edge":
        assert cmd == ["vitcodec-edge", "--help"]
        return
    assert_cli_parses(cmd)
    serve = expected_commands("cloud")["serve"]
    assert cmd == (serve + GPU_FLAGS if name == "cloud-gpu" else serve)
    assert cmd == services()[name]["command"]


@pytest.mark.parametrize("name", ["cloud", "cloud-gpu"])
def test_cloud_dockerfiles_expose_and_probe_readiness(name):
    instructions = dockerfile(DOCKERFILES[name])
    exposed = {int(p) for ins, args in instructions if ins == "EXPOSE" for p in args.split()}
    assert exposed == {HTTP_PORT, GRPC_PORT}
    checks = [args for ins, args in instructions if ins == "HEALTHCHECK"]
    assert len(checks) == 1 and f"127.0.0.1:{HTTP_PORT}/v2/health/ready" in checks[0]
    assert any(ins == "USER" for ins, _ in instructions)  # the server does not run as root


def _pip_installs(name: str) -> list[str]:
    """The `pip install` / `pip uninstall` commands of a Dockerfile's RUN lines."""
    return [part.strip() for ins, args in dockerfile(DOCKERFILES[name]) if ins == "RUN"
            for part in args.split("&&") if re.match(r"pip (un)?install", part.strip())]


def test_edge_image_is_torch_free():
    installs = _pip_installs("edge")
    assert len(installs) == 1 and "vitcodec-edge" in {n for n, (f, _) in distributions().items()
                                                      if f"./{f}" in installs[0].split()}, installs
    assert not {"torch", "torchvision", "timm", "compressai"} & closure({"vitcodec-edge"})
    assert "torch" not in (ROOT / "deploy/edge.Dockerfile").read_text().replace("torch-free", "").replace(
        "no torch", "")


def test_cloud_images_pin_the_models_torch():
    pins = {d for d in distributions()["vitcodec-models"][1]["project"]["dependencies"]
            if d.startswith(("torch==", "torchvision=="))}
    assert len(pins) == 2
    for name in ("cloud", "cloud-gpu"):
        installs = " ".join(_pip_installs(name))
        assert all(pin in installs for pin in pins), (name, installs)
        assert "./cloud" in installs
    assert "--index-url https://download.pytorch.org/whl/cpu" in " ".join(_pip_installs("cloud"))
    gpu = " ".join(_pip_installs("cloud-gpu"))
    gpu_extra = distributions()["vitcodec-cloud"][1]["project"]["optional-dependencies"]["gpu"]
    assert any(d.startswith("onnxruntime-gpu") for d in gpu_extra) and "onnxruntime-gpu" in gpu
    assert "pip uninstall -y onnxruntime" in gpu  # one `onnxruntime` module, the GPU build's


def test_cloud_images_install_no_training_stack():
    """The server images install vitcodec-cloud and what it needs, which holds no compressai (that is
    vitcodec-models[train]); `make install` gives developers both sides in one command."""
    assert "compressai" not in closure({"vitcodec-cloud"})
    assert {"compressai", "torch", "timm"} <= closure({"vitcodec-models"}, extras=("train",))
    for name in ("cloud", "cloud-gpu"):
        installs = " ".join(_pip_installs(name))
        assert "compressai" not in installs and "train" not in installs, (name, installs)
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[cloud,train,dev]'" in makefile
    dists = re.search(r"^DISTS := (.*)$", makefile, re.MULTILINE).group(1).split()
    assert sorted(dists) == sorted(folder for folder, _ in distributions().values())


def test_dockerignore_keeps_the_context_small():
    ignored = dockerignore()
    for entry in (".venv", ".git", "runs", "demo-out"):
        assert entry in ignored


# ---- Kubernetes ---------------------------------------------------------------------------------------

def test_k8s_files_parse_and_kustomization_lists_them():
    docs = k8s_documents()
    assert {"deployment.yaml", "deployment-gpu.yaml", "service.yaml", "hpa.yaml", "kustomization.yaml"} <= set(docs)
    for name, objects in docs.items():
        for obj in objects:
            assert obj.get("apiVersion") and obj.get("kind"), name
    kustomization = docs["kustomization.yaml"][0]
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file()
    images = {c["image"].split(":")[0] for d in k8s_objects("Deployment")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert {i["name"] for i in kustomization["images"]} <= images


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("name", ["vitcodec-cloud", "vitcodec-cloud-gpu"])
def test_k8s_deployment(name):
    deployment = next(d for d in k8s_objects("Deployment") if d["metadata"]["name"] == name)
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    c = _container(deployment)
    serve = expected_commands("cloud")["serve"]
    gpu = name.endswith("-gpu")
    assert c["command"] == (serve + GPU_FLAGS if gpu else serve)
    assert_cli_parses(c["command"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": HTTP_PORT, "grpc": GRPC_PORT}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    resources = c["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]
    if gpu:
        assert resources["limits"]["nvidia.com/gpu"] == 1
    # the pod waits for the server's own drain (graceful_timeout_s) before it is killed
    drain = next((float(e["value"]) for e in c.get("env", []) if e["name"] == "VITCODEC_GRACEFUL_TIMEOUT_S"), 30.0)
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_k8s_service_routes_both_transports_to_every_deployment():
    (service,) = k8s_objects("Service")
    selector = service["spec"]["selector"]
    for deployment in k8s_objects("Deployment"):
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        names = {p["name"] for p in _container(deployment)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("http", HTTP_PORT), ("grpc", GRPC_PORT)}


def test_k8s_hpa_targets_the_deployment():
    (hpa,) = k8s_objects("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    deployment = next(d for d in k8s_objects("Deployment") if d["metadata"]["name"] == ref["name"])
    assert (ref["kind"], ref["apiVersion"]) == (deployment["kind"], deployment["apiVersion"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


EDGE_VARIABLES = {"VITCODEC_CA_CERT", "VITCODEC_CLIENT_CERT", "VITCODEC_CLIENT_KEY"}  # read by vitcodec-edge


def test_every_vitcodec_variable_is_a_setting():
    """Every VITCODEC_ variable the manifests set is a server setting or one the edge CLI reads (no typos)."""
    from vitcodec.cloud.settings import Settings

    fields = {f"VITCODEC_{name.upper()}" for name in Settings.model_fields}
    text = "\n".join(p.read_text() for p in [COMPOSE_FILE, *K8S.glob("*.yaml"), *DOCKERFILES.values()])
    named = set(re.findall(r"VITCODEC_[A-Z_]+", text))
    assert named, "expected settings in the manifests"
    assert named <= fields | {"VITCODEC_MODEL_REPO"} | EDGE_VARIABLES, named - fields - EDGE_VARIABLES


# ---- make demo ----------------------------------------------------------------------------------------

def test_makefile_demo_runs_the_demo_module():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n\t(.+)$", makefile, re.M)
    assert recipe and "-m vitcodec.demo" in recipe.group(1)


def test_demo_module_imports_without_torch():
    code = "import sys, vitcodec.demo.run; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- Kubernetes with TLS: the kustomize overlays deploy/k8s-tls and deploy/k8s-mtls ----------------------

OVERLAYS = {"tls": DEPLOY / "k8s-tls", "mtls": DEPLOY / "k8s-mtls"}
# strategic merge patch: the key that identifies an item of each list (kustomize merges lists by it)
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath",
              "ports": ("port", "containerPort")}


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    """A strategic merge patch, as far as these overlays use it: maps merge (null deletes a key), lists of maps
    merge item by item on their merge key (new items go first, as kustomize puts them), other values replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(base[key], value, key) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        keys = MERGE_KEYS[field] if isinstance(MERGE_KEYS[field], tuple) else (MERGE_KEYS[field],)
        key = next(k for k in keys if all(k in item for item in base + patch))
        out = list(base)
        index = {item[key]: i for i, item in enumerate(base)}
        new = []
        for item in patch:
            if item[key] in index:
                out[index[item[key]]] = _merge(out[index[item[key]]], item, field)
            else:
                new.append(item)
        return new + out
    return patch


def _render_by_hand(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize folder` for these overlays (resources and patches by name), without kubectl."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (folder / resource).resolve()
        if (path / "kustomization.yaml").is_file():
            base = yaml.safe_load((path / "kustomization.yaml").read_text())
            objects += (_render_by_hand(path) if "patches" in base else
                        [d for r in base["resources"] for d in yaml.safe_load_all((path / r).read_text()) if d])
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        p = yaml.safe_load((folder / patch["path"]).read_text())
        i = next(i for i, o in enumerate(objects)
                 if (o["kind"], o["metadata"]["name"]) == (p["kind"], p["metadata"]["name"]))
        objects[i] = _merge(objects[i], p)
    return objects


def _renderings(name: str) -> dict[str, list[dict[str, Any]]]:
    """The overlay rendered by hand and, where kubectl is installed, by `kubectl kustomize` too."""
    out = {"by hand": _render_by_hand(OVERLAYS[name])}
    import shutil

    if shutil.which("kubectl"):
        done = subprocess.run(["kubectl", "kustomize", str(OVERLAYS[name])], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        out["kubectl kustomize"] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return out


def _mounted_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """(the volume, the key in it) that a file path in the container comes from; the mount must be read-only."""
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1, f"{path} is not in exactly one volume mount"
    mount = mounts[0]
    assert mount.get("readOnly") is True, f"{mount['mountPath']} is not mounted read-only"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return volume, path[len(mount["mountPath"].rstrip("/")) + 1:]


def test_k8s_base_stays_plaintext():
    """`kubectl apply -k deploy/k8s` is the plaintext server (no TLS files needed); TLS is an overlay."""
    c = _container(next(d for d in k8s_objects("Deployment") if d["metadata"]["name"] == "vitcodec-cloud"))
    assert not {e["name"] for e in c.get("env", [])} & {"VITCODEC_TLS_CERT", "VITCODEC_TLS_KEY"}
    assert all("scheme" not in c[p]["httpGet"] for p in ("startupProbe", "readinessProbe", "livenessProbe"))


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_k8s_tls_overlay_mounts_env_and_probes_agree(name, monkeypatch):
    from vitcodec.cloud.settings import Settings

    base = next(d for d in k8s_objects("Deployment") if d["metadata"]["name"] == "vitcodec-cloud")
    for how, objects in _renderings(name).items():
        (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
        pod = deployment["spec"]["template"]["spec"]
        c = _container(deployment)
        assert c["command"] == _container(base)["command"], how  # same serve command: TLS comes from the env
        env = {e["name"]: e["value"] for e in c["env"]}
        # the certificate and key: a kubernetes.io/tls Secret's two keys
        tls_volume, cert_key = _mounted_file(pod, c, env["VITCODEC_TLS_CERT"])
        key_volume, key_key = _mounted_file(pod, c, env["VITCODEC_TLS_KEY"])
        assert tls_volume is key_volume and "secret" in tls_volume, how
        assert (cert_key, key_key) == ("tls.crt", "tls.key"), how
        credentials_volume, _ = _mounted_file(pod, c, env["VITCODEC_CREDENTIALS"])
        assert "secret" in credentials_volume, how
        if name == "mtls":
            ca_volume, _ = _mounted_file(pod, c, env["VITCODEC_TLS_CLIENT_CA"])
            assert "secret" in ca_volume or "configMap" in ca_volume, how
        else:
            assert "VITCODEC_TLS_CLIENT_CA" not in env, how
        # every mount has its volume; the server (runAsUser, not root) can read the Secret files
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert {m["name"] for m in c["volumeMounts"]} <= set(volumes), how
        for volume in volumes.values():
            source = volume.get("secret") or volume.get("configMap")
            mode = source.get("defaultMode", 0o644)
            assert mode & 0o004 or (mode & 0o040 and pod["securityContext"].get("fsGroup") ==
                                    pod["securityContext"]["runAsUser"]), (how, volume)
        # the env is what the server reads: the settings take it
        for key in list(env):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)
        assert settings.tls_cert == Path(env["VITCODEC_TLS_CERT"]) and settings.tls_key is not None, how
        assert (settings.tls_client_ca is not None) == (name == "mtls"), how
        # probes: HTTPS (the kubelet does not check the certificate); with mTLS the kubelet has no client
        # certificate, so the probes run in the container and present one
        paths = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                 "livenessProbe": "/v2/health/live"}
        for probe, path in paths.items():
            spec = c[probe]
            if name == "tls":
                assert spec["httpGet"] == {"path": path, "port": "http", "scheme": "HTTPS"}, (how, probe)
            else:
                assert "httpGet" not in spec, (how, probe)
                argv = spec["exec"]["command"]
                assert argv[:2] == ["python", "-c"], (how, probe)
                compile(argv[2], probe, "exec")
                assert f"https://127.0.0.1:{HTTP_PORT}{path}" in argv[2], (how, probe)
                for file in re.findall(r"'(/etc/[^']+)'", argv[2]):
                    volume, _ = _mounted_file(pod, c, file)
                    assert "secret" in volume, (how, file)
                assert spec["timeoutSeconds"] > 2, (how, probe)  # the probe's own urlopen timeout is 2 s
        # the Service says TLS on both ports: no cleartext h2c for gRPC any more
        (service,) = [o for o in objects if o["kind"] == "Service"]
        protocols = {p["name"]: p.get("appProtocol") for p in service["spec"]["ports"]}
        assert protocols == {"http": "https", "grpc": "grpc"}, how
        assert any(o["kind"] == "HorizontalPodAutoscaler" for o in objects), how


def test_k8s_overlay_variables_are_settings():
    from vitcodec.cloud.settings import Settings

    fields = {f"VITCODEC_{name.upper()}" for name in Settings.model_fields}
    text = "\n".join(p.read_text() for folder in OVERLAYS.values() for p in folder.glob("*.yaml"))
    named = set(re.findall(r"VITCODEC_[A-Z_]+", text))
    assert {"VITCODEC_TLS_CERT", "VITCODEC_TLS_KEY", "VITCODEC_TLS_CLIENT_CA", "VITCODEC_CREDENTIALS"} <= named
    assert named <= fields, named - fields
