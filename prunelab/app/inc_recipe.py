"""Read an INC-style pruning recipe (the YAML INC users passed as ``--pruning_config``) into engine keys.

Three layouts are accepted, each holding the keys of ``prunelab.sparsity.config`` (INC 2.x's
``WeightPruningConfig`` names)::

    target_sparsity: 0.8          pruning:                      pruning:
    pattern: 4x1                    target_sparsity: 0.8          approach:
    pruning_configs:                pattern: 4x1                    weight_compression:  # or ..._pytorch
      - op_names: [attention]                                         target_sparsity: 0.8
        pattern: "2:4"                                                pattern: 4x1

Beside a top-level ``pruning:``, INC's conf.yaml header keys ``version`` and ``model`` are
ignored (the model comes from the run's ``model=``). ``!Pruner`` tags on groups (INC's YAML) are
read as plain mappings.

Unlike PyYAML's YAML 1.1 default, an unquoted ``2:4`` reads as the string ``"2:4"``, not the
base-60 integer 124 (YAML 1.2 has no base-60 numbers). INC 1.x key names (``prune_domain``,
``pruners``, ...) fail with a ``ConfigError`` naming the file, the line and today's key; unknown
keys name the file, the line and the allowed keys. The result is validated with
``prunelab.sparsity.config.parse_config``.

Hydra-free: PyYAML, ``prunelab.sparsity`` and ``prunelab.errors`` only.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from prunelab.errors import ConfigError
from prunelab.sparsity.config import KEYS, parse_config

ENGINE_KEYS = (*KEYS, "pruning_configs")

# INC 1.x (``neural_compressor.experimental`` pruning YAML) name -> today's key.
INC1_NAMES = {
    "excluded_names": "excluded_op_names",
    "not_to_prune_names": "excluded_op_names",
    "extra_excluded_names": "excluded_op_names",
    "names": "op_names",
    "prune_layer_type": "pruning_op_types",
    "update_frequency_on_step": "pruning_frequency",
    "update_frequency": "pruning_frequency",
    "prune_domain": "pruning_scope",
    "prune_type": "pruning_type",
    "max_sparsity_ratio_per_layer": "max_sparsity_ratio_per_op",
    "pruners": "pruning_configs",
}

HEADER_KEYS = ("version", "model")  # INC conf.yaml keys beside ``pruning:``; ignored
APPROACHES = ("weight_compression", "weight_compression_pytorch")

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers (``2:4`` stays a string) that reads INC's
    ``!Pruner`` tag as a plain mapping."""


def _no_colon(regexp: re.Pattern) -> re.Pattern:
    # Every base-60 form contains a colon; no other int or float form does.
    return re.compile(r"(?!.*:)(?:" + regexp.pattern + ")", regexp.flags)


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, _no_colon(regexp) if tag in (_INT, _FLOAT) else regexp) for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_constructor("!Pruner", lambda loader, node: loader.construct_mapping(node, deep=True))


def read_pruning_config(path: str | Path) -> dict:
    """The engine keys of the recipe at ``path`` (as written there, no defaults filled in).

    Raises ``ConfigError`` (one line starting ``pruning_config=<path>``) for a missing or
    unreadable file, invalid YAML, a layout that is not a mapping of pruning keys, an INC 1.x or
    unknown key, and any value ``parse_config`` rejects.
    """
    where = f"pruning_config={path}"
    loader, root = _compose(Path(path), where)
    try:
        if not isinstance(root, yaml.MappingNode):
            keys = ", ".join(ENGINE_KEYS)
            raise ConfigError(f"{where}: must be a mapping of pruning keys ({keys}), got {_kind(root)}")
        _check_duplicates(root, where)
        block = _pruning_block(loader, root, where)
        _check_engine_keys(loader, block, where)
        recipe = loader.construct_object(block, deep=True)
    except yaml.YAMLError as error:  # e.g. a tag SafeLoader does not construct (!!python/object)
        raise _yaml_error(error, where) from None
    finally:
        loader.dispose()
    try:
        parse_config(recipe)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    return recipe


def _compose(path: Path, where: str) -> tuple[_RecipeLoader, yaml.Node | None]:
    if not path.exists():
        raise ConfigError(f"{where}: no such file")
    if not path.is_file():
        raise ConfigError(f"{where}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{where}: cannot be read: {error}") from None
    loader = _RecipeLoader(text)
    try:
        return loader, loader.get_single_node()
    except yaml.YAMLError as error:
        loader.dispose()
        raise _yaml_error(error, where) from None


def _yaml_error(error: yaml.YAMLError, where: str) -> ConfigError:
    """One line: the file, the line PyYAML points at, and its problem."""
    if isinstance(error, yaml.MarkedYAMLError) and (error.problem or error.context):
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(error.problem or error.context).split())
        return ConfigError(f"{where}{line}: not valid YAML: {problem}")
    return ConfigError(f"{where}: not valid YAML: {' '.join(str(error).split())}")


def _pruning_block(loader: _RecipeLoader, root: yaml.MappingNode, where: str) -> yaml.MappingNode:
    """The mapping that holds the engine keys, in any of the three layouts."""
    top = _keys(loader, root, where)
    if "pruning" not in top:
        return root
    _only(top, ("pruning", *HEADER_KEYS), "at the top level beside 'pruning'", where)
    pruning = _mapping(top["pruning"][1], "pruning", where)
    keys = _keys(loader, pruning, where)
    if "approach" not in keys:
        return pruning
    _only(keys, ("approach",), "under 'pruning' beside 'approach'", where)
    approach = _mapping(keys["approach"][1], "pruning.approach", where)
    methods = _keys(loader, approach, where)
    _only(methods, APPROACHES, "under 'pruning.approach'", where)
    if not methods:
        raise ConfigError(f"{where}:{_line(approach)}: 'pruning.approach' must hold {' or '.join(APPROACHES)}")
    if len(methods) > 1:
        both = " and ".join(APPROACHES)
        raise ConfigError(f"{where}:{_line(approach)}: 'pruning.approach' holds both {both}; keep one")
    (name, (_, block)), = methods.items()
    return _mapping(block, f"pruning.approach.{name}", where)


def _check_engine_keys(loader: _RecipeLoader, block: yaml.MappingNode, where: str) -> None:
    for key, (key_node, value) in _keys(loader, block, where).items():
        _check_key(key, key_node, where)
        if key == "pruning_configs" and isinstance(value, yaml.SequenceNode):
            for group in value.value:
                if isinstance(group, yaml.MappingNode):  # anything else: parse_config says what is wrong
                    for group_key, (group_key_node, _) in _keys(loader, group, where).items():
                        _check_key(group_key, group_key_node, where)


def _check_key(key: str, key_node: yaml.Node, where: str) -> None:
    if key in ENGINE_KEYS:
        return
    if key in INC1_NAMES:
        raise ConfigError(f"{where}:{_line(key_node)}: {key!r} is INC 1.x's name; today's key is {INC1_NAMES[key]!r}")
    raise ConfigError(f"{where}:{_line(key_node)}: unknown pruning key {key!r}; allowed keys: {', '.join(ENGINE_KEYS)}")


def _check_duplicates(node: yaml.Node, where: str, seen: set[int] | None = None) -> None:
    """A key written twice in one mapping is an error (PyYAML would silently keep the last); keys
    brought in by a merge key ``<<`` may be overridden, as YAML intends."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE:
                if key_node.value in lines:
                    raise ConfigError(
                        f"{where}:{_line(key_node)}: {key_node.value!r} is set twice "
                        f"(first at line {lines[key_node.value]}); keep one"
                    )
                lines[key_node.value] = _line(key_node)
            _check_duplicates(value_node, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, where, seen)


def _keys(loader: _RecipeLoader, node: yaml.MappingNode, where: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """``key -> (key node, value node)`` of a mapping node, merge keys ``<<`` resolved (an
    explicit key wins over a merged one)."""
    loader.flatten_mapping(node)  # idempotent: merged pairs first, explicit pairs after them
    keys: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        keys[str(loader.construct_object(key_node, deep=True))] = (key_node, value_node)
    return keys


def _only(keys: dict, allowed: tuple[str, ...], place: str, where: str) -> None:
    for key, (key_node, _) in keys.items():
        if key not in allowed:
            raise ConfigError(
                f"{where}:{_line(key_node)}: unknown key {key!r} {place}; allowed keys: {', '.join(allowed)}"
            )


def _mapping(node: yaml.Node, name: str, where: str) -> yaml.MappingNode:
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{where}:{_line(node)}: '{name}' must be a mapping of pruning keys, got {_kind(node)}")
    return node


def _kind(node: yaml.Node | None) -> str:
    if node is None:
        return "an empty file"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.ScalarNode):
        return f"the value {node.value!r}" if node.value else "an empty value"
    return "a mapping"


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1
