"""``cluster.yaml`` and ``cluster-onprem.yaml``, checked offline: Ray's own schema (the code
``ray up`` runs before it touches a cloud), boto3's description of EC2's RunInstances for the
AWS node settings, and the security and version rules the files promise.

No AWS call, no network: ``prepare_config`` only merges Ray's bundled defaults, and botocore's
service models are files in the package.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from trainables.config import TrainConfig, field_names

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"
FILES = [AWS, ONPREM]
PROJECT_DIR = "/home/ray/cxrkd"  # where file_mounts puts the repository on every node
SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|access_key|session_key", re.I)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|-----BEGIN|aws_secret", re.I)
OPEN_CIDR = re.compile(r"^(0\.0\.0\.0/0|::/0)$")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_check(config: dict) -> dict:
    """What ``ray up`` does to the file before it launches anything."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def walk(node, path: str = "") -> Iterator[tuple[str, object, object]]:
    """Every (path, key, value) of a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield f"{path}[{i}]", None, value
            yield from walk(value, f"{path}[{i}]")


def commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands")
    keys += ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config.get(key) or []]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ray_accepts_the_file(path: Path):
    prepared = ray_check(load(path))
    assert prepared["cluster_name"] == "cxrkd"


def test_aws_node_types_as_ray_sees_them():
    prepared = ray_check(load(AWS))
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no trial is ever placed on the head
    assert head["max_workers"] == 0
    assert types["gpu.a10g"]["node_config"]["InstanceType"] == "g5.xlarge"
    assert types["gpu.a10g"]["min_workers"] == 0 < types["gpu.a10g"]["max_workers"]
    big = {t["node_config"]["InstanceType"]: t["max_workers"] for t in types.values()}
    assert big["p4d.24xlarge"] == 0 and big["p5.48xlarge"] == 0  # opt-in alternatives
    assert sum(t["min_workers"] for t in types.values()) <= prepared["max_workers"]


TYPOS = {
    "max_worker": (("available_node_types", "gpu.a10g"), "max_workers", "max_worker"),
    "setup_comands": ((), "setup_commands", "setup_comands"),
    "docker pull_before_rnu": (("docker",), "pull_before_run", "pull_before_rnu"),
    "idle_timeout_minute": ((), "idle_timeout_minutes", "idle_timeout_minute"),
}


def _rename(config: dict, where: tuple[str, ...], old: str, new: str) -> dict:
    config = copy.deepcopy(config)
    node = config
    for part in where:
        node = node[part]
    node[new] = node.pop(old)
    return config


@pytest.mark.parametrize("where,old,new", TYPOS.values(), ids=TYPOS.keys())
def test_a_misspelled_key_is_refused(where: tuple[str, ...], old: str, new: str):
    config = _rename(load(AWS), where, old, new)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(new)):
        ray_check(config)


def test_a_misspelled_ec2_setting_is_refused():
    """Ray passes node_config to EC2's RunInstances unchecked; botocore's model (bundled,
    offline) knows its parameters, so a typo fails here instead of at launch."""
    botocore_session = pytest.importorskip("botocore.session")
    shape = botocore_session.get_session().get_service_model("ec2")
    allowed = set(shape.operation_model("RunInstances").input_shape.members)
    allowed |= {"SubnetIds"}  # Ray's own key: it picks one subnet per launch from the list

    def unknown(config: dict) -> dict[str, set[str]]:
        return {
            name: set(t["node_config"]) - allowed
            for name, t in config["available_node_types"].items()
            if set(t["node_config"]) - allowed
        }

    config = load(AWS)
    assert unknown(config) == {}
    config["available_node_types"]["gpu.a10g"]["node_config"]["InstanceTyp"] = "g5.xlarge"
    assert unknown(config) == {"gpu.a10g": {"InstanceTyp"}}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_credentials_in_the_file(path: Path):
    for where, key, value in walk(load(path)):
        assert key is None or not SECRET_KEY.search(str(key)), where
        assert not (isinstance(value, str) and SECRET_VALUE.search(value)), where
    assert not SECRET_VALUE.search(path.read_text())  # comments included


def test_aws_nodes_get_s3_from_instance_profiles_and_one_private_security_group():
    config = load(AWS)
    groups = set()
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert set(node["IamInstanceProfile"]) <= {"Name", "Arn"}, name
        # Without SecurityGroupIds Ray creates a group that admits SSH from 0.0.0.0/0.
        assert node["SecurityGroupIds"], name
        groups.add(tuple(node["SecurityGroupIds"]))
    assert len(groups) == 1  # one group: its members (the cluster) may talk to each other
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        for cidr in rule.get("IpRanges", []) + rule.get("Ipv6Ranges", []):
            address = cidr.get("CidrIp") or cidr.get("CidrIpv6")
            assert not OPEN_CIDR.match(address) or rule.get("FromPort") == 22, rule


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_nothing_of_ray_listens_beyond_the_cluster(path: Path):
    config = load(path)
    for where, _, value in walk(config):
        assert not (isinstance(value, str) and OPEN_CIDR.match(value.strip())), where
    starts = " ".join(config["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", starts)
    assert hosts == ["127.0.0.1"]  # reached through `ray dashboard` (an SSH tunnel)
    run_options = " ".join(config.get("docker", {}).get("run_options", []))
    assert not re.search(r"(^|\s)(-p|--publish)\b", run_options)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ray_version_is_pinned_to_the_installed_one(path: Path):
    config = load(path)
    docker = config.get("docker") or {}
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    for node_type in (config.get("available_node_types") or {}).values():
        images += [v for k, v in (node_type.get("docker") or {}).items() if k.endswith("image")]
    assert images
    for image in images:
        match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)", image)
        assert match, f"{image}: pin a Ray GPU image by version"
        assert match.group(1) == ray.__version__, image
    pins = re.findall(r"ray\[[a-z,]+\]\s*([=<>!~]=?)\s*([\w.]+)", " ".join(commands(config)))
    assert pins == [("==", ray.__version__)]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_project_is_installed_on_every_node(path: Path):
    config = load(path)
    assert config["file_mounts"][PROJECT_DIR] == "."
    setup = config["setup_commands"]  # run on the head and on every worker
    assert any(re.search(rf"pip install .*-e {PROJECT_DIR}(\s|$)", cmd) for cmd in setup)
    assert {".git", ".venv"} <= set(config["rsync_exclude"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_infrastructure_only(path: Path):
    config = load(path)
    hyper = field_names(TrainConfig)
    keys = {str(key) for _, key, _ in walk(config) if key is not None}
    assert not keys & hyper
    assert not any("cxrkd search" in cmd or "--set" in cmd for cmd in commands(config))
