"""The core (prunelab/app, prunelab/train) never identifies a component by its name: it reads what
the option's class declares (docs/extending.md). A scan of the source for name checks, a planted
violation it must catch, and the declarations every shipped option makes."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

from prunelab.sparsity.config import PRUNING_TYPES

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("prunelab/app", "prunelab/train")
# Attributes that name a component rather than say what it does.
NAMING_ATTRIBUTES = {"_target_", "family", "__name__", "__qualname__"}
# A class name, bare or at the end of a dotted path (KnowledgeDistiller, x.y.OneShotSchedule).
CLASS_NAME = re.compile(r"(^|\.)[A-Z][a-z0-9]+[A-Z]\w*$")
STRING_TESTS = {"endswith", "startswith", "removesuffix", "removeprefix"}


def _option_classes() -> dict[str, type]:
    """Group name -> class or function of every shipped option, from conf/<group>/<option>.yaml."""
    options = {}
    for path in sorted((ROOT / "conf").glob("*/*.yaml")):
        target = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("_target_")
        if target:
            options[f"{path.parent.name}={path.stem}"] = get_object(target)
    return options


def _component_names() -> set[str]:
    """What a name check would compare with: every option's class name, every task family and
    every pruning_type (criteria are declared in the engine's CRITERIA, a lock by the engine)."""
    options = _option_classes().values()
    return ({o.__name__ for o in options} | {o.family for o in options if isinstance(getattr(o, "family", None), str)}
            | set(PRUNING_TYPES))


def _task_files() -> set[str]:
    """The files the shipped tasks declare they write (``Task.output_files``)."""
    return {name for option, task in _option_classes().items() if option.startswith("task=") for name in task.output_files}


def _reads_name(node: ast.AST) -> bool:
    """Whether ``node`` reads a naming attribute (``x._target_``, ``x["_target_"]``, ``task.family`` ...)."""
    for part in ast.walk(node):
        if isinstance(part, ast.Attribute) and part.attr in NAMING_ATTRIBUTES:
            return True
        if isinstance(part, ast.Subscript) and isinstance(part.slice, ast.Constant) and part.slice.value == "_target_":
            return True
    return False


def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    """String constants in ``node`` that are a component's name or look like a class name."""
    return [part.value for part in ast.walk(node) if isinstance(part, ast.Constant) and isinstance(part.value, str)
            and (part.value in names or CLASS_NAME.search(part.value))]


def name_checks(source: str, names: set[str], task_files: set[str]) -> list[str]:
    """``line: what`` for each place ``source`` tells a component by its name: a comparison that
    reads a naming attribute or compares with a component name, a string method called on a
    naming attribute, ``endswith``-like tests against a component name, or a task's own file
    named (the task declares those)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value in task_files:
            found.append(f"{node.lineno}: names the task file {node.value!r}")
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_reads_name(o) for o in operands) or any(_names_in(o, names) for o in operands):
                found.append(f"{node.lineno}: compares {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if _reads_name(node.func.value):
                found.append(f"{node.lineno}: inspects {ast.unparse(node)}")
            elif node.func.attr in STRING_TESTS and any(_names_in(a, names) for a in node.args):
                found.append(f"{node.lineno}: tests {ast.unparse(node)}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


@pytest.fixture(scope="module")
def names() -> set[str]:
    return _component_names()


@pytest.fixture(scope="module")
def task_files() -> set[str]:
    return _task_files()


def test_the_core_tells_no_component_by_its_name(names, task_files):
    found = [f"{path.relative_to(ROOT)}:{line}" for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))
             for line in name_checks(path.read_text(encoding="utf-8"), names, task_files)]
    assert not found, "read what the component declares instead (docs/extending.md):\n" + "\n".join(found)


PLANTED = '''
def check(cfg, task, outputs):
    if cfg.distill._target_.endswith("KnowledgeDistiller"):
        pass
    if task.family == "squad":
        pass
    if cfg.scheduler["_target_"] == "prunelab.train.pruning_window.OneShotSchedule":
        pass
    if type(task).__name__ in ("SquadTask",):
        pass
    if cfg.task._target_.rsplit(".", 1)[-1]:
        pass
    if kind == "glue":
        pass
    if target.endswith(("OneShotSchedule", "Other")):
        pass
    if "_target_" in cfg.distill and cfg.pruning_type == "pattern_lock":  # a pruning_type by name: caught
        get_object(cfg.distill._target_).distils  # reading a declaration: allowed
    OUTPUTS = ("summary.json", "predictions.json")
'''


def test_the_scan_catches_planted_name_checks(names, task_files):
    assert {"glue", "squad", "KnowledgeDistiller", "OneShotSchedule", "SquadTask"} <= names
    assert {"predictions.json", "null_odds.json"} <= task_files
    found = name_checks(PLANTED, names, task_files)
    assert [int(line.split(":")[0]) for line in found] == [3, 5, 7, 9, 11, 13, 15, 17, 19], found


def test_every_shipped_option_declares_what_the_core_reads():
    options = _option_classes()
    for option, factory in options.items():
        group = option.split("=")[0]
        if group == "task":
            assert isinstance(factory.per_token_outputs, bool), option
            assert all(isinstance(name, str) for name in factory.output_files), option
        elif group == "scheduler":
            assert isinstance(factory.one_shot, bool), option
    # The distill options that distil say so; distill=none does not.
    distils = {option: getattr(factory, "distils", False) for option, factory in options.items() if option.startswith("distill=")}
    assert distils == {"distill=hidden_mse": True, "distill=kd": True, "distill=layerwise": True,
                       "distill=none": False, "distill=simkd": True}
