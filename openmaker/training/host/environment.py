"""The environment variables the code sees, as on a SageMaker training instance."""

from __future__ import annotations

from openmaker.training.host.images import Image
from openmaker.training.host.spec import HostSpec

LAUNCHER_MODULE = "openmaker.training.host.launcher:main"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def container_environment(spec: HostSpec, image: Image) -> dict[str, str]:
    env = {
        "PATH": ":".join([*image.path_entries, SYSTEM_PATH]),
        "HOME": "/root",
        "HOSTNAME": spec.host_name,
        "LANG": "C.UTF-8",
        "TRAINING_JOB_NAME": spec.job_name,
        "TRAINING_JOB_ARN": spec.job_arn,
        "AWS_REGION": spec.region,
        "AWS_DEFAULT_REGION": spec.region,
    }
    if image.program_dir is None:
        # SageMaker's framework images set these in their Dockerfiles; they make the
        # script's output reach the logs line by line.
        env["PYTHONUNBUFFERED"] = "TRUE"
        env["PYTHONDONTWRITEBYTECODE"] = "TRUE"
        # As each framework container names its own: the launcher its `distribution` asks for.
        env["SAGEMAKER_TRAINING_MODULE"] = LAUNCHER_MODULE
    env.update(spec.code_env)
    env.update(spec.plan.command.environment)
    return env
