"""The typed schema of a composed run config, checked before anything heavy loads.

``check_config(cfg)`` resolves the composed config and checks it whole:
- top-level keys against ``RunSchema`` (unknown keys, also ``+key=...``, and wrong types fail);
- every group node with a ``_target_`` (model, task, scheduler, distill) against the signature of
  its target (unknown keys and plain type mismatches fail);
- ranges and combinations: settings that would have no effect are errors, not silently ignored.
The pruning engine's own keys (``pruning.*``) are checked by ``prunelab.sparsity.parse_config``
in ``prunelab.app.stages``. Every error is one ``ConfigError`` line naming the key.
``check_inert_overrides`` refuses command-line settings the run would ignore (dense, pattern_lock,
no latency runs).
Defaults and one-line comments live in ``conf/config.yaml``; this file holds the types.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError
from transformers import SchedulerType

from prunelab.app.config import build, to_input_path
from prunelab.errors import ConfigError
from prunelab.sparsity.config import locks_existing_zeros

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = tuple(kind.value for kind in SchedulerType)

# Flags of the reference scripts (optimum-intel, INC examples) that users will type: where each went.
FOREIGN_KEYS = {
    "apply_pruning": "use do_prune=true|false",
    "apply_distillation": "use distill=kd|hidden_mse|layerwise|simkd",
    "apply_quantization": "use quant=dynamic|static|qat",
    "quantization_approach": "use quant=dynamic|static|qat",
    "num_calibration_samples": "use quant=static quant.num_calibration_samples=N",
    "generate_teacher_logits": "use distill.precompute=true",
    "teacher_model_name_or_path": "use distill.teacher=<dir>",
    "model_name_or_path": "use model.name_or_path=<hub id or dir> (or model=<preset>)",
    "task_name": "use task=<name>",
    "output_dir": "use hydra.run.dir=<dir>",
    "max_seq_length": "use max_length (SQuAD: task.max_seq_length)",
    "do_train": "every run trains; there is no switch",
    "do_eval": "every run evaluates each epoch; there is no switch",
    "target_sparsity_ratio": "use target_sparsity",
}


@dataclass
class RunSchema:
    """Types of the top-level keys of ``conf/config.yaml`` (meanings: comments there)."""

    model: Any = MISSING
    task: Any = MISSING
    scheduler: Any = MISSING
    distill: Any = MISSING
    quant: Any = MISSING
    export: Any = MISSING
    pruning: Any = MISSING
    do_prune: bool = MISSING
    target_sparsity: float = MISSING
    seed: int = MISSING
    data_root: Optional[str] = MISSING
    max_train_samples: Optional[int] = MISSING
    max_eval_samples: Optional[int] = MISSING
    max_length: int = MISSING
    learning_rate: float = MISSING
    num_train_epochs: int = MISSING
    per_device_train_batch_size: int = MISSING
    per_device_eval_batch_size: int = MISSING
    gradient_accumulation_steps: int = MISSING
    weight_decay: float = MISSING
    no_decay_modules: List[str] = MISSING
    adam_betas: List[float] = MISSING
    lr_scheduler_type: str = MISSING
    num_warmup_steps: int = MISSING
    max_grad_norm: Optional[float] = MISSING
    mixed_precision: str = MISSING
    sparsity_warm_epochs: float = MISSING
    cooldown_epochs: float = MISSING
    pruning_frequency: Optional[int] = MISSING
    progressive: bool = MISSING
    distill_loss_weight: Optional[float] = MISSING
    pruning_config: Optional[str] = MISSING
    checkpointing_steps: Optional[str] = MISSING  # "epoch" or a whole number: parsed below
    checkpoints_to_keep: int = MISSING
    resume_from_checkpoint: Optional[str] = MISSING
    overwrite_output_dir: bool = MISSING
    save_model: bool = MISSING
    verify_loading: bool = MISSING
    progress_bar: bool = MISSING
    lookup: Dict[str, Any] = dataclasses.field(default_factory=dict)


_GROUPS = ("model", "task", "scheduler", "distill", "quant", "export")
# What only a pruning run reads: given to a dense run (do_prune=false), they would do nothing.
# (pruning.op_names and friends stay allowed: they set which ops a dense run's sparsity counts.)
PRUNING_ONLY_KEYS = ("pattern", "pruner", "scheduler", "scheduler.sparsity_decay_type", "scheduler.initial_sparsity",
                     "scheduler.lr_rewinding", "target_sparsity", "sparsity_warm_epochs", "cooldown_epochs",
                     "pruning_frequency", "progressive", "pruning.target_sparsity",
                     "pruning.pruning_scope", "pruning.min_sparsity_ratio_per_op", "pruning.max_sparsity_ratio_per_op")
# What pruner=pattern_lock ignores: it keeps the zeros the model has, from the first step to the last.
LOCK_IGNORED_KEYS = tuple(key for key in PRUNING_ONLY_KEYS if key != "pruner")
# What only training reads: given to a run without training (num_train_epochs=0), they would do nothing.
TRAINING_ONLY_KEYS = ("learning_rate", "weight_decay", "no_decay_modules", "adam_betas", "lr_scheduler_type",
                      "num_warmup_steps", "max_grad_norm", "checkpoints_to_keep")
# What only sets up the export's latency measurement.
EXPORT_LATENCY_KEYS = ("export.batch_sizes", "export.sequence", "export.threads")

# Keys the run passes to a group's target itself (so a config file must not set them).
_RUNTIME_KEYS = {
    "task": {"data_root", "max_length", "max_train_samples", "max_eval_samples", "seed"},
    "distill": {"task", "student"},
}
# What the run calls or reads on a group's built object (distill: a function of task and student, above).
_GROUP_METHODS = {
    "model": ("load_tokenizer", "load_model", "max_input_tokens"),
    "task": ("load", "auto_model_class", "model_kwargs", "compute_metrics", "per_token_outputs"),
    "scheduler": ("engine_keys", "one_shot", "lr_rewinding"),
    "quant": ("prepare", "release"),
    "export": ("enabled", "int8_backends"),
}


def check_config(cfg: DictConfig) -> DictConfig:
    """The composed config resolved and typed; ``ConfigError`` naming the first bad key."""
    plain = _resolve(cfg)
    unknown = [key for key in plain if key not in RunSchema.__dataclass_fields__]
    if unknown:
        raise ConfigError(_unknown_key(unknown[0], plain[unknown[0]]))
    try:
        typed = OmegaConf.merge(OmegaConf.structured(RunSchema), plain)
    except ValidationError as error:
        raise ConfigError(_type_error(error)) from None
    for group in _GROUPS:
        _check_group(group, typed[group])
    _check_values(typed, plain)
    return typed


def check_inert_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """``ConfigError`` for the first command-line override that every run of the command would
    ignore: pruning keys of a dense run (do_prune=false), schedule and target keys of
    pruner=pattern_lock, latency inputs of an export that measures no latency, verify_loading
    without save_model, checkpoints_to_keep without checkpointing_steps.

    ``overrides``: a single run's, or a sweep's as typed (``cfg`` then composed from its fixed
    ones: Hydra leaves the swept ones to the sweeper). A rule whose condition reads a swept key is
    skipped: ``-m do_prune=true,false pattern=...`` gives its dense jobs the pattern axis too, and
    the report counts each dense run once (docs/sweeps.md)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {override.key_or_group for override in parsed if override.is_sweep_override()}
    ignored: dict[str, tuple[str, str]] = {}  # key -> (why it has no effect, what to do)
    for reads, applies, keys, why, fix in _INERT_RULES:
        if not swept & {"experiment", *reads} and applies(cfg):  # a preset may set any key
            ignored.update((key, (why, fix)) for key in keys if key not in ignored)
    for override in parsed:
        if override.key_or_group in ignored:
            why, fix = ignored[override.key_or_group]
            typed = override.input_line.replace("\\:", ":")  # Hydra escapes 2:4 as 2\:4
            raise ConfigError(f"{typed}: has no effect with {why}; {fix}")


# (keys the condition reads, the condition, keys it makes inert, why, what to do): the
# command-line keys check_inert_overrides refuses.
_INERT_RULES = (
    (("do_prune",), lambda cfg: not cfg.do_prune, PRUNING_ONLY_KEYS,
     "do_prune=false (a dense run)", "drop it, or set do_prune=true"),
    (("do_prune", "pruner", "pruning.pruning_type", "pruning_config"),
     lambda cfg: cfg.do_prune and locks_existing_zeros(cfg.pruning.get("pruning_type")), LOCK_IGNORED_KEYS,
     "pruner=pattern_lock (it keeps the zeros the model has)", "drop it"),
    (("num_train_epochs",), lambda cfg: cfg.num_train_epochs == 0, TRAINING_ONLY_KEYS,
     "num_train_epochs=0 (no training: prune once, then evaluate)", "drop it"),
    (("do_prune", "scheduler", "scheduler.lr_rewinding"),
     lambda cfg: cfg.do_prune and bool(cfg.scheduler.get("lr_rewinding")), ("lr_scheduler_type", "num_warmup_steps"),
     "scheduler.lr_rewinding=true (linear decay restarted at every pruning update)", "drop it"),
    (("export", "export.latency_runs"),
     lambda cfg: _exports(cfg) and cfg.export.latency_runs == 0, EXPORT_LATENCY_KEYS,
     "export.latency_runs=0 (no latency measurement)", "drop it, or set export.latency_runs > 0"),
    (("save_model",), lambda cfg: not cfg.save_model, ("verify_loading",),
     "save_model=false (nothing is saved to reload)", "drop it, or set save_model=true"),
    (("checkpointing_steps",), lambda cfg: cfg.checkpointing_steps is None, ("checkpoints_to_keep",),
     "checkpointing_steps=null (no checkpoints)", "drop it, or set checkpointing_steps=epoch|N"),
)


def checkpoint_every(value: str | None) -> str | int | None:
    """``checkpointing_steps`` as the loop takes it: "epoch", a positive int, or None."""
    if value is None or value == "epoch":
        return value
    if str(value).isdigit() and int(value) > 0:
        return int(value)
    raise ConfigError(f"checkpointing_steps={value}: give epoch, a positive number of optimizer steps, or null")


def _resolve(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        cause = error.__cause__ or error.__context__  # OmegaConf re-raises a resolver's error in context
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # a resolver's own one-line error
            raise cause from None
        key = getattr(error, "full_key", None)
        raise ConfigError(f"{key}: {' '.join(str(error).splitlines()[0].split())}") from None


def _unknown_key(key: str, value: Any) -> str:
    hint = FOREIGN_KEYS.get(key)
    if hint is None:
        close = difflib.get_close_matches(key, RunSchema.__dataclass_fields__, n=1)
        hint = f"did you mean {close[0]}?" if close else "see conf/config.yaml for the keys a run has"
    return f"{key}={value}: no such key ({hint})"


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_error(error: ValidationError) -> str:
    key = error.full_key
    hint = typing.get_type_hints(RunSchema).get(key.split(".")[0], Any)
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    word = _TYPE_WORDS.get(base, "a list" if typing.get_origin(base) in (list, List) else "a mapping")
    return f"{key}={error.value!r}: must be {word}{' or null' if optional else ''}"


def _check_group(group: str, node: Any) -> None:
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node)
    if not isinstance(node, dict) or "_target_" not in node:
        return
    target = node["_target_"]
    try:
        factory = get_object(target)
    except Exception as error:  # an import error of the target is a broken config file
        raise ConfigError(f"{group}._target_={target}: cannot be imported ({type(error).__name__})") from None
    signature = _check_kind(group, target, factory)
    hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    runtime = _RUNTIME_KEYS.get(group, set())
    allowed = [name for name in signature.parameters if name not in runtime]
    for key, value in node.items():
        if key in ("_target_", "_partial_"):
            continue
        if key not in allowed:
            raise ConfigError(f"{group}.{key}={value}: no such key for this {group} option; allowed: {', '.join(allowed)}")
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise ConfigError(f"{group}.{key}={value!r}: must be {_describe_hint(hint)}")


def _check_kind(group: str, target: str, factory: Any) -> inspect.Signature:
    """The target's signature, once it is what the run builds and calls for ``group``: else the
    first use would end in a traceback far from the config."""
    methods = _GROUP_METHODS.get(group, ())
    missing = [name for name in methods if not hasattr(factory, name)]
    if not callable(factory) or (methods and not inspect.isclass(factory)) or missing:
        kind = f"a class with {', '.join(methods)}" if methods else "a class or function"
        raise ConfigError(f"{group}._target_={target}: not a {group} option (expected {kind})")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins such as dict have none
        raise ConfigError(f"{group}._target_={target}: not a {group} option (its parameters cannot be read)") from None
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    passed = sorted(_RUNTIME_KEYS.get(group, set()) - set(signature.parameters))
    if passed and not takes_any:
        raise ConfigError(f"{group}._target_={target}: not a {group} option (it must take {', '.join(passed)}, which the run passes)")
    return signature


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # richer annotations are the target's own business


def _describe_hint(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe_hint(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return _TYPE_WORDS.get(hint, "a list" if typing.get_origin(hint) in (list, tuple) else str(hint))


def _check_values(cfg: DictConfig, given: dict) -> None:
    """Ranges and combinations; messages show values as given (``-1``, not the typed ``-1.0``)."""
    if cfg.do_prune and not 0.0 <= cfg.target_sparsity < 1.0:
        raise ConfigError(f"target_sparsity={given['target_sparsity']}: must be in [0, 1) (fraction of weights zeroed)")
    if cfg.num_train_epochs < 0:
        raise ConfigError(f"num_train_epochs={given['num_train_epochs']}: must be >= 0 (0: prune once and evaluate, no training)")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size",
                "gradient_accumulation_steps", "max_length", "checkpoints_to_keep"):
        if cfg[key] < 1:
            raise ConfigError(f"{key}={given[key]}: must be a positive integer")
    for key in ("sparsity_warm_epochs", "cooldown_epochs", "learning_rate", "weight_decay", "num_warmup_steps"):
        if cfg[key] < 0:
            raise ConfigError(f"{key}={given[key]}: must be >= 0")
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={given['seed']}: must be in [0, 2**32 - 1] (numpy's seed range)")
    if cfg.max_grad_norm is not None and not cfg.max_grad_norm > 0:
        raise ConfigError(f"max_grad_norm={given['max_grad_norm']}: must be > 0 (null: no clipping)")
    if cfg.distill_loss_weight is not None and not cfg.distill_loss_weight > 0:
        raise ConfigError(f"distill_loss_weight={given['distill_loss_weight']}: must be > 0 (for no distillation, use distill=none)")
    for key in ("max_train_samples", "max_eval_samples", "pruning_frequency"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ConfigError(f"{key}={given[key]}: must be a positive integer or null")
    if len(cfg.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.adam_betas):
        raise ConfigError(f"adam_betas={given['adam_betas']}: give [beta1, beta2], each in [0, 1)")
    if cfg.data_root is not None and not Path(to_input_path(cfg.data_root)).is_dir():
        raise ConfigError(f"data_root={given['data_root']}: directory not found (unset it to use the HuggingFace hub)")
    if cfg.lr_scheduler_type not in LR_SCHEDULERS:
        raise ConfigError(f"lr_scheduler_type={given['lr_scheduler_type']}: allowed {list(LR_SCHEDULERS)}")
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision={given['mixed_precision']}: allowed {list(MIXED_PRECISION)}")
    for pattern in cfg.no_decay_modules:  # whether each finds a module is checked once the model is built
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"no_decay_modules={given['no_decay_modules']}: {pattern!r} is not a regular expression ({error})") from None
    checkpoint_every(cfg.checkpointing_steps)
    if cfg.resume_from_checkpoint is not None and cfg.overwrite_output_dir:
        raise ConfigError(
            f"overwrite_output_dir=true with resume_from_checkpoint={given['resume_from_checkpoint']}: "
            "a resumed run continues its run directory; drop one of the two"
        )
    _check_no_effect(cfg, given)


def _check_no_effect(cfg: DictConfig, given: dict) -> None:
    """Settings that the chosen options would silently ignore."""
    # Each option declares what it is (a distiller ``distils``, a schedule is ``one_shot``): no names are read.
    distilling = cfg.distill is not None and "_target_" in cfg.distill and getattr(get_object(cfg.distill._target_), "distils", False)
    if cfg.distill_loss_weight is not None and not distilling:
        raise ConfigError(
            f"distill_loss_weight={given['distill_loss_weight']}: has no effect without distillation; add distill=kd|hidden_mse|layerwise|simkd"
        )
    if cfg.num_train_epochs == 0:
        _check_without_training(cfg, given, distilling)
    if _exports(cfg) and not cfg.save_model:
        raise ConfigError("export: works on the saved model; set save_model=true, or export=none")
    int8_backends = build(cfg.export).int8_backends  # unknown backend names are refused here too
    if int8_backends and not get_object(cfg.quant._target_).converts_compacted:
        raise ConfigError(f"export.backends: {', '.join(int8_backends)} runs the int8 model of the compacted one, "
                          "which quant=dynamic or quant=static makes")
    if cfg.pruning_config is not None and not cfg.do_prune:
        raise ConfigError(f"pruning_config={given['pruning_config']}: has no effect with do_prune=false")
    oneshot = get_object(cfg.scheduler._target_).one_shot
    if cfg.do_prune and oneshot and cfg.pruning_frequency is not None:
        raise ConfigError(f"pruning_frequency={given['pruning_frequency']}: has no effect with scheduler=oneshot (one update)")
    if cfg.do_prune and oneshot and cfg.cooldown_epochs:
        raise ConfigError(
            f"cooldown_epochs={given['cooldown_epochs']}: has no effect with scheduler=oneshot "
            "(all training after the one update is at the final masks)"
        )


def _check_without_training(cfg: DictConfig, given: dict, distilling: bool) -> None:
    """num_train_epochs=0 prunes once (after the gradient passes its criterion needs) and
    evaluates: what only training reads would do nothing."""
    why = "num_train_epochs=0 (no training: prune once, then evaluate)"
    if distilling:
        raise ConfigError(f"distill: a distiller has no effect with {why}; use distill=none")
    if get_object(cfg.quant._target_).trains:
        raise ConfigError(f"quant: quantization-aware training has no effect with {why}; use quant=dynamic or quant=static")
    for key in ("checkpointing_steps", "resume_from_checkpoint"):
        if cfg[key] is not None:
            raise ConfigError(f"{key}={given[key]}: has no effect with {why}")
    for key in ("sparsity_warm_epochs", "cooldown_epochs"):
        if cfg[key]:
            raise ConfigError(f"{key}={given[key]}: has no effect with {why}")
    if cfg.gradient_accumulation_steps != 1:
        raise ConfigError(f"gradient_accumulation_steps={given['gradient_accumulation_steps']}: has no effect with {why}")


def _exports(cfg) -> bool:
    """Whether the export option does anything after saving (its class declares ``enabled``)."""
    return bool(get_object(cfg.export._target_).enabled)
