"""What a training job asks of one host, typed: the host reads this, never the request.

openmaker/training/plan.py builds it from the validated CreateTrainingJob request (the only
code that reads the request's members for a host). Frozen dataclasses of plain values: a plan
pickles, and `to_json` / `from_json` carry it through JSON (for a host on another machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from openmaker.shapes.distribution import PROCESS, Strategy

# Where the code finds its checkpoints when the request names no LocalPath.
DEFAULT_CHECKPOINT_PATH = "/opt/ml/checkpoints"
# The instance's ML storage volume when the request names no size.
DEFAULT_VOLUME_GB = 30


class InputMode(StrEnum):
    """How a channel reaches the code: downloaded, mounted, or streamed into FIFOs."""

    FILE = "File"
    FAST_FILE = "FastFile"
    PIPE = "Pipe"


class DataType(StrEnum):
    """What a channel's URI names (the model's S3DataType)."""

    PREFIX = "S3Prefix"
    MANIFEST = "ManifestFile"
    AUGMENTED_MANIFEST = "AugmentedManifestFile"
    CONVERSE = "Converse"


@dataclass(frozen=True)
class ChannelPlan:
    name: str
    mode: InputMode
    uri: str
    data_type: DataType
    # An augmented manifest's attributes, in the order each line gives them.
    attribute_names: tuple[str, ...] = ()
    # Each host gets its share of the objects (ShardedByS3Key), else all of them.
    sharded: bool = False
    # Pipe: the objects are gunzipped / wrapped in RecordIO records as they are streamed.
    gzip: bool = False
    recordio: bool = False
    content_type: str | None = None
    # Reshuffled each epoch from this seed; None: in order.
    shuffle_seed: int | None = None
    # Where the code finds the data, under /opt/ml (a processing input's LocalPath); None:
    # /opt/ml/input/data/<name>, a training channel's.
    local_path: str | None = None

    @property
    def folder(self) -> str:
        """The channel's folder relative to /opt/ml (a Pipe channel's FIFOs sit beside it,
        named after its last part)."""
        if self.local_path is None:
            return f"input/data/{self.name}"
        return self.local_path.removeprefix("/opt/ml/").strip("/")


@dataclass(frozen=True)
class CheckpointPlan:
    uri: str
    # Where the code sees its checkpoints, inside the container.
    local_path: str = DEFAULT_CHECKPOINT_PATH


@dataclass(frozen=True)
class OutputPlan:
    # `<S3OutputPath>/<TrainingJobName>/output/`: the folder of the job's archives.
    prefix: str
    # The model as model.tar.gz (GZIP, the default), else its files under model/.
    compressed: bool = True

    def uri(self, name: str) -> str:
        return self.prefix + name

    @property
    def model_uri(self) -> str:
        """ModelArtifacts.S3ModelArtifacts: the archive, or the folder when uncompressed."""
        return self.uri("model.tar.gz" if self.compressed else "model/")


@dataclass(frozen=True)
class FolderUpload:
    """A folder of the host uploaded file by file to `uri` (a processing job's output): at the
    end of the job, or also while the code runs (`continuous`, as checkpoints are)."""

    name: str
    # Relative to /opt/ml.
    folder: str
    uri: str
    continuous: bool = False


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    regex: str


@dataclass(frozen=True)
class CommandPlan:
    """What the host starts: the image (resolved on the host's machine, see images.py), its
    argv, the code's hyperparameters and environment, what its log lines say of metrics."""

    image: str
    entrypoint: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()
    hyperparameters: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    metric_definitions: tuple[MetricDefinition, ...] = ()
    # The launcher the SDK's `distribution` asks for (script mode).
    distribution: Strategy = field(default_factory=lambda: Strategy(PROCESS))
    # What a pulled image's ENTRYPOINT gets in its CMD's place when no arguments are given:
    # `train` (a training job); None: the image's own CMD, as `docker run` (a processing job).
    verb: str | None = "train"


@dataclass(frozen=True)
class LimitsPlan:
    instance_type: str
    volume_size_gb: int = DEFAULT_VOLUME_GB
    # None: no time limit.
    max_runtime_seconds: int | None = None


@dataclass(frozen=True)
class TrainingPlan:
    """Everything of the job one host runs."""

    command: CommandPlan
    output: OutputPlan
    limits: LimitsPlan
    channels: tuple[ChannelPlan, ...] = ()
    checkpoint: CheckpointPlan | None = None
    # No network at all for the code: no bridge, no store endpoint.
    network_isolation: bool = False
    # The container's files in /opt/ml/input/config (the container contract, CONTRACT.md §1),
    # rendered by the plan's builder: name → content. resourceconfig.json is this host's.
    config_files: dict[str, str] = field(default_factory=dict)
    # Where those files go, relative to /opt/ml (a processing job's are in config/).
    config_dir: str = "input/config"
    # The file whose head becomes the FailureReason, relative to /opt/ml.
    failure_file: str = "output/failure"
    # Folders made before the code starts, relative to /opt/ml (a processing job's outputs).
    folders: tuple[str, ...] = ()
    # What failure reasons call the job's code ("the processing program exited ...").
    program: str = "training program"
    # Folders the host uploads as they are (host/folder_uploads.py): a processing job's outputs.
    uploads: tuple[FolderUpload, ...] = ()

    def channels_in(self, mode: InputMode) -> list[ChannelPlan]:
        return [channel for channel in self.channels if channel.mode == mode]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingPlan:
        command, checkpoint = data["command"], data["checkpoint"]
        return cls(
            command=CommandPlan(
                **{
                    **command,
                    "entrypoint": tuple(command["entrypoint"]),
                    "arguments": tuple(command["arguments"]),
                    "metric_definitions": tuple(
                        MetricDefinition(**d) for d in command["metric_definitions"]
                    ),
                    "distribution": Strategy(**command["distribution"]),
                }
            ),
            output=OutputPlan(**data["output"]),
            limits=LimitsPlan(**data["limits"]),
            channels=tuple(
                ChannelPlan(
                    **{
                        **channel,
                        "mode": InputMode(channel["mode"]),
                        "data_type": DataType(channel["data_type"]),
                        "attribute_names": tuple(channel["attribute_names"]),
                    }
                )
                for channel in data["channels"]
            ),
            checkpoint=checkpoint and CheckpointPlan(**checkpoint),
            network_isolation=data["network_isolation"],
            config_files=data["config_files"],
            config_dir=data.get("config_dir", "input/config"),
            failure_file=data.get("failure_file", "output/failure"),
            folders=tuple(data.get("folders", ())),
            program=data.get("program", "training program"),
            uploads=tuple(FolderUpload(**upload) for upload in data.get("uploads", ())),
        )
