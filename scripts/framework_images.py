"""Regenerate openmaker/training/host/framework_images.json from the installed `sagemaker` SDK (v2).

The SDK's image URI config names, per framework, the ECR repositories of its training images
and the registry account of each region. openmaker keeps only those facts: which repository
belongs to which framework, and which accounts publish them.

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
OUTPUT = (
    Path(__file__).resolve().parent.parent / "openmaker" / "training" / "host" / "framework_images.json"
)


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
    repositories: dict[str, str] = {}
    accounts: set[str] = set()
    for key, framework in FRAMEWORKS.items():
        data = json.loads((config_dir / f"{key}.json").read_text())
        for entry in _versions(data.get("training", data)):
            repositories[entry["repository"]] = framework
            accounts.update(entry.get("registries", {}).values())
    OUTPUT.write_text(
        json.dumps(
            {
                "source": f"sagemaker SDK {sagemaker.__version__} image_uri_config",
                "repositories": dict(sorted(repositories.items())),
                "accounts": sorted(accounts),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"{OUTPUT}: {len(repositories)} repositories, {len(accounts)} accounts")


if __name__ == "__main__":
    main()
