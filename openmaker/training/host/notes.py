"""Lines openmaker puts at the top of a host's log: where the run differs from SageMaker's.

The status message says it too, but people read the log: a GPU instance type running on CPU,
or a framework image stood in for by this machine's Python, must not go unnoticed there.
"""

from __future__ import annotations

import re
import sys

from openmaker.instances import catalog, detect_gpus
from openmaker.training.host.images import Image
from openmaker.training.host.spec import HostSpec

PREFIX = "[openmaker] "
# The Python version in a framework image's tag, as the sagemaker SDK writes it: `-py310`.
_PY_TAG = re.compile(r"-py(?P<major>\d)(?P<minor>\d+)(?:$|-)")


def opening_lines(spec: HostSpec, image: Image) -> list[str]:
    lines = []
    if gpu := _gpu_note(spec):
        lines.append(gpu)
    if image.program_dir is None and image.pulled is None:
        lines.append(_python_note(image))
    return [PREFIX + line for line in lines]


def _gpu_note(spec: HostSpec) -> str | None:
    asked = catalog().get(spec.instance_type)
    if asked is None or asked.gpus == 0:
        return None
    given = len(spec.resources.gpus) if spec.resources is not None else len(detect_gpus())
    if given >= asked.gpus:
        return None
    if given == 0:
        return (
            f"{spec.instance_type} has {asked.gpus} GPU(s) on SageMaker; this machine gives "
            "this host none: the code runs on CPU"
        )
    return (
        f"{spec.instance_type} has {asked.gpus} GPUs on SageMaker; this machine gives this "
        f"host {given} of them"
    )


def _python_note(image: Image) -> str:
    here = f"Python {sys.version.split()[0]} ({sys.executable})"
    if image.framework is None:
        return f"script mode runs on this machine's {here}"
    tag = image.reference.rpartition(":")[2] if ":" in image.reference else ""
    found = _PY_TAG.search(tag)
    asked = f"Python {found['major']}.{found['minor']}" if found else "its own Python"
    return (
        f"the {image.framework} image asks for {asked}; the code runs on this machine's "
        f"{here} instead — {image.description}"
    )
