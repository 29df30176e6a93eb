"""Validate an INC-style pruning config (dict, DictConfig or ``PruningConfig``) into typed groups.

The keys and their meanings are INC 2.x's ``WeightPruningConfig``. Global keys are defaults for
every entry of ``pruning_configs`` (a list of groups; a key set in a group overrides the global
one); without ``pruning_configs`` there is one group made of the global keys. Unlike INC, an
unknown key or a bad value raises ``ValueError`` naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prunelab.sparsity.criteria import CRITERIA, DEFAULT_NUM_GRADS
from prunelab.sparsity.ops import OP_KINDS, OP_TYPE_ALIASES
from prunelab.sparsity.patterns import NInMPattern, Pattern, parse_pattern
from prunelab.sparsity.schedules import DECAYS

LOCK = "pattern_lock"  # the pruning_type that scores nothing: it keeps the zeros a model has
PRUNING_TYPES = (*CRITERIA, *(f"{c}_progressive" for c in CRITERIA), LOCK)


def locks_existing_zeros(pruning_type: str | None) -> bool:
    """Whether a pruning_type only keeps the zeros the model has (no criterion, no target), so
    callers ask the engine rather than compare names."""
    return pruning_type == LOCK
SCOPES = ("global", "local")
OP_TYPES = (*OP_KINDS, *OP_TYPE_ALIASES)
PROGRESSIVE_STEPS = 4  # INC's fixed number of sub-steps over which a progressive mask is blended in


@dataclass(frozen=True)
class ObsSettings:
    """``pruning_type: obs`` (the Optimal BERT Surgeon): the empirical Fisher and its use."""

    block_size: int | None = None  # coordinates per Fisher block, a multiple of the pattern's unit; None: 50 rounded up to one
    num_grads: int | None = None  # gradients per Fisher estimate; None: min(1024, the steps before each update)
    damp: float = 1e-7  # Fisher dampening lambda (F = lambda I + mean g g^T)
    update_weights: bool = True  # move the kept weights by the OBS correction at every mask update
    num_recomputations: int = 1  # steps an update is split into, the Fisher re-estimated before each

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SparseGptSettings:
    """``pruning_type: sparsegpt`` (Frantar & Alistarh 2023): the layer-wise OBS solver."""

    block_size: int = 128  # columns per lazy block; the mask is chosen per block (N:M: a multiple of M)
    damp: float = 0.01  # dampening relative to the mean diagonal: H = 2XX^T + damp * mean(diag) * I

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Training examples whose inputs calibrate wanda and sparsegpt when calibration_samples is unset
# (as many as quant.num_calibration_samples).
DEFAULT_CALIBRATION_SAMPLES = 256


@dataclass(frozen=True)
class GroupConfig:
    """One group of ops pruned together; field defaults are INC's (except op types, see below)."""

    target_sparsity: float = 0.9  # fraction of the group's weights zeroed by the last update
    pruning_type: str = "snip_momentum"  # criterion, optionally "_progressive"; or "pattern_lock"
    pattern: str = "4x1"  # unit of pruning: NxM block, 1xchannel, channelx1 or N:M
    op_names: tuple[str, ...] = ()  # regexes searched in module names; empty = every op
    # Seed-example defaults: keep the task head and the embeddings dense (INC auto-excluded the
    # last Linear instead).
    excluded_op_names: tuple[str, ...] = ("classifier", "pooler", ".*embeddings.*")
    pruning_op_types: tuple[str, ...] = ("Linear",)  # module kinds; INC's default also had "Conv"
    start_step: int = 0  # optimizer step of the first mask update
    end_step: int = 0  # last optimizer step a mask update may happen; == start_step: one-shot
    pruning_frequency: int = 1  # optimizer steps between mask updates
    pruning_scope: str = "global"  # one threshold across the group's ops, or one per op
    sparsity_decay_type: str = "exp"  # how the target grows between start_step and end_step
    min_sparsity_ratio_per_op: float = 0.0  # global scope: every op ends at least this sparse
    max_sparsity_ratio_per_op: float = 0.98  # global scope: no op is pruned beyond this
    # pattern "head": heads per attention block; None reads model.config.num_attention_heads
    num_attention_heads: int | None = None
    obs: ObsSettings | None = None  # pruning_type obs: its settings (None: the defaults)
    initial_sparsity: float = 0.0  # sparsity of the first update of an iterative schedule (oBERT: 0.7)
    calibration_samples: int | None = None  # wanda, sparsegpt: examples whose inputs are gathered (None: 256)
    sparsegpt: SparseGptSettings | None = None  # pruning_type sparsegpt: its settings (None: the defaults)
    # wanda, sparsegpt: prune one layer of the model's stack at a time, each calibrated on the outputs
    # of the layers pruned before it (the papers' order); false/None: every op from the dense inputs
    sequential: bool | None = None

    @property
    def criterion(self) -> str:
        """The scoring rule without the ``_progressive`` suffix (``pattern_lock`` as is)."""
        return self.pruning_type.removesuffix("_progressive")

    @property
    def locks_existing_zeros(self) -> bool:
        return locks_existing_zeros(self.pruning_type)

    @property
    def progressive(self) -> bool:
        return self.pruning_type.endswith("_progressive")

    @property
    def pattern_object(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def obs_settings(self) -> ObsSettings:
        return self.obs or ObsSettings()

    @property
    def sparsegpt_settings(self) -> SparseGptSettings:
        return self.sparsegpt or SparseGptSettings()

    @property
    def calibration_samples_or_default(self) -> int:
        return self.calibration_samples or DEFAULT_CALIBRATION_SAMPLES

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


# prunelab's own keys beyond INC 2.x's (an INC recipe file has none of them).
EXTENSION_KEYS = ("num_attention_heads", "obs", "initial_sparsity", "calibration_samples", "sparsegpt", "sequential")
KEYS = tuple(f.name for f in dataclasses.fields(GroupConfig) if f.name not in EXTENSION_KEYS)  # INC's keys
ALL_KEYS = (*KEYS, *EXTENSION_KEYS)


@dataclass(frozen=True)
class PruningConfig:
    """A validated config: one ``GroupConfig`` per entry of ``pruning_configs``."""

    groups: tuple[GroupConfig, ...]

    @classmethod
    def from_dict(cls, config: Mapping) -> "PruningConfig":
        return parse_config(config)

    def to_dict(self) -> dict:
        """INC-style dict that ``from_dict`` turns back into an equal config."""
        return {"pruning_configs": [group.to_dict() for group in self.groups]}


def parse_config(config: object) -> PruningConfig:
    """Validate ``config`` (mapping, OmegaConf DictConfig, ``PruningConfig`` or ``GroupConfig``)."""
    if isinstance(config, PruningConfig):
        return config
    if isinstance(config, GroupConfig):
        return PruningConfig((config,))
    if not isinstance(config, Mapping):
        raise ValueError(
            f"pruning config must be a dict, an OmegaConf DictConfig or a PruningConfig, got {type(config).__name__}"
        )
    global_keys = {str(k): v for k, v in config.items() if k != "pruning_configs"}
    _check_keys(global_keys, "")
    groups = config.get("pruning_configs") or [{}]
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ValueError(f"pruning_configs={groups!r} must be a list of dicts (one per group of ops)")
    group_keys = []
    for index, group in enumerate(groups):
        where = f"pruning_configs[{index}]."
        if not isinstance(group, Mapping):
            raise ValueError(f"{where[:-1]}={group!r} must be a dict of pruning keys")
        keys = {str(k): v for k, v in group.items()}
        if "pruning_configs" in keys:
            raise ValueError(f"{where}pruning_configs: groups cannot nest; list every group at the top level")
        _check_keys(keys, where)
        group_keys.append(keys)
    parsed = []
    for index, keys in enumerate(group_keys):
        merged = {**global_keys, **keys}
        parsed.append(_build_group(merged, {key: f"pruning_configs[{index}]." if key in keys else "" for key in merged}))
    return PruningConfig(tuple(parsed))


def _check_keys(keys: Mapping, where: str) -> None:
    unknown = sorted(set(keys) - set(ALL_KEYS))
    if unknown:
        raise ValueError(f"unknown pruning key {where}{unknown[0]!r}; allowed keys: {', '.join(ALL_KEYS)}, pruning_configs")


def _build_group(values: dict, where: dict) -> GroupConfig:
    def name(key: str) -> str:
        return where.get(key, "") + key

    fields = {}
    for key, value in values.items():
        fields[key] = _VALIDATORS[key](name(key), value)
    group = GroupConfig(**fields)
    _check_group(group, name)
    return group


def _float_in(low: float, high: float, high_open: bool = False):
    def check(key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}={value!r} must be a number in [{low}, {high}{')' if high_open else ']'}")
        value = float(value)
        if not (low <= value < high if high_open else low <= value <= high):
            raise ValueError(f"{key}={value!r} is out of range: allowed [{low}, {high}{')' if high_open else ']'}")
        return value

    return check


def _int_at_least(low: int):
    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}={value!r} must be an integer >= {low}")
        if value < low:
            raise ValueError(f"{key}={value!r} is out of range: allowed integers >= {low}")
        return int(value)

    return check


def _choice(allowed: tuple[str, ...]):
    def check(key: str, value: object) -> str:
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
        return value

    return check


def _regex_list(key: str, value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"{key}={value!r} must be a list of regular expressions (strings)")
    for item in items:
        try:
            re.compile(item)
        except re.error as error:
            raise ValueError(f"{key} entry {item!r} is not a valid regular expression: {error}") from None
    return tuple(items)


def _op_types(key: str, value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items:
        raise ValueError(f"{key}={value!r} must be a non-empty list drawn from: {', '.join(OP_TYPES)}")
    for item in items:
        if item not in OP_TYPES:
            raise ValueError(f"{key} entry {item!r} is not allowed; choose from: {', '.join(OP_TYPES)}")
    return tuple(items)


def _pattern(key: str, value: object) -> str:
    return parse_pattern(value, key).name


def _optional_count(key: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r} must be a positive integer or null (null: read model.config)")
    return int(value)


def _positive_number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key}={value!r} must be a number > 0")
    return float(value)


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} must be true or false")
    return value


def _or_null(check):
    return lambda key, value: None if value is None else check(key, value)


def _settings(cls, label: str, checks: dict):
    """A validator for a criterion's own mapping of settings (``obs: {...}``) into ``cls``."""
    names = tuple(f.name for f in dataclasses.fields(cls))

    def check(key: str, value: object):
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}={value!r} must be a mapping of {label} settings: {', '.join(names)}")
        unknown = sorted(set(map(str, value)) - set(names))
        if unknown:
            raise ValueError(f"unknown key {key}.{unknown[0]}; allowed: {', '.join(names)}")
        return cls(**{name: checks[name](f"{key}.{name}", item) for name, item in value.items()})

    return check


_obs = _settings(ObsSettings, "obs", {
    "block_size": _or_null(_int_at_least(1)), "num_grads": _or_null(_int_at_least(1)), "damp": _positive_number,
    "update_weights": _flag, "num_recomputations": _int_at_least(1),
})
_sparsegpt = _settings(SparseGptSettings, "sparsegpt", {"block_size": _int_at_least(1), "damp": _positive_number})


_VALIDATORS = {
    "target_sparsity": _float_in(0.0, 1.0, high_open=True),
    "pruning_type": _choice(PRUNING_TYPES),
    "pattern": _pattern,
    "op_names": _regex_list,
    "excluded_op_names": _regex_list,
    "pruning_op_types": _op_types,
    "start_step": _int_at_least(0),
    "end_step": _int_at_least(0),
    "pruning_frequency": _int_at_least(1),
    "pruning_scope": _choice(SCOPES),
    "sparsity_decay_type": _choice(tuple(DECAYS)),
    "min_sparsity_ratio_per_op": _float_in(0.0, 1.0),
    "max_sparsity_ratio_per_op": _float_in(0.0, 1.0),
    "num_attention_heads": _optional_count,
    "obs": _obs,
    "initial_sparsity": _float_in(0.0, 1.0, high_open=True),
    "calibration_samples": _or_null(_int_at_least(1)),
    "sparsegpt": _sparsegpt,
    "sequential": _or_null(_flag),
}


def _check_group(group: GroupConfig, name) -> None:
    """Checks that involve several keys of one group."""
    if group.end_step < group.start_step:
        raise ValueError(f"{name('end_step')}={group.end_step} is before {name('start_step')}={group.start_step}")
    if group.obs is not None and group.criterion != "obs":
        raise ValueError(f"{name('obs')}: has no effect with {name('pruning_type')}={group.pruning_type!r}; drop it or use obs")
    if group.sparsegpt is not None and group.criterion != "sparsegpt":
        raise ValueError(
            f"{name('sparsegpt')}: has no effect with {name('pruning_type')}={group.pruning_type!r}; drop it or use sparsegpt"
        )
    calibrated = group.pruning_type != "pattern_lock" and CRITERIA[group.criterion].calibrated
    if group.calibration_samples is not None and not calibrated:
        raise ValueError(
            f"{name('calibration_samples')}: has no effect with {name('pruning_type')}={group.pruning_type!r} "
            "(only wanda and sparsegpt read calibration inputs); drop it"
        )
    if group.sequential is not None and not calibrated:
        raise ValueError(
            f"{name('sequential')}: has no effect with {name('pruning_type')}={group.pruning_type!r} "
            "(only wanda and sparsegpt calibrate layer by layer); drop it"
        )
    if group.pruning_type == "pattern_lock":
        return  # locks the existing zeros; target, ratios and schedule do not apply
    if group.min_sparsity_ratio_per_op > group.max_sparsity_ratio_per_op:
        raise ValueError(
            f"{name('min_sparsity_ratio_per_op')}={group.min_sparsity_ratio_per_op} exceeds "
            f"{name('max_sparsity_ratio_per_op')}={group.max_sparsity_ratio_per_op}"
        )
    if not group.min_sparsity_ratio_per_op <= group.target_sparsity <= group.max_sparsity_ratio_per_op:
        raise ValueError(
            f"{name('target_sparsity')}={group.target_sparsity} must lie between {name('min_sparsity_ratio_per_op')}="
            f"{group.min_sparsity_ratio_per_op} and {name('max_sparsity_ratio_per_op')}={group.max_sparsity_ratio_per_op}"
        )
    if group.initial_sparsity > group.target_sparsity:
        raise ValueError(
            f"{name('initial_sparsity')}={group.initial_sparsity} exceeds {name('target_sparsity')}={group.target_sparsity}"
        )
    pattern = group.pattern_object
    if isinstance(pattern, NInMPattern) and group.target_sparsity > pattern.max_fraction:
        raise ValueError(
            f"{name('target_sparsity')}={group.target_sparsity} is above {pattern.n}/{pattern.m}="
            f"{pattern.max_fraction:g}, the most pattern {pattern.name!r} can prune"
        )
    if group.target_sparsity == 0:
        return  # nothing will be pruned: the schedule checks below do not apply
    one_shot = (group.end_step - group.start_step) < group.pruning_frequency
    if CRITERIA[group.criterion].needs_grad and (one_shot or group.initial_sparsity > 0) and group.start_step == 0:
        what = "a one-shot prune" if one_shot else f"a first update to {name('initial_sparsity')}={group.initial_sparsity}"
        raise ValueError(
            f"{name('pruning_type')}={group.pruning_type!r} scores weights with gradients of earlier steps, "
            f"so {what} needs {name('start_step')} >= 1 (got start_step=0); "
            "use pruning_type='magnitude' to prune before training"
        )
    if CRITERIA[group.criterion].second_order:
        _check_obs(group, name, one_shot)
    if calibrated:
        _check_calibrated(group, name, one_shot)
    if group.progressive and (one_shot or group.pruning_frequency < 2):
        raise ValueError(
            f"{name('pruning_type')}={group.pruning_type!r} blends each new mask in over "
            f"min({PROGRESSIVE_STEPS}, pruning_frequency) steps between updates, so it needs an iterative "
            f"schedule with {name('pruning_frequency')} >= 2 and end_step - start_step >= pruning_frequency "
            f"(got pruning_frequency={group.pruning_frequency}, start_step={group.start_step}, end_step={group.end_step})"
        )


def calibration_steps(config: PruningConfig, examples_per_step: int = 1) -> int:
    """Steps a prune without training needs before its one-shot update (the largest over the
    groups: 0 for magnitude, 1 for gradient criteria, num_grads x num_recomputations for obs,
    ceil(calibration_samples / examples_per_step) forward passes for wanda and sparsegpt);
    ``examples_per_step``: training examples per step over all processes."""
    return max(
        (CRITERIA[g.criterion].calibration_steps(g, examples_per_step) for g in config.groups if g.pruning_type != "pattern_lock"),
        default=0,
    )


def calibrated(config: PruningConfig) -> bool:
    """Whether a group prunes once from calibration inputs (wanda, sparsegpt): a training run then
    prunes before training, after its calibration passes."""
    return any(CRITERIA[g.criterion].calibrated for g in config.groups if g.pruning_type != "pattern_lock")


def obs_window(group: GroupConfig) -> tuple[int, int]:
    """``(num_grads, num_recomputations)`` of an obs group: the gradients per Fisher estimate
    (``num_grads``, or as many as fit, at most DEFAULT_NUM_GRADS) and the sub-updates per update.
    The R windows of num_grads steps lie between two updates (one-shot: before ``start_step``)."""
    settings = group.obs_settings
    count = settings.num_grads or min(DEFAULT_NUM_GRADS, _steps_before_updates(group) // settings.num_recomputations)
    return count, settings.num_recomputations


def _steps_before_updates(group: GroupConfig) -> int:
    """The fewest optimizer steps before a pruning update since the previous one (or step 0)."""
    if (group.end_step - group.start_step) < group.pruning_frequency:
        return group.start_step
    if group.initial_sparsity > 0:  # update 0 prunes too
        return min(group.start_step, group.pruning_frequency)
    return group.pruning_frequency


def _check_obs(group: GroupConfig, name, one_shot: bool) -> None:
    if group.pattern_object.coupled:
        raise ValueError(
            f"{name('pruning_type')}={group.pruning_type!r} does not prune coupled units ({name('pattern')}="
            f"{group.pattern!r}): its Fisher blocks hold weights of one module; use a first-order criterion"
        )
    if group.progressive:
        raise ValueError(
            f"{name('pruning_type')}={group.pruning_type!r}: obs moves the kept weights when it prunes, which a "
            "progressive blend cannot spread over steps; use pruning_type='obs'"
        )
    count, recomputations = obs_window(group)
    gap = _steps_before_updates(group)
    if count < 1 or count * recomputations > gap:
        where = f"{name('pruning_frequency')}={group.pruning_frequency}"
        later = f"a larger {name('pruning_frequency')}"
        if gap == group.start_step:
            where = f"{name('start_step')}={group.start_step} (" + ("one-shot)" if one_shot else "the first update prunes)")
            later = f"a later {name('start_step')}"
        given = "" if group.obs_settings.num_grads else f" (unset: {gap} steps // num_recomputations)"
        raise ValueError(
            f"{name('obs')}: num_grads={count}{given} x num_recomputations={recomputations} gradient steps must fit "
            f"before each mask update, but {where} leaves {gap}; lower obs.num_grads or obs.num_recomputations, "
            f"or give {later}"
        )


def _check_calibrated(group: GroupConfig, name, one_shot: bool) -> None:
    """wanda and sparsegpt: one update, per output row (1x1) or per group of M (N:M), of ops whose
    inputs are ``[..., in]`` (Linear, GPT-2 Conv1D)."""
    kind = f"{name('pruning_type')}={group.pruning_type!r}"
    pattern = group.pattern_object
    if group.progressive:
        raise ValueError(f"{kind}: prunes once from calibration inputs, which a progressive blend cannot spread; use {group.criterion!r}")
    if not one_shot or group.initial_sparsity > 0:
        raise ValueError(
            f"{kind} prunes once from calibration inputs: it needs a one-shot schedule ({name('end_step')} == "
            f"{name('start_step')}), got start_step={group.start_step}, end_step={group.end_step}"
        )
    if group.start_step == 0:
        raise ValueError(
            f"{kind} gathers its ops' inputs in the forward passes before its update, so {name('start_step')} "
            "must be >= 1 (the number of calibration steps; got 0)"
        )
    if not (isinstance(pattern, NInMPattern) or pattern.name == "1x1"):
        raise ValueError(
            f"{name('pattern')}={group.pattern!r}: {kind} chooses weights within each output row (1x1) or "
            "within each group of M (N:M, e.g. 2:4); use one of those"
        )
    if isinstance(pattern, NInMPattern) and group.target_sparsity != pattern.max_fraction:
        raise ValueError(
            f"{name('target_sparsity')}={group.target_sparsity}: {kind} prunes N of every group of M, so with "
            f"{name('pattern')}={pattern.name!r} the target is {pattern.n}/{pattern.m}={pattern.max_fraction:g}"
        )
    unsupported = [t for t in group.pruning_op_types if t not in ("Linear", "Conv1D")]
    if unsupported:
        raise ValueError(
            f"{name('pruning_op_types')}={list(group.pruning_op_types)}: {kind} prunes Linear and Conv1D ops "
            f"(inputs [..., in]), not {unsupported[0]}"
        )
    CRITERIA[group.criterion].check_settings(group, name)


def _plain(value: object) -> object:
    if isinstance(value, (ObsSettings, SparseGptSettings)):
        return value.to_dict()
    return list(value) if isinstance(value, tuple) else value
