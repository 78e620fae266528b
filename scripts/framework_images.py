"""Regenerate openmaker/shapes/framework_images.json from the installed `sagemaker` SDK (v2).

The SDK's image URI config names, per framework, the ECR repositories of its training and
inference images and the registry account of each region. openmaker keeps only those facts:
which repository belongs to which framework, per scope, and which accounts publish them.

    .venv/bin/python scripts/framework_images.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sagemaker

FRAMEWORKS = {
    "sklearn": "scikit-learn",
    "pytorch": "PyTorch",
    "tensorflow": "TensorFlow",
    "xgboost": "XGBoost",
    "huggingface": "Hugging Face",
    "mxnet": "MXNet",
}
SCOPES = ("training", "inference")
OUTPUT = Path(__file__).resolve().parent.parent / "openmaker" / "shapes" / "framework_images.json"


def _versions(scope: dict[str, Any]) -> list[dict[str, Any]]:
    """Every version entry, Hugging Face's nested per-base-framework entries included."""
    found = []
    for entry in scope.get("versions", {}).values():
        if "repository" in entry:
            found.append(entry)
        found += [v for v in entry.values() if isinstance(v, dict) and "repository" in v]
    return found


def main() -> None:
    config_dir = Path(sagemaker.__file__).parent / "image_uri_config"
    repositories: dict[str, dict[str, str]] = {scope: {} for scope in SCOPES}
    accounts: set[str] = set()
    for key, framework in FRAMEWORKS.items():
        data = json.loads((config_dir / f"{key}.json").read_text())
        for scope in SCOPES:
            for entry in _versions(data.get(scope, {})):
                repositories[scope][entry["repository"]] = framework
                accounts.update(entry.get("registries", {}).values())
    OUTPUT.write_text(
        json.dumps(
            {
                "source": f"sagemaker SDK {sagemaker.__version__} image_uri_config",
                "repositories": {s: dict(sorted(r.items())) for s, r in repositories.items()},
                "accounts": sorted(accounts),
            },
            indent=1,
        )
        + "\n"
    )
    counts = ", ".join(f"{len(r)} {s} repositories" for s, r in repositories.items())
    print(f"{OUTPUT}: {counts}, {len(accounts)} accounts")


if __name__ == "__main__":
    main()
