"""SaHa refresh with several ranks: rank 0 lists the refreshed cluster directories and picks; every rank uses its
choice, even where its own listing differs (a network file system shows a new directory to other nodes late), and
a rank that never sees the chosen directory stops with its path instead of building other batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mining.refresh import SaHaRefresh


def _rank(refresh: SaHaRefresh, rank: int, rank0_choice):
    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj if rank == 0 else rank0_choice)
    refresh._trainer = SimpleNamespace(world_size=2, is_global_zero=rank == 0, strategy=strategy)
    return refresh


def test_every_rank_uses_rank_zeros_choice(tmp_path):
    out = tmp_path / "refresh"
    (out / "epoch0001").mkdir(parents=True)
    refresh = SaHaRefresh(str(out), visibility_timeout_s=0.5)
    assert _rank(refresh, 0, None).agreed_clusters_dir(1) == out / "epoch0001"
    # rank 1 already lists a newer directory than rank 0 did: rank 0's choice wins
    (out / "epoch0002").mkdir()
    assert refresh.clusters_dir_for(2) == out / "epoch0002"
    assert _rank(refresh, 1, str(out / "epoch0001")).agreed_clusters_dir(2) == out / "epoch0001"
    # rank 0 found none (the offline clusters): so does every rank
    assert _rank(refresh, 1, None).agreed_clusters_dir(2) is None


def test_a_rank_that_never_sees_the_choice_stops_naming_it(tmp_path):
    refresh = _rank(SaHaRefresh(str(tmp_path), visibility_timeout_s=0.3), 1, str(tmp_path / "epoch0003"))
    with pytest.raises(FileNotFoundError, match=r"epoch0003 for epoch 3, but this rank does not see"):
        refresh.agreed_clusters_dir(3)
