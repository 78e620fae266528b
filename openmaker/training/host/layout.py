"""The `/opt/ml` tree of one host and the config files in it (CONTRACT.md §1)."""

from __future__ import annotations

from openmaker.training.host.spec import HostSpec

CONTAINER_ROOT = "/opt/ml"


def create_tree(spec: HostSpec) -> None:
    ml = spec.ml_dir
    for sub in ("input/config", "input/data", "model", "output/data", "code"):
        (ml / sub).mkdir(parents=True, exist_ok=True)
    # Rendered by the plan's builder (openmaker/training/plan.py); the host only writes them.
    config = ml / spec.plan.config_dir
    config.mkdir(parents=True, exist_ok=True)
    for name, content in spec.plan.config_files.items():
        (config / name).write_text(content)
    for folder in spec.plan.folders:
        (ml / folder).mkdir(parents=True, exist_ok=True)
