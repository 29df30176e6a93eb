"""``prunelab [overrides]`` (or ``python -m prunelab``): compose the configs with Hydra and run one
job, or a sweep with ``-m``.

The configs ship inside the package as ``prunelab.conf`` (the repository's ``conf/``); add your own
config folders with ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``.

What the user can fix ends the command with one line on stderr and no traceback:

- a bad option or override, an unknown key or group option, a bad config value:
  ``prunelab: error: <what>: <why>``, exit code 2;
- a sweep whose override every job would ignore (``-m do_prune=false pattern=4x1,2:4``): the same
  line before any job starts, exit code 2;
- SIGTERM / SIGINT: ``prunelab: <message>``, exit code 128 + signal number;
- a sweep: each failing job prints ``prunelab: error: job N (<its overrides>): ...`` and the sweep
  goes on; at the end ``prunelab: K of M jobs failed ...``, exit code 2.

Other exceptions (bugs) keep their traceback. With ``HYDRA_FULL_ERROR=1`` Hydra's composition
errors come with their full traceback too.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
    SearchPathException,
)
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from prunelab.app import sweep_failures
from prunelab.app.config import register_resolvers
from prunelab.errors import ConfigError, RunInterrupted, SweepRefused

register_resolvers()  # conf/config.yaml's hydra.run.dir uses one, and Hydra resolves it before any job

EXIT_CONFIG = 2
# What Hydra raises before any job runs, when it cannot put the config together.
COMPOSITION_ERRORS = (ConfigCompositionException, OverrideParseException, SearchPathException)
MULTIRUN_FLAGS = ("-m", "--multirun")
# Module names (comma-separated) whose callables a command-line _target_ may name besides prunelab's.
TRUSTED_TARGETS_ENV = "PRUNELAB_TRUSTED_TARGETS"
GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
_job_started = False  # set once Hydra hands over: errors after that are the run's own


@hydra.main(version_base="1.3", config_path="pkg://prunelab.conf", config_name="config")
def _job(cfg: DictConfig) -> float:
    """One Hydra job: ``run(cfg)``, its main metric returned for sweepers that optimise it."""
    global _job_started
    _job_started = True
    from prunelab.app.run import run  # imported here so that config errors are told without the wait

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        try:
            metrics = run(cfg)
        except ConfigError as error:
            # Raised past Hydra's job wrapper, which would add a line of its own.
            _fail(f"prunelab: error: {error}", EXIT_CONFIG)
        return next(iter(metrics.values()))  # run() puts the main metric first
    try:
        metrics = run(cfg)
    except ConfigError as error:
        print(f"prunelab: error: {_job_name()}: {error}", file=sys.stderr, flush=True)
    except Exception:
        # A bug: its traceback, then the sweep goes on (the job's summary.json says failed).
        print(f"prunelab: {_job_name()} failed:", file=sys.stderr, flush=True)
        traceback.print_exc()
    else:
        return next(iter(metrics.values()))
    return math.nan  # failed: no metric (an optimising sweeper records a failed trial)


def main() -> None:
    """Entry point of ``prunelab`` and ``python -m prunelab``."""
    users_setting = os.environ.get("HYDRA_FULL_ERROR")
    full_error = users_setting == "1"
    # Hydra then lets its exceptions through instead of printing them itself, so that they can be
    # told in one line here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # Hydra's argparse takes no option between overrides: `prunelab a=1 -m b=1,2` would fail.
    sys.argv[1:] = sorted(sys.argv[1:], key=lambda arg: arg not in MULTIRUN_FLAGS)
    _check_command_line(sys.argv[1:])
    try:
        _job()
    except RunInterrupted as stop:
        _fail(f"prunelab: {stop}", 128 + stop.signum)
    except KeyboardInterrupt:
        _fail("prunelab: interrupted", 130)
    except SweepRefused as error:
        _fail(f"prunelab: error: {error}", EXIT_CONFIG)
    except COMPOSITION_ERRORS as error:
        if full_error:
            raise
        _fail(f"prunelab: error: {hydra_error_line(error, sys.argv[1:])}", EXIT_CONFIG)
    except OSError as error:
        if full_error or _job_started:
            raise
        # Hydra creates the run (or sweep) directory and its log file before any job starts.
        _fail(f"prunelab: error: hydra.run.dir / hydra.sweep.dir: cannot write {error.filename} "
              f"({error.strerror})", EXIT_CONFIG)
    finally:
        if users_setting is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = users_setting
    outcome = sweep_failures.take_outcome()
    if outcome is not None and outcome.line:
        _fail(outcome.line, EXIT_CONFIG)


def _check_command_line(argv: list[str]) -> None:
    """Hydra's own parser, run first so that an unknown option is one line (Hydra prints its usage)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.error = lambda message: _fail(f"prunelab: error: {message} (see prunelab --help)", EXIT_CONFIG)
    line = untrusted_target(parser.parse_args(argv).overrides, os.environ.get(TRUSTED_TARGETS_ENV, ""))
    if line is not None:
        _fail(f"prunelab: error: {line}", EXIT_CONFIG)


def untrusted_target(overrides: list[str], trusted: str) -> str | None:
    """The refusal of the first ``_target_`` given on the command line (also inside a dict value,
    and Hydra's own) that names code outside prunelab and the comma-separated module names in
    ``trusted``: a ``_target_`` is imported and called, so the command line must not name just
    anything (config files are code and are trusted as such). None if all are prunelab's."""
    modules = ["prunelab", *(name.strip().rstrip(".") for name in trusted.split(",") if name.strip())]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        return None  # Hydra tells it, in one line
    for override in parsed:
        value = override.value()
        for key, target in _targets(override.key_or_group, value.list if isinstance(value, ChoiceSweep) else [value]):
            if not any(str(target) == module or str(target).startswith(f"{module}.") for module in modules):
                return (f"{key}={target}: a _target_ on the command line must name prunelab's own code; to run "
                        f"your own, set {TRUSTED_TARGETS_ENV}={str(target).split('.')[0]} (comma-separated module names)")
    return None


def _targets(key: str, values: list):
    """(key, value) of every ``_target_`` in an override's values, nested dicts and lists included."""
    for value in values:
        if key.rpartition(".")[2] == "_target_" and value is not None:
            yield key, value
        if isinstance(value, dict):
            for name, item in value.items():
                yield from _targets(f"{key}.{name}", [item])
        elif isinstance(value, list):
            yield from _targets(key, value)


def hydra_error_line(error: Exception, argv: list[str]) -> str:
    """What Hydra could not compose, in one line naming the override (no ``prunelab: error:``).

    ``argv``: the command line (overrides and Hydra's options), to quote the override as typed.
    """
    args = _parse_args(argv)
    overrides = list(args.overrides)
    if isinstance(error, OverrideParseException):
        return _bad_syntax(error)
    if isinstance(error, MissingConfigException):
        return _missing_config(error, overrides, args.config_name or "config")
    text = str(error)
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        typed = _typed(overrides, key) or key
        cause = error.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            hydra_key = key.split(".")[0] == "hydra"
            siblings = list(cause.parent_node.keys()) if isinstance(cause.parent_node, DictConfig) else []
            close = difflib.get_close_matches(str(cause.key), [k for k in siblings if k != "hydra"], n=1)
            prefix = str(cause.full_key).rpartition(".")[0]
            hint = f"did you mean {prefix + '.' if prefix else ''}{close[0]}? " if close else ""
            where = "prunelab --cfg hydra" if hydra_key else "conf/config.yaml, or prunelab --cfg job"
            return f"{typed}: no such key in {'Hydra' if hydra_key else 'the'} config ({hint}see {where})"
        if cause is not None:
            return f"{typed}: {_one_line(str(cause))}"
    return _one_line(text)


def _fail(line: str, code: int) -> None:
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(code)


def _job_name() -> str:
    """``job 3 (pattern=2:4 seed=1)``: the job's number and overrides, as Hydra numbers its dirs."""
    hydra_cfg = HydraConfig.get()
    overrides = " ".join(o.replace("\\:", ":") for o in hydra_cfg.overrides.task)  # Hydra escapes 2:4 as 2\:4
    return f"job {hydra_cfg.job.num} ({overrides})"


def _parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line as Hydra's own parser reads it (it accepted it before Hydra raised)."""
    from hydra._internal.utils import get_args_parser

    try:
        return get_args_parser().parse_args(argv)
    except SystemExit:
        return argparse.Namespace(overrides=[arg for arg in argv if not arg.startswith("-")], config_name=None)


def _typed(overrides: list[str], key: str) -> str | None:
    """The override as typed whose key is ``key`` (``foo=1`` for foo, ``+foo=1``, ``~foo``...)."""
    for override in overrides:
        typed_key = override.split("=", 1)[0].lstrip("+~")
        if typed_key == key:
            return override
    return None


def _one_line(text: str) -> str:
    """Hydra's message without its search-path listing and links, on one line."""
    text = text.split("\nConfig search path:")[0]
    lines = [line.strip() for line in text.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith("See https://"))


def _bad_syntax(error: OverrideParseException) -> str:
    details = [line.strip() for line in error.message.splitlines()]
    details = [line for line in details
               if line and not line.startswith(("Error parsing override", "See https://")) and line != "^"]
    detail = details[0] if details else "cannot parse it"
    if detail.startswith("LexerNoViableAltException"):
        detail = "a character the override grammar does not allow here (quote the value)"
    elif detail.startswith("missing EQUAL"):
        detail = "expected key=value"
    return f"{error.override}: bad override syntax: {detail} (see {GRAMMAR})"


def _missing_config(error: MissingConfigException, overrides: list[str], primary: str) -> str:
    text = str(error)
    if error.missing_cfg_file is None:  # the package's own configs are missing
        return f"{_one_line(text)} (reinstall prunelab, e.g. pip install -e . in the repository: conf/ is its package prunelab.conf)"
    if text.startswith("Cannot find primary config"):
        return _one_line(text)
    group, _, option = error.missing_cfg_file.rpartition("/")
    if not group:
        return _one_line(text)
    where = re.match(r"In '([^']+)': ", text)
    parent = where.group(1) if where else None
    typed = f"{group}={option}"
    if not any(re.match(rf"[+~]*{re.escape(group)}(@[^=]*)?=", o) for o in overrides):
        # Not on the command line: a config file chose it (Hydra names the primary config for an
        # `override /group:` in a preset).
        typed += f" (chosen in {parent})" if parent and parent != primary else " (chosen in a config file)"
    if error.options:
        return f"{typed}: no such option in group '{group}'; available: {', '.join(error.options)}"
    return f"{typed}: no config group '{group}' (groups are the folders of conf/ and of --config-dir)"


if __name__ == "__main__":
    main()
