"""mine.py never replaces what an earlier mining wrote with other settings: SaHa cluster files (which
sampler=saha reads from a fixed place) are refused, naming the file and the differing settings; mined
negatives go to a directory beside the old one (an explicit mining.out_dir is refused instead)."""

from __future__ import annotations

import json

import pytest

from datamodules.samplers import cluster_file_path
from mining import job as mine


def overrides(tiny_cfg, mined_root, extra=()):
    bundled = [o for o in tiny_cfg() if o.startswith("bundled.")]
    return [*bundled, "data.subsets=[ShapeT2I]", "data.max_per_subset=12", "data.val_per_subset=2",
            f"mining.mined_root={mined_root}", "mining.k=3", "mining.progress=false", "device=cpu", *extra]


def test_saha_files_mined_with_other_settings_are_not_replaced(compose_cfg, tiny_cfg, tmp_path):
    first = mine.run(compose_cfg("mine", overrides(tiny_cfg, tmp_path / "mined")))
    path = cluster_file_path(first["out_dir"], "ShapeT2I")
    before = path.read_text()
    with pytest.raises(FileExistsError) as err:
        mine.run(compose_cfg("mine", overrides(tiny_cfg, tmp_path / "mined", ["mining.k=2"])))
    assert f"ShapeT2I: {path}" in str(err.value) and "k: 3 → 2" in str(err.value)
    assert "mining.out_dir=<new dir>" in str(err.value) and "mining.force=true" in str(err.value)
    assert path.read_text() == before  # untouched
    forced = mine.run(compose_cfg("mine", overrides(tiny_cfg, tmp_path / "mined", ["mining.k=2", "mining.force=true"])))
    assert json.loads(cluster_file_path(forced["out_dir"], "ShapeT2I").read_text())["k"] == 2


def test_negatives_mined_with_other_settings_go_beside_the_old_ones(compose_cfg, tiny_cfg, tmp_path):
    common = ["mining.method=negatives", "mining.pool=5", "mining.relative=null"]
    first = mine.run(compose_cfg("mine", overrides(tiny_cfg, tmp_path / "mined", common)))
    manifest = (first["out_dir"] / "mined.json").read_text()
    second = mine.run(compose_cfg("mine", overrides(tiny_cfg, tmp_path / "mined", [*common, "mining.select=random"])))
    assert second["out_dir"].parent == first["out_dir"].parent
    assert second["out_dir"].name.startswith("negatives-") and (second["out_dir"] / "mined.json").is_file()
    assert (first["out_dir"] / "mined.json").read_text() == manifest  # the first dataset is untouched
    again = mine.run(compose_cfg("mine", overrides(tiny_cfg, tmp_path / "mined", [*common, "mining.select=random"])))
    assert again["out_dir"] == second["out_dir"] and again["summary"][0]["status"] == "skipped (up to date)"
    with pytest.raises(FileExistsError, match="mining.select: 'top' → 'random'"):
        mine.run(compose_cfg("mine", overrides(tiny_cfg, tmp_path / "mined", [
            *common, "mining.select=random", f"mining.out_dir={first['out_dir']}"])))
