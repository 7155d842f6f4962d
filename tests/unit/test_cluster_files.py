"""The files under cluster/: they parse, Ray's own validator accepts the launcher config, the
KubeRay manifests have the fields KubeRay needs, and every `tl-ray` command they embed names a
real subcommand. No Ray, no cloud, no network.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
AWS_CONFIG = CLUSTER / "aws-gpu.yaml"
KUBERAY = CLUSTER / "kuberay"
SERVE_CONFIG = ROOT / "serve" / "config.yaml"

def _subcommands() -> set[str]:
    import argparse

    from tl_ray.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


SUBCOMMANDS = _subcommands()
IMPORT_PATH = "tl_ray.serving.app:build_app"
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))

# `tl-ray` as a shell word followed by a subcommand; not `tl-ray[gpu]`, `tl-ray-s3` or a URL part.
_COMMAND = re.compile(r"(?<![\w./@\[-])tl-ray[ \t]+[a-z][^;&|\n]*")
# A usage line in a YAML comment: `#   $ ray up cluster/aws-gpu.yaml`.
_USAGE_COMMENT = re.compile(r"^\s*#\s*\$\s+(?P<cmd>.+)$")
_FENCE = re.compile(r"^```(?:bash|sh|console)\n(?P<body>.*?)^```", re.M | re.S)
# A pip requirement that installs tl-ray from a direct URL: `tl-ray[gpu] @ https://...`.
_PIP_SPEC = re.compile(r"tl-ray(?:\[[\w,]+\])?\s*@\s*(?P<source>[^\s\"']+)")


class EmbeddedCommand(NamedTuple):
    """One `tl-ray ...` command written into a file under cluster/.

    Args:
        source: Where it was found, e.g. ``cluster/kuberay/rayjob-sweep.yaml: spec.entrypoint``.
        command: The command text from ``tl-ray`` to the end of the shell command.
    """

    source: str
    command: str

    @property
    def argv(self) -> list[str]:
        """The command split the way a shell would, e.g. ``['tl-ray', 'tune', 'spec.yaml']``."""
        return shlex.split(self.command)


def _load_all(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _strings(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string value in a parsed YAML tree with its dotted location; strings that are
    YAML mappings themselves (serveConfigV2, runtimeEnvYAML) are walked too."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{where}[{i}]")
    elif isinstance(node, str):
        yield where, node
        if "\n" in node:
            try:
                inner = yaml.safe_load(node)
            except yaml.YAMLError:
                return
            if isinstance(inner, dict):
                yield from _strings(inner, where)


def _commands_in(text: str, source: str) -> Iterator[EmbeddedCommand]:
    for match in _COMMAND.finditer(text.replace("\\\n", " ")):
        yield EmbeddedCommand(source, match.group(0).strip().rstrip("\\").strip())


def embedded_tl_ray_commands() -> list[EmbeddedCommand]:
    """Every `tl-ray` command written into cluster/: YAML values, `# $ ...` usage comments in
    the YAML files, and shell blocks of cluster/README.md.

    Example:
        >>> cmds = embedded_tl_ray_commands()
        >>> sorted({c.argv[1] for c in cmds})
        ['predict', 'run', 'tune']
    """
    found: list[EmbeddedCommand] = []
    for path in YAML_FILES:
        rel = path.relative_to(ROOT).as_posix()
        for doc in _load_all(path):
            for where, value in _strings(doc, ""):
                found.extend(_commands_in(value, f"{rel}: {where}"))
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            usage = _USAGE_COMMENT.match(line)
            if usage:
                found.extend(_commands_in(usage.group("cmd"), f"{rel}:{lineno}"))
    readme = CLUSTER / "README.md"
    if readme.exists():
        for block in _FENCE.finditer(readme.read_text()):
            found.extend(_commands_in(block.group("body"), "cluster/README.md"))
    return found


def _kuberay(name: str) -> dict:
    docs = _load_all(KUBERAY / name)
    assert len(docs) == 1, f"{name}: expected one manifest. Received: {len(docs)} documents."
    return docs[0]


def _cluster_spec(manifest: dict) -> dict:
    """The RayCluster spec of a RayCluster, RayJob or RayService."""
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}[manifest["kind"]]
    return manifest["spec"] if key is None else manifest["spec"][key]


def _containers(cluster_spec: dict) -> Iterator[tuple[str, dict]]:
    for c in cluster_spec["headGroupSpec"]["template"]["spec"]["containers"]:
        yield "head", c
    for group in cluster_spec["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            yield group["groupName"], c


MANIFESTS = {
    "raycluster.yaml": "RayCluster",
    "rayjob-sweep.yaml": "RayJob",
    "rayservice.yaml": "RayService",
}


# --- every file -------------------------------------------------------------------------------


def test_cluster_files_are_present():
    names = {p.relative_to(CLUSTER).as_posix() for p in YAML_FILES}
    assert {"aws-gpu.yaml", *(f"kuberay/{m}" for m in MANIFESTS)} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_yaml_parses_to_mappings(path):
    docs = _load_all(path)
    assert docs, f"{path}: no YAML documents"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: each document must be a mapping. Received: {type(doc).__name__}"


# --- Ray cluster launcher ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws_config() -> dict:
    return yaml.safe_load(AWS_CONFIG.read_text())


def _prepared(config: dict) -> dict:
    # What `ray up` does before it first talks to AWS (commands._bootstrap_config):
    # merge aws/defaults.yaml, merge setup commands, fill per-type worker bounds, then validate.
    # The AWS-side steps after that (resource autodetection, IAM, subnets) need credentials.
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(config))


def test_aws_config_passes_rays_validator(aws_config):
    from ray.autoscaler._private.util import validate_config

    validate_config(_prepared(aws_config))


def test_rays_validator_is_not_vacuous(aws_config):
    import jsonschema

    broken = copy.deepcopy(aws_config)
    broken["available_node_types"]["gpu-1"]["resources"]["GPU"] = "one"
    from ray.autoscaler._private.util import validate_config

    with pytest.raises(jsonschema.ValidationError):
        validate_config(_prepared(broken))


def test_aws_node_types(aws_config):
    assert (aws_config["provider"]["type"], aws_config["provider"]["region"]) == ("aws", "us-west-2")
    assert aws_config["auth"]["ssh_user"] == "ubuntu"
    types = aws_config["available_node_types"]
    head = types[aws_config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head runs the Tune driver, not trials"
    assert types["gpu-1"]["resources"]["GPU"] == 1
    assert types["gpu-8"]["resources"]["GPU"] == 8
    workers = {name: t for name, t in types.items() if name != aws_config["head_node_type"]}
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], f"{name}: needs 0 <= min_workers <= max_workers"
    assert sum(t["min_workers"] for t in workers.values()) <= aws_config["max_workers"]
    assert max(t["max_workers"] for t in workers.values()) <= aws_config["max_workers"]
    assert aws_config["idle_timeout_minutes"] > 0


def test_aws_setup_installs_tl_ray_and_starts_ray(aws_config):
    prepared = _prepared(aws_config)
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any(
            "pip install" in cmd and "tl-ray[gpu]" in cmd for cmd in prepared[key]
        ), f"{key} must install tl-ray[gpu]. Received: {prepared[key]}"
    assert any("ray start --head" in cmd for cmd in aws_config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in cmd for cmd in aws_config["worker_start_ray_commands"])


# --- KubeRay ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind", MANIFESTS.items())
def test_kuberay_manifest_shape(name, kind):
    manifest = _kuberay(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    assert manifest["metadata"]["name"]
    spec = _cluster_spec(manifest)
    assert spec["rayVersion"] == ray.__version__, "KubeRay's rayVersion must match the Ray tl-ray pins"
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"]
    assert spec["workerGroupSpecs"], f"{name}: no workerGroupSpecs"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-sweep.yaml"])
def test_training_clusters_have_gpu_workers(name):
    spec = _cluster_spec(_kuberay(name))
    gpus = [
        int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        for group, c in _containers(spec)
        if group != "head"
    ]
    assert any(n >= 1 for n in gpus), f"{name}: no worker group limits nvidia.com/gpu"


@pytest.mark.parametrize("name", MANIFESTS)
def test_images_match_the_pinned_ray(name):
    for group, c in _containers(_cluster_spec(_kuberay(name))):
        assert c["image"].startswith(f"rayproject/ray:{ray.__version__}-py311"), (
            f"{name} {group}: image must be rayproject/ray:{ray.__version__}-py311*. Received: {c['image']}"
        )


def test_aws_image_matches_the_pinned_ray(aws_config):
    assert aws_config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311")


@pytest.mark.parametrize("name", MANIFESTS)
def test_s3_credentials_come_from_a_secret(name):
    for group, c in _containers(_cluster_spec(_kuberay(name))):
        env = {e["name"]: e for e in c.get("env", [])}
        for var in SECRET_ENV:
            assert var in env, f"{name} {group}: {var} is not set"
            assert "secretKeyRef" in env[var].get("valueFrom", {}), f"{name} {group}: {var} must use secretKeyRef"
        for var, e in env.items():
            if re.search(r"KEY|SECRET|TOKEN|PASSWORD", var) and "value" in e:
                pytest.fail(f"{name} {group}: {var} has a literal value; read it from a Secret")


def test_rayjob_runs_a_sweep():
    spec = _kuberay("rayjob-sweep.yaml")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["tl-ray", "tune"], f"entrypoint must run `tl-ray tune`. Received: {spec['entrypoint']}"
    assert any(a.startswith("storage=s3://") for a in argv), "the sweep must write to S3: --set storage=s3://..."
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and "working_dir" in runtime_env
    assert spec["shutdownAfterJobFinishes"] is True


@pytest.fixture(scope="module")
def serve_application() -> dict:
    config = yaml.safe_load(_kuberay("rayservice.yaml")["spec"]["serveConfigV2"])
    assert isinstance(config, dict), "serveConfigV2 must be a YAML mapping"
    (app,) = config["applications"]
    return app


def test_rayservice_serves_tl_ray(serve_application):
    assert serve_application["import_path"] == IMPORT_PATH
    assert serve_application["args"]["model"].endswith(":production")


def test_rayservice_matches_serve_config(serve_application):
    if not SERVE_CONFIG.exists():
        pytest.skip("serve/config.yaml is not written yet")
    apps = {a["import_path"]: a for a in yaml.safe_load(SERVE_CONFIG.read_text())["applications"]}
    assert IMPORT_PATH in apps, f"serve/config.yaml has no application with import_path {IMPORT_PATH}"
    cluster_args = {k: v for k, v in serve_application["args"].items() if k != "storage"}
    assert cluster_args == apps[IMPORT_PATH].get("args"), (
        "cluster/kuberay/rayservice.yaml and serve/config.yaml must build the same application (the store aside)"
    )


def test_rayservice_serves_from_the_store_the_rayjob_promotes_to(serve_application):
    entrypoint = shlex.split(_kuberay("rayjob-sweep.yaml")["spec"]["entrypoint"])
    job_store = next(a.split("=", 1)[1] for a in entrypoint if a.startswith("storage="))
    assert serve_application["args"].get("storage") == job_store, (
        "cluster/kuberay/rayservice.yaml must read the store rayjob-sweep.yaml promotes to: "
        f"args.storage: {job_store}"
    )


def test_gpu_walkthroughs_keep_trials_off_the_head_and_ask_for_gpus():
    for name in ("raycluster.yaml", "rayjob-sweep.yaml"):
        head = _cluster_spec(_kuberay(name))["headGroupSpec"]["rayStartParams"]
        assert head.get("num-cpus") == "0", f"{name}: the head must run no trials (rayStartParams num-cpus: '0')"
    assert "train.gpus_per_worker=1" in _kuberay("rayjob-sweep.yaml")["spec"]["entrypoint"]
    aws = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    assert aws["available_node_types"][aws["head_node_type"]]["resources"]["CPU"] == 0


# --- what the files install and run -----------------------------------------------------------


def test_every_file_installs_tl_ray_from_one_source():
    sources = {}
    for path in YAML_FILES:
        for match in _PIP_SPEC.finditer(path.read_text()):
            sources.setdefault(match.group("source"), []).append(path.relative_to(CLUSTER).as_posix())
    assert len(sources) == 1, f"cluster files install tl-ray from different sources: {sources}"


def test_extraction_finds_the_sweep_entrypoint():
    sources = [c.source for c in embedded_tl_ray_commands()]
    assert "cluster/kuberay/rayjob-sweep.yaml: spec.entrypoint" in sources


def _commands_or_none() -> list[EmbeddedCommand]:
    # Collection must survive a broken YAML file: test_yaml_parses_to_mappings reports it.
    try:
        return embedded_tl_ray_commands()
    except yaml.YAMLError:
        return []


@pytest.mark.parametrize("cmd", _commands_or_none(), ids=lambda c: c.source)
def test_embedded_commands_use_real_subcommands(cmd):
    argv = cmd.argv
    assert len(argv) >= 2 and argv[1] in SUBCOMMANDS, (
        f"{cmd.source}: `{cmd.command}` must start with one of tl-ray's subcommands "
        f"{sorted(SUBCOMMANDS)}. Received: {argv[1] if len(argv) > 1 else 'none'}"
    )


@pytest.mark.parametrize("cmd", _commands_or_none(), ids=lambda c: c.source)
def test_embedded_commands_parse_with_the_real_cli(cmd):
    """Each embedded command is accepted by tl-ray's own argument parser, as written."""
    from tl_ray.cli import build_parser

    try:
        build_parser().parse_args(cmd.argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{cmd.source}: `{cmd.command}` is rejected by tl-ray's parser (exit {exc.code})")
