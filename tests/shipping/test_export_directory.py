"""export.py's output directory (issue 22): a non-empty directory is refused (exit 2, its entries named, nothing of it
touched) unless `--overwrite`, which replaces it as a whole (no foreign file stays: not a stale config.json, not a
file of the user's); every exported file has the mode an ordinary write gives under the umask (the weights were
written 0600)."""

from __future__ import annotations

import json
import os

import export


def test_export_refuses_a_non_empty_directory_and_overwrite_leaves_no_foreign_file(trained_run, tmp_path, capsys):
    from embedders import Embedder

    run_dir, _ = trained_run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"foreign": true}\n')  # another model's config
    (out / "notes.txt").write_text("the user's notes\n")
    assert export.main([ckpt, str(out)]) == 2
    err = capsys.readouterr().err
    assert (f"error: {out} is not empty (config.json, notes.txt): an export would mix its files with these. Choose "
            "an empty or new directory, or pass --overwrite to replace the whole directory") in err
    assert (out / "config.json").read_text() == '{"foreign": true}\n'
    assert (out / "notes.txt").read_text() == "the user's notes\n"

    old = os.umask(0o022)
    try:
        assert export.main([ckpt, str(out), "--overwrite"]) == 0
    finally:
        os.umask(old)
    assert not (out / "notes.txt").exists()
    assert "foreign" not in json.loads((out / "config.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary build or old tree left beside it
    Embedder.from_pretrained(out)
    files = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    dirs = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_dir()}
    assert files["model.safetensors"] == oct(0o644) and set(files.values()) == {oct(0o644)}, files
    assert set(dirs.values()) == {oct(0o755)} and oct(out.stat().st_mode & 0o777) == oct(0o755), dirs
