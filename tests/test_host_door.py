"""The host has one door (openmaker/training/host/training_host.py), keeps no state between
calls in its modules, and its spec is plain data that may cross to another machine."""

from __future__ import annotations

import ast
import functools
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StringShape, StructureShape

from openmaker.runtime.network import JobNetwork
from openmaker.settings import S3Endpoint, Settings
from openmaker.shapes.model import operation_model
from openmaker.shapes.training import check_create_training_job
from openmaker.training.host.plan import CheckpointPlan, DataType, InputMode
from openmaker.training.host.spec import HostResources, HostSettings, HostSpec
from openmaker.training.plan import plan_job
from openmaker.training.worker import host_specs
from tests.test_layers import PACKAGE, imports

# What the jobs layer and the training resource may import of the host package, and why.
JOBS_MAY_IMPORT = {
    "openmaker.training.host.training_host": "the door: TrainingHost, its results and failures",
    "openmaker.training.host.spec": "the plain data a host is started with",
    "openmaker.training.host.events": "what hosts report, which the recorder turns into rows",
    "openmaker.training.host.site": "what a job's hosts share on this machine (its bridge) and the "
    "sweep of what a lost job left there",
    "openmaker.training.host.ray_actor": "the same door driven in a Ray actor on another node "
    "(OPENMAKER_EXECUTOR=ray, training/ray_hosts.py)",
    "openmaker.training.host.plan": "what a host runs, typed: the training plan builds it "
    "(training/plan.py)",
    "openmaker.training.host.images": "the training plan (training/plan.py) resolves the image "
    "a host would run, so that CreateTrainingJob refuses one no host could",
}
# Who may import each of those beyond the worker: the module that needs it, nobody else.
ONLY_FROM = {
    "openmaker.training.host.plan": {"plan.py"},
    "openmaker.training.host.images": {"plan.py"},
    "openmaker.training.host.ray_actor": {"ray_hosts.py"},
}
# The worker itself: the door, the spec, the events, the site.
WORKER_MAY_IMPORT = {
    "openmaker.training.host.training_host",
    "openmaker.training.host.spec",
    "openmaker.training.host.events",
    "openmaker.training.host.site",
}


def _host_imports(path: Path) -> set[str]:
    """The host modules `path` imports (a name imported from a module counts as the module)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    found = set()
    for name in imports(module, path.read_text()):
        if name == "openmaker.training.host" or not name.startswith("openmaker.training.host."):
            continue
        parts = name.split(".")
        # `openmaker.training.host.spec.HostSpec` is the module `openmaker.training.host.spec`.
        found.add(".".join(parts[:4]))
    return found


def test_the_jobs_layer_imports_only_the_hosts_door() -> None:
    wrong = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in [*(PACKAGE / "jobs").glob("*.py"), *(PACKAGE / "training").glob("*.py")]
        for name in _host_imports(path)
        if name not in JOBS_MAY_IMPORT
    }
    assert not wrong, sorted(wrong)
    elsewhere = {
        f"training/{path.name} imports {name}"
        for path in (PACKAGE / "training").glob("*.py")
        for name in _host_imports(path)
        if name in ONLY_FROM and path.name not in ONLY_FROM[name]
    }
    assert not elsewhere, sorted(elsewhere)
    worker = _host_imports(PACKAGE / "training" / "worker.py")
    assert worker <= WORKER_MAY_IMPORT, sorted(worker - WORKER_MAY_IMPORT)
    assert "openmaker.training.host.training_host" in worker


# Calls that make a mutable container, and the methods that change one.
_MAKERS = {"dict", "list", "set", "defaultdict", "OrderedDict", "Counter", "deque"}
_MUTATORS = {
    "append", "extend", "insert", "remove", "pop", "popitem", "clear", "update", "add",
    "discard", "setdefault", "appendleft", "popleft",
}  # fmt: skip


def _mutable(value: ast.expr | None) -> bool:
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp):
        return True
    if isinstance(value, ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name in _MAKERS
    return False


def module_state(source: str) -> list[str]:
    """The module-level containers `source` changes after import (or rebinds with `global`):
    state kept between calls, which a host object must own instead."""
    tree = ast.parse(source)
    containers: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign) and _mutable(node.value):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and _mutable(node.value):
            targets = [node.target]
        containers |= {t.id for t in targets if isinstance(t, ast.Name)}
    found: set[str] = set()
    for child in ast.walk(tree):
        if isinstance(child, ast.Global):
            found.update(f"global {name}" for name in child.names)
        elif isinstance(child, ast.Subscript) and isinstance(child.ctx, ast.Store | ast.Del):
            if isinstance(child.value, ast.Name) and child.value.id in containers:
                found.add(child.value.id)
        elif isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
            owner, method = child.func.value, child.func.attr
            if isinstance(owner, ast.Name) and owner.id in containers and method in _MUTATORS:
                found.add(owner.id)
    return sorted(found)


def test_host_modules_keep_no_state_of_their_own() -> None:
    kept = {
        str(path.relative_to(PACKAGE)): state
        for path in sorted((PACKAGE / "training" / "host").rglob("*.py"))
        if (state := module_state(path.read_text()))
    }
    assert kept == {}


def test_the_state_scan_sees_what_a_host_used_to_keep() -> None:
    """The shapes of state removed from training/host/channels/inputs.py, training/host/volume.py
    and training/host/jobtree.py, and a constant table that is only read."""
    source = (
        "_active: dict[str, int] = {}\n"
        "_trees = dict()\n"
        "_seen = set()\n"
        "_count = 0\n"
        "TABLE = {'a': 1}\n"
        "def keep(k: str) -> None:\n"
        "    _active[k] = 1\n"
        "    _trees.pop(k, None)\n"
        "    _seen.add(k)\n"
        "def count() -> None:\n"
        "    global _count\n"
        "    _count += 1\n"
        "def read() -> int:\n"
        "    return TABLE['a']\n"
    )
    assert module_state(source) == ["_active", "_seen", "_trees", "global _count"]


def _request(**extra: Any) -> dict[str, Any]:
    """A request with every kind of member a plan types."""
    source = {"S3DataType": "S3Prefix", "S3Uri": "s3://b/train/"}
    return {
        "TrainingJobName": "j",
        "RoleArn": "arn:aws:iam::000000000000:role/r",
        "AlgorithmSpecification": {
            "TrainingImage": "/images/train",
            "TrainingInputMode": "File",
            "ContainerArguments": ["--epochs", "2"],
            "MetricDefinitions": [{"Name": "loss", "Regex": "loss=(\\S+)"}],
        },
        "HyperParameters": {"a": "1"},
        "Environment": {"A": "b"},
        "InputDataConfig": [
            {"ChannelName": "train", "DataSource": {"S3DataSource": source}},
            {
                "ChannelName": "pipe",
                "InputMode": "Pipe",
                "CompressionType": "Gzip",
                "RecordWrapperType": "RecordIO",
                "ContentType": "application/x-recordio",
                "ShuffleConfig": {"Seed": 7},
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "AugmentedManifestFile",
                        "S3Uri": "s3://b/lines.manifest",
                        "S3DataDistributionType": "ShardedByS3Key",
                        "AttributeNames": ["source-ref", "label"],
                    }
                },
            },
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://b/out/"},
        "CheckpointConfig": {"S3Uri": "s3://b/ckpt", "LocalPath": "/ckpt"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        **extra,
    }


def _spec() -> HostSpec:
    endpoint = S3Endpoint("http://127.0.0.1:9000", "AKID", "secret", None, "us-east-1")
    settings = Settings(home=Path("/var/openmaker"), s3_endpoint=endpoint)
    network = JobNetwork(
        {"algo-1": "10.213.0.2", "algo-2": "10.213.0.3"},
        "omb1234",
        "10.213.0.1",
        [(9000, "127.0.0.1:9000")],
    )
    return HostSpec(
        job_name="j", job_arn="arn:aws:sagemaker:us-east-1:000000000000:training-job/j",
        plan=plan_job(_request()).host_plan("algo-2"),
        host_name="algo-2", hosts=["algo-1", "algo-2"], region="us-east-1",
        settings=HostSettings.of(settings), work_dir=Path("/var/openmaker/jobs/j/algo-2"),
        hidden_paths=[Path("/var/openmaker")], code_env={"AWS_ENDPOINT_URL_S3": "http://x"},
        resources=HostResources((0, 1), 2 * 1024**3, ("0",)), network=network,
    )  # fmt: skip


def _round_trips(spec: HostSpec) -> None:
    assert pickle.loads(pickle.dumps(spec)) == spec
    text = json.dumps(spec.to_json())
    assert HostSpec.from_json(json.loads(text)) == spec
    assert "openmaker.db" not in text and "sqlite" not in text
    assert b"openmaker.db" not in pickle.dumps(spec)


def test_a_host_spec_is_plain_data_without_the_database() -> None:
    spec = _spec()
    assert not hasattr(spec.settings, "database_url")
    _round_trips(spec)


def test_the_workers_host_specs_round_trip(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    # No bridge, no key: nothing made on the machine.
    request = _request(EnableNetworkIsolation=True)
    check_create_training_job(request)
    specs = host_specs(settings, "arn", request)
    assert [spec.host_name for spec in specs] == ["algo-1", "algo-2"]
    for spec in specs:
        assert str(settings.database_url) not in json.dumps(spec.to_json())
        _round_trips(spec)


@functools.cache
def request_member_names() -> frozenset[str]:
    """Every member name of the CreateTrainingJob request, at any depth (botocore's model)."""
    names: set[str] = set()
    seen: set[str] = set()

    def walk(shape: Shape) -> None:
        if shape.name in seen:
            return
        seen.add(shape.name)
        if isinstance(shape, StructureShape):
            for name, member in shape.members.items():
                names.add(name)
                walk(member)
        elif isinstance(shape, ListShape):
            walk(shape.member)
        elif isinstance(shape, MapShape):
            walk(shape.key)
            walk(shape.value)

    input_shape = operation_model("CreateTrainingJob").input_shape
    assert input_shape is not None
    walk(input_shape)
    return frozenset(names)


def member_lookups(source: str) -> Iterator[tuple[int, str]]:
    """(line, name) of each `x["Name"]` and `x.get("Name")` in `source` whose name is a member
    of the CreateTrainingJob request: the request read directly."""
    members = request_member_names()
    for node in ast.walk(ast.parse(source)):
        key: ast.expr | None = None
        if not isinstance(node, ast.expr):
            continue
        if isinstance(node, ast.Subscript):
            key = node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
        ):
            key = node.args[0]
        if isinstance(key, ast.Constant) and key.value in members:
            yield node.lineno, key.value


def test_no_host_module_reads_a_member_of_the_request() -> None:
    """The plan (openmaker/training/plan.py) reads the request; a host reads only its plan."""
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {name}"
        for path in sorted((PACKAGE / "training" / "host").rglob("*.py"))
        for line, name in member_lookups(path.read_text())
    ]
    assert found == []


def test_the_member_scan_sees_subscripts_and_gets() -> None:
    assert {"S3Uri", "ChannelName", "EnableNetworkIsolation", "Seed"} <= request_member_names()
    source = (
        "uri = spec.request['CheckpointConfig']['S3Uri']\n"
        "isolated = request.get('EnableNetworkIsolation')\n"
        "path = env['PATH']\n"
        "home = settings.get('home')\n"
    )
    assert sorted(member_lookups(source)) == [
        (1, "CheckpointConfig"),
        (1, "S3Uri"),
        (2, "EnableNetworkIsolation"),
    ]


def test_the_plan_types_every_value_the_model_allows() -> None:
    """A value botocore's model adds (a new S3DataType, say) must be typed before a request
    carrying it reaches a host."""
    model = operation_model("CreateTrainingJob").service_model
    for enum, name in ((InputMode, "TrainingInputMode"), (DataType, "S3DataType")):
        shape = model.shape_for(name)
        assert isinstance(shape, StringShape)
        assert {member.value for member in enum} == set(shape.enum)


def test_the_plan_types_the_request() -> None:
    job = plan_job(_request())
    plan = job.plan
    assert job.hosts == ("algo-1", "algo-2")
    train, pipe = plan.channels
    assert (train.mode, train.data_type, train.sharded) == (
        InputMode.FILE, DataType.PREFIX, False
    )  # fmt: skip
    assert (pipe.mode, pipe.data_type, pipe.attribute_names) == (
        InputMode.PIPE, DataType.AUGMENTED_MANIFEST, ("source-ref", "label")
    )  # fmt: skip
    assert (pipe.sharded, pipe.gzip, pipe.recordio, pipe.shuffle_seed) == (True, True, True, 7)
    assert plan.checkpoint == CheckpointPlan("s3://b/ckpt", "/ckpt")
    assert plan.output.model_uri == "s3://b/out/j/output/model.tar.gz"
    assert plan.command.arguments == ("--epochs", "2")
    assert [(d.name, d.regex) for d in plan.command.metric_definitions] == [("loss", r"loss=(\S+)")]
    assert (plan.limits.volume_size_gb, plan.limits.max_runtime_seconds) == (5, 600)


def test_the_config_files_are_those_sagemaker_writes() -> None:
    """/opt/ml/input/config as the container contract has it, each host its own resources."""
    files = plan_job(_request()).host_plan("algo-2").config_files
    assert json.loads(files["hyperparameters.json"]) == {"a": "1"}
    assert json.loads(files["inputdataconfig.json"]) == {
        "train": {
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        },
        "pipe": {
            "ContentType": "application/x-recordio",
            "TrainingInputMode": "Pipe",
            "S3DistributionType": "ShardedByS3Key",
            "RecordWrapperType": "RecordIO",
            "CompressionType": "Gzip",
        },
    }
    assert json.loads(files["checkpointconfig.json"]) == {"LocalPath": "/ckpt"}
    resources = json.loads(files["resourceconfig.json"])
    assert resources["current_host"] == "algo-2"
    assert resources["hosts"] == ["algo-1", "algo-2"]
    assert all(text.endswith("}\n") and "\n  " in text for text in files.values())
