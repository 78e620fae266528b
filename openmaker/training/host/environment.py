"""The environment variables the code sees, as on a SageMaker training instance."""

from __future__ import annotations

from openmaker.training.host.images import Image
from openmaker.training.host.spec import HostSpec

LAUNCHER_MODULE = "openmaker.training.host.launcher:main"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def container_environment(spec: HostSpec, image: Image) -> dict[str, str]:
    if image.container is not None:
        # A pulled image: its own ENV (PATH, HOME of its USER…), SageMaker's variables on top.
        env = {**image.container.env, "HOSTNAME": spec.host_name}
        env.update(_job_variables(spec))
        env.update(spec.code_env)
        env.update(spec.plan.command.environment)
        return env
    env = {
        "PATH": ":".join([*image.path_entries, SYSTEM_PATH]),
        "HOME": "/root",
        "HOSTNAME": spec.host_name,
        "LANG": "C.UTF-8",
        **_job_variables(spec),
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


def _job_variables(spec: HostSpec) -> dict[str, str]:
    return {
        "TRAINING_JOB_NAME": spec.job_name,
        "TRAINING_JOB_ARN": spec.job_arn,
        "AWS_REGION": spec.region,
        "AWS_DEFAULT_REGION": spec.region,
    }
