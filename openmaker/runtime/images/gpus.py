"""Which parts of the machine's NVIDIA driver an image's container needs for the GPUs assigned
to it, as NVIDIA's container toolkit shows them: the device node of each assigned GPU and the
shared control nodes, and the driver's user-space libraries and tools, which an image never
carries (they must match the machine's kernel module). The libraries go where CUDA images look
for them (`/usr/local/nvidia/lib64`, on their LD_LIBRARY_PATH), the tools on their PATH.

Numbering: the container sees the device nodes of its own GPUs alone, as under the toolkit
(`docker run --gpus '"device=2,3"'`), where the image's CUDA and nvidia-smi number what they
can open from 0. So CUDA_VISIBLE_DEVICES (and NVIDIA_VISIBLE_DEVICES) say `0,…,n-1` inside,
whichever GPUs of the machine they are: the machine's indices would name devices CUDA does
not have there (CUDA_VISIBLE_DEVICES=2 with two devices hides them all). A container on the
machine's own root (script mode, a local folder) sees every node, and keeps the machine's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from openmaker.runtime.spec import Bind

LIBRARY_TARGET = "/usr/local/nvidia/lib64"
TOOL_TARGET = "/usr/local/nvidia/bin"
# Nodes every GPU process opens, whichever GPUs it has.
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
# The driver's user-space libraries (the CUDA driver API, NVML, the PTX JIT…).
_DRIVER_LIBRARY = re.compile(
    r"lib(cuda|cudadebugger|nvidia-(ml|ptxjitcompiler|nvvm|cfg|opencl|allocator|gpucomp))\.so(\.\d+)*"
)
TOOLS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced")
LIBRARY_FOLDERS = (
    Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib/aarch64-linux-gnu"),
    Path("/usr/lib/x86_64-linux-gnu/nvidia/current"),
)  # fmt: skip
TOOL_FOLDERS = (Path("/usr/bin"), Path("/usr/local/bin"))


@dataclass(frozen=True)
class GpuPlan:
    devices: tuple[str, ...]  # device nodes shown at their own path
    binds: tuple[Bind, ...]  # libraries and tools, read-only
    env: dict[str, str]
    # The GPUs as the container's CUDA numbers them: 0…n-1 (CUDA_VISIBLE_DEVICES inside).
    visible: tuple[str, ...] = ()


def plan_gpus(
    gpus: tuple[str, ...],
    dev: Path = Path("/dev"),
    library_folders: tuple[Path, ...] = LIBRARY_FOLDERS,
    tool_folders: tuple[Path, ...] = TOOL_FOLDERS,
) -> GpuPlan:
    """What to show a container for the GPUs `gpus` (their indices on the machine)."""
    if not gpus:
        return GpuPlan((), (), {})
    missing = [index for index in gpus if not (dev / f"nvidia{index}").exists()]
    if missing:
        raise RuntimeError(f"GPU {missing[0]} has no device node {dev}/nvidia{missing[0]}")
    devices = [str(dev / f"nvidia{index}") for index in gpus]
    devices += [str(dev / name) for name in CONTROL_NODES if (dev / name).exists()]
    caps = dev / "nvidia-caps"
    if caps.is_dir():
        devices += sorted(str(node) for node in caps.iterdir())
    binds: dict[str, Bind] = {}
    for folder in library_folders:
        if not folder.is_dir():
            continue
        for library in sorted(folder.iterdir()):
            if _DRIVER_LIBRARY.fullmatch(library.name) and library.name not in binds:
                target = f"{LIBRARY_TARGET}/{library.name}"
                binds[library.name] = Bind(str(library.resolve()), target)
    for name in TOOLS:
        found = next((f / name for f in tool_folders if (f / name).is_file()), None)
        if found is not None:
            binds[name] = Bind(str(found), f"{TOOL_TARGET}/{name}")
    env = {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    visible = tuple(str(number) for number in range(len(gpus)))
    return GpuPlan(tuple(devices), tuple(binds.values()), env, visible)
