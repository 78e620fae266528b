"""Training jobs end to end: real worker processes, real sandboxes, a real S3 server."""

from __future__ import annotations

import io
import ipaddress
import itertools
import json
import os
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path

import pytest

from openmaker.settings import DEFAULT_NETWORK_RANGE
from openmaker.shapes.errors import ResourceInUse, ResourceNotFound, ValidationException
from openmaker.shapes.validate import validate_output
from openmaker.training.service import TrainingJobs
from tests.helpers import (
    get_object,
    log_text,
    make_image,
    put_objects,
    request,
    run_script,
    source_of,
    stop_and_wait,
    wait_for,
    wait_for_log,
)
from tests.process_helpers import (
    hold,
    wait_for_code,
    wait_for_no_processes,
    wait_gone,
    worker_pid,
)
from tests.s3server import S3Server

# A bring-your-own-container program that, like many real ones, hard-codes /opt/ml.
PROBE = f"""#!{sys.executable}
import json, os, pathlib, socket, subprocess
ml = pathlib.Path("/opt/ml")
config = ml / "input" / "config"
seen = {{
    "hyperparameters": json.loads((config / "hyperparameters.json").read_text()),
    "inputdataconfig": json.loads((config / "inputdataconfig.json").read_text()),
    "resourceconfig": json.loads((config / "resourceconfig.json").read_text()),
    "files": sorted(
        str(p.relative_to(ml / "input/data")) for p in (ml / "input/data").rglob("*") if p.is_file()
    ),
    "train_x": (ml / "input/data/train/x.csv").read_text(),
    "hostname": socket.gethostname(),
    "algo_1": socket.gethostbyname("algo-1"),
    "env": {{k: os.environ.get(k) for k in
            ["TRAINING_JOB_NAME", "TRAINING_JOB_ARN", "AWS_REGION", "MY_SETTING",
             "AWS_ENDPOINT_URL_S3", "SAGEMAKER_BASE_DIR"]}},
    "home_visible": os.path.isdir(home := os.environ["PROBE_HOME"]) and os.listdir(home),
    "tmp": sorted(os.listdir("/tmp")),
    "pid": os.getpid(),
    "cwd": os.getcwd(),
}}
pathlib.Path("/usr/local/openmaker-probe").write_text("written inside")
(ml / "model" / "seen.json").write_text(json.dumps(seen))
(ml / "model" / "sub").mkdir()
(ml / "model" / "sub" / "weights.bin").write_bytes(b"\\x00\\x01")
(ml / "output" / "data" / "extra.txt").write_text("more")
print("probe finished")
"""


def _model_members(uri: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(get_object(uri)), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _run_probe(tmp_path: Path, home: Path, bucket_uri: str) -> tuple[TrainingJobs, dict, dict]:
    put_objects(
        {
            f"{bucket_uri}/data/train/x.csv": b"1,2,3\n",
            f"{bucket_uri}/data/train/sub/y.csv": b"4,5,6\n",
            f"{bucket_uri}/data/train-extra.csv": b"7\n",
            f"{bucket_uri}/data/validation/v.csv": b"8\n",
        }
    )
    image = make_image(tmp_path / "image", PROBE)
    jobs = TrainingJobs()
    body = request(
        "probe-job",
        str(image),
        f"{bucket_uri}/output",
        {"train": f"{bucket_uri}/data/train", "validation": f"{bucket_uri}/data/validation/"},
        HyperParameters={"epochs": "3", "lr": "0.1"},
        Environment={"MY_SETTING": "on", "PROBE_HOME": str(home)},
    )
    body["InputDataConfig"][0]["ContentType"] = "text/csv"
    jobs.create(body)
    description = wait_for(jobs, "probe-job")
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
    return jobs, description, members


def test_bring_your_own_container_on_s3(tmp_path: Path, home: Path, s3_env: S3Server) -> None:
    s3_env.make_bucket("byoc")
    jobs, description, members = _run_probe(tmp_path, home, "s3://byoc")
    seen = json.loads(members["seen.json"])

    assert seen["hyperparameters"] == {"epochs": "3", "lr": "0.1"}
    assert seen["inputdataconfig"] == {
        "train": {
            "ContentType": "text/csv",
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        },
        "validation": {
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        },
    }
    assert seen["resourceconfig"] == {
        "current_host": "algo-1",
        "current_instance_type": "ml.m5.large",
        "current_group_name": "homogeneousCluster",
        "hosts": ["algo-1"],
        "instance_groups": [
            {
                "instance_group_name": "homogeneousCluster",
                "instance_type": "ml.m5.large",
                "hosts": ["algo-1"],
            }
        ],
        "network_interface_name": "eth0",
    }
    # Key mapping: the prefix `data/train` keeps `train-extra.csv`, drops its own folder name.
    assert seen["files"] == [
        "train/sub/y.csv", "train/train-extra.csv", "train/x.csv", "validation/v.csv",
    ]  # fmt: skip
    assert seen["train_x"] == "1,2,3\n"
    assert seen["env"]["TRAINING_JOB_NAME"] == "probe-job"
    assert seen["env"]["TRAINING_JOB_ARN"] == description["TrainingJobArn"]
    assert seen["env"]["AWS_REGION"] == "us-east-1"
    assert seen["env"]["MY_SETTING"] == "on"
    assert seen["env"]["AWS_ENDPOINT_URL_S3"] == s3_env.url
    # The sandbox: own hostname and names, PID 1, private /tmp, openmaker's state hidden.
    assert seen["hostname"] == "algo-1"
    # Its own address on its job's bridge: the first after the bridge's (runtime/network.py).
    algo_1 = ipaddress.IPv4Address(seen["algo_1"])
    assert algo_1 in ipaddress.IPv4Network(DEFAULT_NETWORK_RANGE) and int(algo_1) % 256 == 2
    assert seen["pid"] == 1
    assert seen["env"]["SAGEMAKER_BASE_DIR"] is None
    assert not seen["home_visible"]
    # The private /tmp shows nothing of the host's, except the way to a Python under /tmp.
    python_under_tmp = Path(sys.prefix).is_relative_to("/tmp")
    assert seen["tmp"] == ([Path(sys.prefix).parts[2]] if python_under_tmp else [])
    # Writes to the root filesystem stayed inside the sandbox.
    assert not Path("/usr/local/openmaker-probe").exists()

    assert members["sub/weights.bin"] == b"\x00\x01"
    output = get_object("s3://byoc/output/probe-job/output/output.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(output), mode="r:gz") as tar:
        assert tar.extractfile("extra.txt").read() == b"more"  # type: ignore[union-attr]
    assert "probe finished" in log_text(jobs, "probe-job")


def test_embedded_default_without_s3_server(tmp_path: Path, home: Path) -> None:
    _, description, members = _run_probe(tmp_path, home, "s3://local-bucket")
    model = description["ModelArtifacts"]["S3ModelArtifacts"]
    assert model == "s3://local-bucket/output/probe-job/output/model.tar.gz"
    assert (home / "s3/local-bucket/output/probe-job/output/model.tar.gz").is_file()
    assert json.loads(members["seen.json"])["env"]["AWS_ENDPOINT_URL_S3"] is None


def test_status_transitions_and_times(tmp_path: Path, home: Path) -> None:
    jobs, description = run_script(
        tmp_path, "steps", "#!/bin/sh\necho hello\necho world >&2\n", "s3://b/out"
    )
    assert validate_output("DescribeTrainingJob", description) == []
    assert validate_output("ListTrainingJobs", {"TrainingJobSummaries": jobs.list()}) == []
    steps = [t["Status"] for t in description["SecondaryStatusTransitions"]]
    assert steps == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert description["SecondaryStatus"] == "Completed"
    transitions = description["SecondaryStatusTransitions"]
    for earlier, later in itertools.pairwise(transitions):
        assert earlier["EndTime"] == later["StartTime"]
    assert description["TrainingStartTime"] <= description["TrainingEndTime"]
    assert description["TrainingTimeInSeconds"] >= 1
    assert description["BillableTimeInSeconds"] == description["TrainingTimeInSeconds"]
    assert log_text(jobs, "steps").splitlines() == ["hello", "world"]
    [stream] = jobs.log_streams("steps")
    prefix, _, epoch = stream.rpartition("-")
    assert prefix == "steps/algo-1" and abs(int(epoch) - time.time()) < 600


def test_failure_file_becomes_failure_reason_and_outputs_still_upload(
    tmp_path: Path, home: Path
) -> None:
    script = (
        "#!/bin/sh\n"
        "echo partial > /opt/ml/model/partial.txt\n"
        "printf 'boom: the loss exploded' > /opt/ml/output/failure\n"
        "exit 3\n"
    )
    _, description = run_script(tmp_path, "fails", script)
    assert description["TrainingJobStatus"] == "Failed"
    assert description["SecondaryStatus"] == "Failed"
    assert description["FailureReason"] == "AlgorithmError: boom: the loss exploded"
    assert validate_output("DescribeTrainingJob", description) == []
    members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
    assert members == {"partial.txt": b"partial\n"}


def test_failure_without_failure_file_names_exit_status(tmp_path: Path, home: Path) -> None:
    _, description = run_script(tmp_path, "exit7", "#!/bin/sh\nexit 7\n")
    assert description["TrainingJobStatus"] == "Failed"
    assert "exited with status 7" in description["FailureReason"]


def test_failure_reason_is_cut_at_1024_characters(tmp_path: Path, home: Path) -> None:
    script = "#!/bin/sh\nhead -c 5000 /dev/zero | tr '\\0' 'x' > /opt/ml/output/failure\nexit 1\n"
    _, description = run_script(tmp_path, "long-failure", script)
    reason = description["FailureReason"]
    assert reason == "AlgorithmError: " + "x" * 1024


def test_manifest_entry_escaping_the_channel_fails_and_writes_nothing(
    tmp_path: Path, home: Path
) -> None:
    # Seven levels up from the channel folder is OPENMAKER_HOME itself.
    manifest = [{"prefix": "s3://data/files/"}, "good.csv", "../" * 7 + "escaped.txt"]
    put_objects(
        {
            "s3://data/manifest.json": json.dumps(manifest).encode(),
            "s3://data/files/good.csv": b"ok",
        }
    )

    def edit(body: dict) -> None:
        source_of(body)["S3DataType"] = "ManifestFile"

    jobs, description = run_script(
        tmp_path,
        "crafted",
        "#!/bin/sh\necho should not run\n",
        "s3://b/out",
        {"train": "s3://data/manifest.json"},
        edit=edit,
    )
    assert description["TrainingJobStatus"] == "Failed"
    assert "'train'" in description["FailureReason"]
    assert "escaped.txt" in description["FailureReason"]
    assert not any(p.name == "escaped.txt" for p in home.rglob("*"))
    assert "should not run" not in log_text(jobs, "crafted")


def test_manifest_file_downloads_the_listed_objects(tmp_path: Path, home: Path) -> None:
    manifest = [{"prefix": "s3://data/files/"}, "a.csv", "deep/b.csv"]
    put_objects(
        {
            "s3://data/m.json": json.dumps(manifest).encode(),
            "s3://data/files/a.csv": b"a",
            "s3://data/files/deep/b.csv": b"b",
            "s3://data/files/unlisted.csv": b"no",
        }
    )
    script = "#!/bin/sh\ncd /opt/ml/input/data/train && find . -type f | sort > /opt/ml/model/l\n"

    def edit(body: dict) -> None:
        source_of(body)["S3DataType"] = "ManifestFile"

    _, description = run_script(
        tmp_path, "manifest", script, "s3://b/out", {"train": "s3://data/m.json"}, edit=edit
    )
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
    assert members["l"] == b"./a.csv\n./deep/b.csv\n"


def test_local_folders_as_channel_and_output(tmp_path: Path, home: Path) -> None:
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "x.csv").write_text("x")
    (data / "train-old").mkdir()
    (data / "train-old" / "stale.csv").write_text("stale")
    out = tmp_path / "out"
    script = "#!/bin/sh\nls /opt/ml/input/data/train > /opt/ml/model/listing\n"
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    jobs.create(
        request("local", image.as_uri(), out.as_uri(), {"train": (data / "train").as_uri()})
    )
    description = wait_for(jobs, "local")
    assert description["TrainingJobStatus"] == "Completed", description
    archive = out / "local" / "output" / "model.tar.gz"
    with tarfile.open(archive) as tar:
        assert tar.extractfile("listing").read() == b"x.csv\n"  # type: ignore[union-attr]


def test_uncompressed_model_output(tmp_path: Path, home: Path) -> None:
    script = "#!/bin/sh\nmkdir /opt/ml/model/d && echo w > /opt/ml/model/d/w.txt\n"

    def edit(body: dict) -> None:
        body["OutputDataConfig"]["CompressionType"] = "NONE"

    _, description = run_script(tmp_path, "plain-model", script, edit=edit)
    assert (
        description["ModelArtifacts"]["S3ModelArtifacts"] == "s3://b/out/plain-model/output/model/"
    )
    assert get_object("s3://b/out/plain-model/output/model/d/w.txt") == b"w\n"


def test_stop_sends_sigterm_and_keeps_outputs(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The EXIT trap runs only when the shell ends by its own `exit`, never under SIGKILL.
    script = (
        "#!/bin/sh\n"
        "trap 'echo saved > /opt/ml/model/at-stop.txt; echo got SIGTERM; exit 0' TERM\n"
        "trap 'echo ended by its own exit' EXIT\n"
        "echo ready\n"
        "while true; do sleep 0.1; done\n"
    )
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    jobs.create(request("stoppable", str(image), "s3://b/out"))
    try:
        wait_for_log(jobs, "stoppable", "ready")
        jobs.stop("stoppable")
        assert validate_output("DescribeTrainingJob", jobs.describe("stoppable")) == []
        description = wait_for(jobs, "stoppable")
    finally:
        stop_and_wait(jobs, ["stoppable"])
    assert description["TrainingJobStatus"] == "Stopped"
    # Through Stopping, however quickly the code went.
    assert [t["Status"] for t in description["SecondaryStatusTransitions"]][-2:] == [
        "Stopping",
        "Stopped",
    ]
    assert description["SecondaryStatus"] == "Stopped"
    assert log_text(jobs, "stoppable").splitlines()[-2:] == ["got SIGTERM", "ended by its own exit"]
    members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
    assert members == {"at-stop.txt": b"saved\n"}
    with pytest.raises(ValidationException):
        jobs.stop("stoppable")


def test_max_runtime_kills_code_that_ignores_sigterm(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "1")
    # The code says it got SIGTERM and goes on: only SIGKILL ends it.
    script = (
        "#!/bin/sh\ntrap 'echo ignoring SIGTERM' TERM\necho start\nwhile true; do sleep 0.1; done\n"
    )
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    body = request("too-long", str(image), "s3://b/out")
    body["StoppingCondition"] = {"MaxRuntimeInSeconds": 1}
    jobs.create(body)
    try:
        code = hold(wait_for_code("too-long"))
        description = wait_for(jobs, "too-long", timeout=60)
    finally:
        stop_and_wait(jobs, ["too-long"])
    assert description["TrainingJobStatus"] == "Stopped"
    assert description["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert "ignoring SIGTERM" in log_text(jobs, "too-long")
    wait_gone(code, "the code that ignored SIGTERM")
    wait_for_no_processes("too-long")


def test_duplicate_name_is_resource_in_use(tmp_path: Path, home: Path) -> None:
    image = make_image(tmp_path / "image", "#!/bin/sh\n")
    jobs = TrainingJobs()
    jobs.create(request("twice", str(image), "s3://b/out"))
    with pytest.raises(ResourceInUse):
        jobs.create(request("twice", str(image), "s3://b/out"))
    wait_for(jobs, "twice")


def test_unknown_job_is_resource_not_found(home: Path) -> None:
    with pytest.raises(ResourceNotFound):
        TrainingJobs().describe("no-such-job")


@pytest.mark.parametrize(
    ("image", "member"),
    [
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/My-Algo:latest", "TrainingImage"),
        ("/no/such/folder", "TrainingImage"),
    ],
)
def test_images_that_cannot_run_are_refused(home: Path, image: str, member: str) -> None:
    with pytest.raises(ValidationException, match=member):
        TrainingJobs().create(request("bad-image", image, "s3://b/out"))
    assert TrainingJobs().list() == []


def test_container_entrypoint_and_arguments(tmp_path: Path, home: Path) -> None:
    image = make_image(tmp_path / "image", "#!/bin/sh\n")
    (image / "run.sh").write_text('#!/bin/sh\necho "args: $*" > /opt/ml/model/args\n')
    (image / "run.sh").chmod(0o755)
    jobs = TrainingJobs()
    body = request("entry", str(image), "s3://b/out")
    body["AlgorithmSpecification"]["ContainerEntrypoint"] = ["/opt/program/run.sh"]
    body["AlgorithmSpecification"]["ContainerArguments"] = ["--alpha", "1"]
    jobs.create(body)
    description = wait_for(jobs, "entry")
    members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
    assert members["args"] == b"args: --alpha 1\n"


def test_list_newest_first_and_filtered(tmp_path: Path, home: Path) -> None:
    image = make_image(tmp_path / "image", "#!/bin/sh\n")
    jobs = TrainingJobs()
    for name in ("list-a", "list-b"):
        jobs.create(request(name, str(image), "s3://b/out"))
        wait_for(jobs, name)
    assert [j["TrainingJobName"] for j in jobs.list()] == ["list-b", "list-a"]
    assert [j["TrainingJobName"] for j in jobs.list(name_contains="-a")] == ["list-a"]
    assert jobs.list(status="Failed") == []


def test_openmaker_state_is_hidden_from_the_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A home outside /tmp, as ~/.openmaker is: the private /tmp alone would not hide it.
    home = Path.home() / ".cache" / "openmaker-tests" / tmp_path.name
    monkeypatch.setenv("OPENMAKER_HOME", str(home))
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    try:
        script = f"#!/bin/sh\nls -A {home} > /opt/ml/model/home; ls -A /opt/ml > /opt/ml/model/ml\n"
        image = make_image(tmp_path / "image", script)
        jobs = TrainingJobs()
        jobs.create(request("hidden", str(image), "s3://b/out"))
        description = wait_for(jobs, "hidden")
        assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
        members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
        assert members["home"] == b""
        assert members["ml"].split() == [b"code", b"input", b"model", b"output"]
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("local_path", [None, "/opt/ml/checkpoints/run", "/checkpoints"])
def test_checkpoints_restored_at_start_and_written_back(
    tmp_path: Path, home: Path, local_path: str | None
) -> None:
    put_objects(
        {
            "s3://ckpt/job/step.txt": b"5",
            "s3://ckpt/job/old.txt": b"to be removed",
            "s3://ckpt/job-other/keep.txt": b"not ours",
        }
    )
    folder = local_path or "/opt/ml/checkpoints"
    script = (
        "#!/bin/sh\nset -e\n"
        f'grep -q \'"LocalPath": "{folder}"\' /opt/ml/input/config/checkpointconfig.json\n'
        f"cd {folder}\n"
        'echo "restored $(cat step.txt)"\n'
        "echo 6 > step.txt && rm old.txt && mkdir -p deep && echo n > deep/new.txt\n"
    )
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    body = request("ckpt", str(image), "s3://b/out")
    body["CheckpointConfig"] = {"S3Uri": "s3://ckpt/job"}
    if local_path:
        body["CheckpointConfig"]["LocalPath"] = local_path
    jobs.create(body)
    description = wait_for(jobs, "ckpt")
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    assert "restored 5" in log_text(jobs, "ckpt")
    assert get_object("s3://ckpt/job/step.txt") == b"6\n"
    assert get_object("s3://ckpt/job/deep/new.txt") == b"n\n"
    assert get_object("s3://ckpt/job-other/keep.txt") == b"not ours"
    with pytest.raises(FileNotFoundError):
        get_object("s3://ckpt/job/old.txt")
    assert not Path("/checkpoints").exists()


def test_without_a_sandbox_the_code_runs_as_a_plain_process(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_SANDBOX", "none")
    script = (
        "#!/bin/sh\n"
        'echo "base=$SAGEMAKER_BASE_DIR"\n'
        'cd "$SAGEMAKER_BASE_DIR" && cat input/config/resourceconfig.json > model/rc.json\n'
    )
    jobs, description = run_script(tmp_path, "plain", script)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    training = [t for t in description["SecondaryStatusTransitions"] if t["Status"] == "Training"]
    assert "without a sandbox" in training[0]["StatusMessage"]
    assert f"base={home}/jobs/plain/algo-1/ml" in log_text(jobs, "plain")
    members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
    assert json.loads(members["rc.json"])["current_host"] == "algo-1"


def test_links_the_code_leaves_never_carry_host_files_out(tmp_path: Path, home: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    script = (
        "#!/bin/sh\n"
        f"ln -s {secret} /opt/ml/model/leak\n"
        "ln -s / /opt/ml/model/root\n"
        f"ln -s {secret} /opt/ml/checkpoints/leak\n"
        "echo real > /opt/ml/model/real.txt\n"
    )

    def edit(body: dict) -> None:
        body["OutputDataConfig"]["CompressionType"] = "NONE"
        body["CheckpointConfig"] = {"S3Uri": "s3://b/ckpt"}

    _, description = run_script(tmp_path, "links", script, edit=edit)
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    uploaded = sorted(
        p.relative_to(home / "s3" / "b").as_posix()
        for p in (home / "s3" / "b").rglob("*")
        if p.is_file()
    )
    assert uploaded == ["out/links/output/model/real.txt", "out/links/output/output.tar.gz"]


def test_archived_links_stay_links(tmp_path: Path, home: Path) -> None:
    script = "#!/bin/sh\nln -s /etc/hostname /opt/ml/model/link\n"
    _, description = run_script(tmp_path, "tar-links", script)
    data = get_object(description["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.getmember("link")
        assert member.issym() and member.linkname == "/etc/hostname"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://no-such-bucket/data", "cannot read s3://no-such-bucket/data"),
        ("s3://chan-bucket/empty/prefix", "no objects found under s3://chan-bucket/empty/prefix"),
    ],
)
def test_unreadable_channels_fail_the_job_naming_the_channel(
    tmp_path: Path, home: Path, s3_env: S3Server, uri: str, message: str
) -> None:
    s3_env.make_bucket("chan-bucket")
    jobs, description = run_script(
        tmp_path,
        "unreadable",
        "#!/bin/sh\necho should not run\n",
        "s3://chan-bucket/out",
        {"training": uri},
    )
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"].startswith("ClientError: channel 'training'")
    assert message in description["FailureReason"]
    assert "should not run" not in log_text(jobs, "unreadable")


def test_several_hosts_on_one_machine_share_one_model_archive(tmp_path: Path, home: Path) -> None:
    put_objects({f"s3://shards/data/part-{i}": str(i).encode() for i in range(5)})
    script = (
        "#!/bin/sh\n"
        "host=$(hostname)\n"
        "ls /opt/ml/input/data/train > /opt/ml/model/$host.files\n"
        "getent hosts algo-1 algo-2 | sort > /opt/ml/model/$host.hosts\n"
    )
    image = make_image(tmp_path / "image", script)
    jobs = TrainingJobs()
    body = request("two-hosts", str(image), "s3://b/out", {"train": "s3://shards/data/"})
    body["ResourceConfig"]["InstanceCount"] = 2
    source_of(body)["S3DataDistributionType"] = "ShardedByS3Key"
    jobs.create(body)
    description = wait_for(jobs, "two-hosts")
    assert description["TrainingJobStatus"] == "Completed", description.get("FailureReason")
    # Per instance, as AWS counts it (the sagemaker SDK multiplies by the instance count).
    assert description["BillableTimeInSeconds"] == description["TrainingTimeInSeconds"]
    members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
    first, second = members["algo-1.files"].split(), members["algo-2.files"].split()
    assert first == [b"part-0", b"part-2", b"part-4"] and second == [b"part-1", b"part-3"]
    assert members["algo-1.hosts"] == members["algo-2.hosts"]
    first_address, first_name, second_address, second_name = members["algo-1.hosts"].split()
    assert (first_name, second_name) == (b"algo-1", b"algo-2")
    addresses = [ipaddress.IPv4Address(a.decode()) for a in (first_address, second_address)]
    assert [int(a) % 256 for a in addresses] == [2, 3]
    assert int(addresses[1]) - int(addresses[0]) == 1
    assert len(jobs.log_streams("two-hosts")) == 0  # the code printed nothing


def test_network_isolation_leaves_only_loopback(
    tmp_path: Path, home: Path, s3_env: S3Server
) -> None:
    port = s3_env.url.rsplit(":", 1)[1]
    script = (
        f"#!{sys.executable}\n"
        "import socket, pathlib\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        "    result = 'reached'\n"
        "except OSError as exc:\n"
        "    result = 'isolated'\n"
        "pathlib.Path('/opt/ml/model/result').write_text(result)\n"
    )
    image = make_image(tmp_path / "image", script)
    s3_env.make_bucket("isolation")
    jobs = TrainingJobs()
    for name, isolate in (("open-net", False), ("closed-net", True)):
        jobs.create(request(name, str(image), "s3://isolation/out", EnableNetworkIsolation=isolate))
        description = wait_for(jobs, name)
        members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
        assert members["result"] == (b"isolated" if isolate else b"reached")


def test_a_request_without_time_limit_gets_sagemakers_default(tmp_path: Path, home: Path) -> None:
    def edit(body: dict) -> None:
        del body["StoppingCondition"]

    _, description = run_script(tmp_path, "default-limit", "#!/bin/sh\n", edit=edit)
    assert description["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}


def test_a_worker_killed_from_outside_fails_the_job_and_leaves_no_process(
    tmp_path: Path, home: Path
) -> None:
    image = make_image(
        tmp_path / "image",
        f"#!{sys.executable}\nimport time\nprint('ready', flush=True)\ntime.sleep(600)\n",
    )
    jobs = TrainingJobs()
    jobs.create(request("orphan", str(image), "s3://b/out"))
    try:
        wait_for_log(jobs, "orphan", "ready")
        code = hold(wait_for_code("orphan"))
        pid = worker_pid(jobs, "orphan")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        description = wait_for(jobs, "orphan", timeout=30)
    finally:
        stop_and_wait(jobs, ["orphan"])
    assert description["TrainingJobStatus"] == "Failed"
    assert "ended without finishing it" in description["FailureReason"]
    # The sandbox dies with the worker: nothing of the job goes on running, its code least.
    wait_gone(code, "the job's code, after its worker")
    wait_for_no_processes("orphan")


def test_a_stop_right_after_create_is_never_lost(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMAKER_STOP_GRACE_SECONDS", "1")
    image = make_image(tmp_path / "image", "#!/bin/sh\nwhile true; do sleep 0.1; done\n")
    jobs = TrainingJobs()
    for name in ("stop-early-1", "stop-early-2", "stop-early-3"):
        jobs.create(request(name, str(image), "s3://b/out"))
        jobs.stop(name)  # while the worker is still starting
    for name in ("stop-early-1", "stop-early-2", "stop-early-3"):
        description = wait_for(jobs, name, timeout=60)
        assert description["TrainingJobStatus"] == "Stopped", description.get("FailureReason")


def test_root_in_the_sandbox_cannot_reach_past_it(tmp_path: Path, home: Path) -> None:
    script = (
        "#!/bin/sh\n"
        "cd /opt/ml/model\n"
        "mknod disk b 254 0 2>/dev/null && echo yes > mknod || echo no > mknod\n"
        "mount -t tmpfs none /mnt 2>/dev/null && echo yes > mount || echo no > mount\n"
        "touch /usr/local/probe && echo yes > write || echo no > write\n"
        "chown nobody /usr/local/probe && echo yes > chown || echo no > chown\n"
    )
    _, description = run_script(tmp_path, "capabilities", script)
    members = _model_members(description["ModelArtifacts"]["S3ModelArtifacts"])
    assert members == {"mknod": b"no\n", "mount": b"no\n", "write": b"yes\n", "chown": b"yes\n"}


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_failure_file_that_is_no_file_is_never_read(
    tmp_path: Path, home: Path, kind: str
) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    make = f"ln -s {secret} failure" if kind == "link" else "mkfifo failure"
    script = f"#!/bin/sh\ncd /opt/ml/output && {make}\nexit 2\n"
    _, description = run_script(tmp_path, f"failure-{kind}", script)
    assert description["TrainingJobStatus"] == "Failed"
    assert description["FailureReason"] == (
        "AlgorithmError: the training program exited with status 2"
    )


def test_output_without_line_breaks_is_cut_into_events(tmp_path: Path, home: Path) -> None:
    script = "#!/bin/sh\nhead -c 600000 /dev/zero | tr '\\0' 'x'\necho\necho after\n"
    jobs, _ = run_script(tmp_path, "long-line", script)
    events = [record.message for record in jobs.iter_log_events("long-line")]
    assert [len(message) for message in events[:3]] == [262144, 262144, 600000 - 2 * 262144]
    assert events[3:] == ["after"]
