"""The package's layers: no module imports a layer above its own, and the engines (sparsity,
quant, export), the tasks and the training loop never import Hydra: they are libraries any loop can
use. (The sweep report reads Hydra's sweep directories, so it may.)"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prunelab"
# What each layer may import from prunelab besides itself (errors is the bottom of every layer).
ALLOWED = {
    "sparsity": set(),
    "tasks": {"errors"},
    "quant": {"errors"},
    "export": {"errors", "sparsity", "quant"},
    "train": {"errors", "tasks"},
    "report": {"errors"},
}
HYDRA_FREE = {"sparsity", "tasks", "quant", "export", "train"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_layer_imports_one_above_it_or_hydra(layer):
    wrong = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] in ("hydra", "omegaconf") and layer in HYDRA_FREE:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
            elif parts[0] == "prunelab" and len(parts) > 1 and parts[1] != layer and parts[1] not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The rule is not vacuous: a train module importing the app is caught."""
    layer = tmp_path / "train"
    layer.mkdir()
    (layer / "bad.py").write_text("from prunelab.app.config import build\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    with pytest.raises(AssertionError, match="train/bad.py imports prunelab.app.config"):
        test_no_layer_imports_one_above_it_or_hydra("train")
