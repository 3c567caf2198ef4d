"""``cluster.yaml`` and ``cluster-onprem.yaml``, checked offline: Ray's own schema (the code
``ray up`` runs before it touches a cloud), boto3's description of EC2's RunInstances for the
AWS node settings, and the security and version rules the files promise: Ray's token
authentication, IMDSv2, the IAM policies in ``cluster/iam``, the image pin and the constraints
file the nodes install with.

No AWS call, no network: ``prepare_config`` only merges Ray's bundled defaults, botocore's
service models are files in the package, and the token fetcher runs against moto.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import importlib.metadata
import importlib.util
import json
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cxrkd.trainables.config import TrainConfig, field_names

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"
FILES = [AWS, ONPREM]
PROJECT_DIR = "/home/ray/cxrkd"  # where file_mounts puts the repository on every node
CONSTRAINTS = ROOT / "cluster" / "constraints.txt"
TOKEN_FETCHER = ROOT / "cluster" / "ray_auth_token.py"
IAM = ROOT / "cluster" / "iam"
SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|access_key|session_key", re.I)
# Setting names that match SECRET_KEY but hold no secret (EC2's IMDSv2 switch).
NOT_SECRET_KEYS = {"HttpTokens"}
# What a Ray auth token looks like (``ray get-auth-token --generate``: 32+ hex digits), or
# a token handed over inline instead of through a file.
TOKEN_LITERAL = re.compile(
    r"(?<!sha256:)(?<![0-9A-Za-z])[0-9a-fA-F]{32,}(?![0-9A-Za-z])"
    r"|(?<![A-Za-z_])RAY_AUTH_TOKEN\s*[=:]"
)
RAY_START = re.compile(r"\bray start\b")
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
        assert key is None or key in NOT_SECRET_KEYS or not SECRET_KEY.search(str(key)), where
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
        match = re.fullmatch(
            r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)(@sha256:[0-9a-f]{64})?", image
        )
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


# --- Ray's token authentication ---------------------------------------------------------


def start_commands(config: dict) -> list[str]:
    return [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_ray_start_runs_with_token_authentication(path: Path):
    config = load(path)
    starts = [cmd for cmd in start_commands(config) if RAY_START.search(cmd)]
    assert len(starts) == 2  # the head's and the workers'
    for cmd in starts:
        # Each `ray start` itself carries the mode (Ray reads it from the environment only).
        assert len(RAY_START.findall(cmd)) == len(
            re.findall(r"(?:^|[;&|]\s*|\s)RAY_AUTH_MODE=token ray start\b", cmd)
        ), cmd
        # Ray's usage reports to its makers (on by default) are off on every node.
        assert "--disable-usage-stats" in cmd, cmd
    # Every other Ray command in the container too (`ray exec ... ray status`, the driver).
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    # Ray's own switch, not a look-alike: the variable this Ray reads.
    setup = pytest.importorskip("ray._private.authentication.authentication_token_setup")
    assert setup.AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_token_literal_in_the_file(path: Path):
    text = path.read_text()
    assert not TOKEN_LITERAL.search(text), TOKEN_LITERAL.search(text)
    # The check would see a real token (Ray's generator), pasted anywhere.
    generator = pytest.importorskip("ray._private.authentication.authentication_token_generator")
    token = generator.generate_new_authentication_token()
    assert TOKEN_LITERAL.search(text.replace("ray stop", f"RAY_AUTH_TOKEN={token} ray stop", 1))
    assert TOKEN_LITERAL.search(text.replace("cxrkd", token, 1))


def test_aws_nodes_fetch_the_token_from_ssm_with_their_role():
    config = load(AWS)
    setup = config["setup_commands"]  # every node, before its ray start
    fetch = [cmd for cmd in setup if "ray_auth_token.py" in cmd]
    assert fetch == [
        f"python {PROJECT_DIR}/cluster/ray_auth_token.py --parameter /cxrkd/ray-auth-token"
    ]
    # boto3 is installed before the fetch runs, on every node (not only on the head).
    install = next(i for i, cmd in enumerate(setup) if cmd.startswith("pip install"))
    assert install < setup.index(fetch[0]) and re.search(r"\bboto3\b", setup[install])
    assert not any("auth_token" in str(k) for k in config["file_mounts"])  # nothing copied in
    # Both roles may read exactly that parameter.
    parameter = fetch[0].rsplit(" ", 1)[1]
    for role in ("head", "worker"):
        reads = [s for s in policy(role)["Statement"] if "ssm:GetParameter" in actions(s)]
        assert [r for s in reads for r in resources(s)] == [
            f"arn:aws:ssm:REGION:ACCOUNT-ID:parameter{parameter}"
        ], role


def test_onprem_token_comes_from_a_node_file_outside_the_repository():
    config = load(ONPREM)
    mounts = [o for o in config["docker"]["run_options"] if "auth_token" in o]
    assert len(mounts) == 1
    host, container, mode = mounts[0].removeprefix("-v ").split(":")
    assert mode == "ro" and host.startswith("/")
    # Not the synced checkout on the node (Ray keeps file_mounts under this folder).
    from ray.autoscaler.sdk import get_docker_host_mount_location

    assert not host.startswith(get_docker_host_mount_location(config["cluster_name"]))
    assert not any("auth_token" in f"{k}{v}" for k, v in config["file_mounts"].items())
    install = [cmd for cmd in config["setup_commands"] if container in cmd]
    assert len(install) == 1
    assert "umask 077" in install[0] and "> ~/.ray/auth_token" in install[0]


def _load_fetcher():
    spec = importlib.util.spec_from_file_location("ray_auth_token", TOKEN_FETCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_aws(monkeypatch):
    moto = pytest.importorskip("moto")
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    with moto.mock_aws():
        yield


def test_token_fetcher_writes_a_private_file_and_never_prints_the_token(
    fake_aws, tmp_path, monkeypatch, capsys
):
    import boto3

    fetcher = _load_fetcher()
    token = "f" * 64
    ssm = boto3.client("ssm", region_name="us-west-2")
    ssm.put_parameter(Name="/cxrkd/ray-auth-token", Value=token, Type="SecureString")
    # No region configured: the node's own, from the instance metadata service.
    imds = "botocore.utils.InstanceMetadataRegionFetcher.retrieve_region"
    monkeypatch.setattr(imds, lambda self: "us-west-2")
    out = tmp_path / "home" / ".ray" / "auth_token"
    assert fetcher.main(["--out", str(out)]) == 0
    assert out.read_text() == token
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not list(out.parent.glob(".auth_token.*"))  # no temporary left behind
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err

    # A missing parameter (or a role without ssm:GetParameter) stops the setup: no file, and
    # the error names the parameter.
    missing = tmp_path / "other"
    with pytest.raises(SystemExit, match="/cxrkd/nope"):
        fetcher.main(["--parameter", "/cxrkd/nope", "--out", str(missing), "--region", "us-west-2"])
    assert not missing.exists()


# --- IMDSv2 -------------------------------------------------------------------------------


def test_aws_nodes_require_imdsv2():
    prepared = ray_check(load(AWS))  # as Ray hands it to RunInstances
    for name, node_type in prepared["available_node_types"].items():
        options = node_type["node_config"].get("MetadataOptions")
        assert options, name
        assert options["HttpTokens"] == "required", name
        assert options["HttpPutResponseHopLimit"] == 2, name  # the container's extra hop
        assert options.get("HttpEndpoint", "enabled") == "enabled", name
    botocore_session = pytest.importorskip("botocore.session")
    shape = botocore_session.get_session().get_service_model("ec2")
    members = shape.operation_model("RunInstances").input_shape.members
    allowed = set(members["MetadataOptions"].members)
    for node_type in prepared["available_node_types"].values():
        assert set(node_type["node_config"]["MetadataOptions"]) <= allowed


# --- IAM: the head by the cluster's tag, the workers by prefix, driver state protected ----


def policy(role: str) -> dict:
    return json.loads((IAM / f"{role}-policy.json").read_text())


def actions(statement: dict) -> list[str]:
    value = statement["Action"]
    return [value] if isinstance(value, str) else value


def resources(statement: dict) -> list[str]:
    value = statement["Resource"]
    return [value] if isinstance(value, str) else value


def iam_match(pattern: str, arn: str) -> bool:
    """IAM's wildcards: ``*`` any run of characters (``/`` included), ``?`` one."""
    return fnmatch.fnmatchcase(arn, pattern)


def allowed(role: str, action: str, arn: str) -> bool:
    """Allowed by the role's policy, ignoring conditions (the explicit-deny rule included)."""
    matches = [
        s
        for s in policy(role)["Statement"]
        if any(fnmatch.fnmatchcase(action, a) for a in actions(s))
        and any(iam_match(r, arn) for r in resources(s))
    ]
    return any(s["Effect"] == "Allow" for s in matches) and not any(
        s["Effect"] == "Deny" for s in matches
    )


def test_head_manages_only_instances_tagged_with_this_cluster():
    cluster = load(AWS)["cluster_name"]
    from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME  # the tag Ray puts on its nodes

    statements = policy("head")["Statement"]
    for s in statements:
        assert s["Effect"] == "Allow"
        assert not {"*", "ec2:*", "iam:*", "s3:*"} & set(actions(s)), s["Sid"]
    by_action: dict[str, list[dict]] = {}
    for s in statements:
        for a in actions(s):
            by_action.setdefault(a, []).append(s)
    tag = {f"ec2:ResourceTag/{TAG_RAY_CLUSTER_NAME}": cluster}
    (terminate,) = by_action["ec2:TerminateInstances"]
    assert terminate["Condition"]["StringEquals"] == tag
    assert "ec2:StopInstances" not in by_action  # cache_stopped_nodes: false
    launch = {r: s for s in by_action["ec2:RunInstances"] for r in resources(s)}
    instance = launch["arn:aws:ec2:REGION:ACCOUNT-ID:instance/*"]
    assert instance["Condition"]["StringEquals"] == {
        f"aws:RequestTag/{TAG_RAY_CLUSTER_NAME}": cluster
    }
    for s in by_action["ec2:CreateTags"]:
        condition = s["Condition"]
        assert condition["StringEquals"] in ({"ec2:CreateAction": "RunInstances"}, tag), s["Sid"]
        if condition["StringEquals"] == tag:  # never move a node to another cluster
            assert condition["ForAllValues:StringNotEquals"]["aws:TagKeys"] == [
                TAG_RAY_CLUSTER_NAME
            ]
    assert load(AWS)["provider"]["cache_stopped_nodes"] is False
    # The head passes only the workers' role, only to EC2.
    (pass_role,) = by_action["iam:PassRole"]
    workers = {
        t["node_config"]["IamInstanceProfile"]["Name"]
        for name, t in load(AWS)["available_node_types"].items()
        if name != load(AWS)["head_node_type"]
    }
    assert resources(pass_role) == [f"arn:aws:iam::ACCOUNT-ID:role/{w}" for w in workers]
    assert pass_role["Condition"]["StringEquals"] == {"iam:PassedToService": "ec2.amazonaws.com"}
    assert "cluster/iam/head-policy.json" in AWS.read_text()


RUN = "arn:aws:s3:::YOUR-BUCKET/runs/pneumonia-paper"


def _driver_written() -> list[str]:
    """What only the driver writes, named by the code that writes it."""
    from ray.air.constants import EXPR_PARAM_PICKLE_FILE
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl.tuner_internal import _TUNER_PKL
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.search.searcher import Searcher

    from cxrkd.search.lease import _lease_uri as lease_record_uri
    from cxrkd.search.records import records_uri
    from cxrkd.search.signing import signatures_uri
    from cxrkd.trainables.teachers import TeacherRegistry

    stage = f"{RUN}/teacher"
    session = "2026-11-30_16-00-00"
    teacher = TeacherRegistry("s3://YOUR-BUCKET/runs").uri("0123abcd")
    return [
        f"{RUN}/run.json",
        f"{RUN}/state.json",
        "arn:aws:s3:::" + records_uri("YOUR-BUCKET/runs/pneumonia-paper", "trials", "teacher", "a"),
        "arn:aws:s3:::" + records_uri("YOUR-BUCKET/runs/pneumonia-paper", "epochs", "kd", "b"),
        f"{RUN}/tables/summary.md",
        f"{stage}/{_TUNER_PKL}",
        f"{stage}/{_TUNER_PKL}.prev",  # search.signing.BACKUP
        f"{stage}/{TuneController.CKPT_FILE_TMPL.format(session)}",
        f"{stage}/{Searcher.CKPT_FILE_TMPL.format(session)}",
        f"{stage}/{SearchGenerator.CKPT_FILE_TMPL.format(session)}",
        f"{stage}/{BasicVariantGenerator.CKPT_FILE_TMPL.format(session)}",
        f"{stage}/{CallbackList.CKPT_FILE_TMPL.format(session)}",
        f"{stage}/tune_trainable_a1b2_00000/{EXPR_PARAM_PICKLE_FILE}",
        f"{stage}/tune_trainable_a1b2_00000/error.pkl",  # Tune's, written by the driver
        "arn:aws:s3:::" + signatures_uri("YOUR-BUCKET/runs/pneumonia-paper", "teacher") + "/ab12",
        "arn:aws:s3:::" + lease_record_uri("YOUR-BUCKET/runs/pneumonia-paper", 1),
        teacher.replace("s3://", "arn:aws:s3:::") + "/record.json",
        teacher.replace("s3://", "arn:aws:s3:::") + "/model/model.pt",
    ]


def _worker_written() -> list[str]:
    """What trials write from the workers: their checkpoints and the teachers' outputs."""
    from cxrkd.trainables.teacher_outputs import outputs_uri
    from cxrkd.trainables.teachers import TeacherRegistry

    trial = f"{RUN}/teacher/tune_trainable_a1b2_00000/checkpoint_000003"
    teacher = TeacherRegistry("s3://YOUR-BUCKET/runs").uri("0123abcd")
    return [
        f"{trial}/model.pt",
        f"{trial}/state.pt",
        f"{trial}/config.json",
        outputs_uri(teacher, "train-224px").replace("s3://", "arn:aws:s3:::"),
    ]


def test_workers_write_only_under_the_runs_prefix_and_never_driver_state():
    for s in policy("worker")["Statement"]:
        assert not {"*", "s3:*", "ec2:*", "iam:*"} & set(actions(s)), s["Sid"]
        if s["Effect"] == "Allow" and any(a.startswith("s3:") for a in actions(s)):
            for r in resources(s):  # the bucket itself (listing) or objects under runs/
                assert r in ("arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/runs/*"), r
    assert not any(
        a.startswith(("ec2:", "iam:")) for s in policy("worker")["Statement"] for a in actions(s)
    )
    for arn in _driver_written():
        assert allowed("worker", "s3:GetObject", arn), arn  # workers may read it
        assert not allowed("worker", "s3:PutObject", arn), arn
        assert not allowed("worker", "s3:DeleteObject", arn), arn
        assert allowed("head", "s3:PutObject", arn), arn  # the driver runs on the head
    for arn in _worker_written():
        assert allowed("worker", "s3:PutObject", arn), arn
    assert not allowed("worker", "s3:PutObject", "arn:aws:s3:::YOUR-BUCKET/other/x")
    assert not allowed("worker", "s3:GetObject", "arn:aws:s3:::YOUR-BUCKET/other/x")
    assert "cluster/iam/worker-policy.json" in AWS.read_text()


# --- The image pinned by digest (or the marked step that pins it) ------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_image_is_pinned_by_digest_or_the_edit_step_says_how(path: Path):
    image = load(path)["docker"]["image"]
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return
    text = path.read_text()
    tag = image.split("@")[0]
    assert "EDIT (image digest)" in text
    assert f"docker buildx imagetools inspect {tag}" in text
    assert f"image: {tag}@sha256:" in text  # the line to write, shown in the comment


# --- Node installs pinned to the tested environment --------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_nodes_install_with_the_constraints_file(path: Path):
    config = load(path)
    installs = [cmd for cmd in config["setup_commands"] if "pip install" in cmd]
    assert installs
    for cmd in installs:
        assert f"-c {PROJECT_DIR}/cluster/constraints.txt " in cmd, cmd
    # The repository (the constraints file with it) reaches every node through file_mounts,
    # and the constraints file is not filtered out of the sync.
    assert config["file_mounts"][PROJECT_DIR] == "."
    assert not any(fnmatch.fnmatch("cluster/constraints.txt", p) for p in config["rsync_exclude"])


def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{line!r}: not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_constraints_pin_the_tested_versions():
    pins = _constraints()
    header = CONSTRAINTS.read_text().splitlines()[0]
    made_for = re.search(r"Python (\d+\.\d+)", header)
    if made_for and made_for.group(1) != "{}.{}".format(*sys.version_info[:2]):
        pytest.skip(f"constraints are for Python {made_for.group(1)}: scripts/setup.sh "
                    "installed this Python's environment unpinned")  # fmt: skip
    for name in ("torch", "timm", "ray", "optuna"):
        assert pins[name] == importlib.metadata.version(name), name
    # boto3 (a dev extra here; every AWS node installs it) is pinned when it was tested.
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        assert pins["boto3"] == importlib.metadata.version("boto3")
    assert "cxrkd" not in pins  # the project comes from the synced checkout (-e)
    # Built in the image's Python: the pinned wheels exist for it.
    header = CONSTRAINTS.read_text().splitlines()[0]
    python = re.search(r"Python (\d+)\.(\d+)", header)
    for path in FILES:
        tag = re.search(r"-py(\d)(\d+)-", load(path)["docker"]["image"])
        assert python and python.groups() == tag.groups(), (header, path.name)
