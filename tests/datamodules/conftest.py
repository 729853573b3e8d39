"""Local snapshots in the hub layouts of TIGER-Lab/MMEB-train and MMEB-eval: `<config>/<split>-00000-of-00001.parquet`
plus a README whose YAML `configs:` lists every config and split (as on the hub)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def write_hub_repo(root: Path, configs: dict[str, dict[str, pa.Table | bytes | None]]) -> Path:
    """`configs[name][split]` is a table, raw bytes (a damaged file), or None (listed in the README, no file)."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, table in splits.items():
            if table is not None:
                (root / name).mkdir(parents=True, exist_ok=True)
                path = root / name / f"{split}-00000-of-00001.parquet"
                if isinstance(table, bytes):
                    path.write_bytes(table)
                else:
                    pq.write_table(table, path)
            lines += [f"  - split: {split}", f"    path: {name}/{split}-*.parquet"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


@pytest.fixture
def write_repo():
    return write_hub_repo
