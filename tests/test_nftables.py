"""runtime/nftables.py deletes a table, rules and all, as `nft delete table` does, and says
when there was none; another table is left alone."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

from openmaker.runtime import nftables

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="nftables tables need root and nft"
)


def _tables() -> list[str]:
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    return listed.stdout.split("\n")


def test_a_table_with_its_chains_and_rules_is_deleted_and_another_is_kept() -> None:
    # Not openmaker's prefix: a sweep deletes an `omn*` table whose bridge is gone.
    name, other = (f"omtest{secrets.token_hex(3)}" for _ in range(2))
    rules = "".join(
        f"table inet {table} {{\n chain forward {{\n  type filter hook forward priority 0; "
        f'policy accept;\n  iifname "{table}" drop\n }}\n}}\n'
        for table in (name, other)
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        assert nftables.delete_table("inet", name)
        assert f"table inet {name}" not in _tables()
        assert f"table inet {other}" in _tables()
        assert not nftables.delete_table("inet", name)  # none left
    finally:
        for table in (name, other):
            subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
