"""The house keeps itself in order: imports run one way (tests/house/import_graph.py), checked on this tree, and
the checker is shown to catch each kind of breach on a copy of the tree with one deliberate back-import."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("import_graph", Path(__file__).with_name("import_graph.py"))
import_graph = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = import_graph  # dataclasses resolve their module by name
_spec.loader.exec_module(import_graph)


def test_imports_run_one_way():
    assert import_graph.violations(ROOT) == []


def test_every_room_of_the_tree_has_a_layer():
    rooms = {import_graph.room(m) for m in import_graph.find_modules(ROOT)}
    assert rooms <= set(import_graph.LAYERS), rooms - set(import_graph.LAYERS)
    assert {"training", "shipping", "mining", "evaluation", "embedders", "losses", "datamodules",
            "operations", "train", "evaluate"} <= rooms


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the project's Python files (the checker reads sources only)."""
    for path in import_graph.find_modules(ROOT).values():
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    assert import_graph.violations(tmp_path) == []
    return tmp_path


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + "\n" + text + "\n")


@pytest.mark.parametrize("module, line, expected", [
    # a lower room importing a higher one: embedders → evaluation (the old embedders ↔ evaluation circle)
    ("embedders/pooling.py", "from evaluation.scoring import score_rows", "embedders may not import evaluation"),
    # a loss that knows a model
    ("losses/infonce.py", "from embedders.pooling import pool", "losses may not import embedders"),
    # data code that sees a model
    ("datamodules/collate.py", "import embedders", "datamodules may not import embedders"),
    # operations below every room
    ("operations/lock.py", "from datamodules.errors import DataError", "operations may not import datamodules"),
    # two rooms of one layer
    ("mining/report.py", "from shipping.hub import hub_token", "mining may not import shipping"),
    # an entry script importing another (mine.py → evaluate.py, as before the move)
    ("mine.py", "import evaluate", "entry script imports another"),
    # a library room importing an entry script
    ("training/checks.py", "import train", "training may not import train"),
])
def test_a_back_import_is_caught(tree, module, line, expected):
    _append(tree / module, line)
    found = import_graph.violations(tree)
    assert any(expected in v for v in found), found


def test_a_circle_inside_a_room_is_caught_even_when_deferred(tree):
    # embedders.pooling ← embedders.embedder already; pooling → embedder inside a function closes a circle.
    _append(tree / "embedders/pooling.py", "def _later():\n    from .embedder import Embedder\n    return Embedder")
    found = import_graph.violations(tree)
    assert any(v.startswith("module circle:") and "embedders.pooling" in v for v in found), found
    assert any("inside a function" in v and "embedders.pooling" in v for v in found), found


def test_a_deferred_project_import_is_caught_and_a_third_party_one_is_not(tree):
    _append(tree / "evaluation/scoring.py", "def _later():\n    import numpy\n    return numpy")
    assert import_graph.violations(tree) == []
    _append(tree / "evaluation/retrieval.py", "def _hidden():\n    from evaluation.store import ScoreStore\n    return ScoreStore")
    found = import_graph.violations(tree)
    assert len(found) == 1 and "evaluation.retrieval imports evaluation.store inside a function" in found[0], found


def test_a_new_room_must_be_placed(tree):
    (tree / "plugins").mkdir()
    (tree / "plugins" / "__init__.py").write_text("import losses\n")
    assert any("room 'plugins' has no layer" in v for v in import_graph.violations(tree))
