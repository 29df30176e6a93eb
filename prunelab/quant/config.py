"""Checks on what a caller asks for; each failure is a ``ConfigError`` (a ``ValueError``) whose
message starts with the offending key, like the pruning engine's."""
from __future__ import annotations

import re
from collections.abc import Sequence

from prunelab.errors import ConfigError

APPROACHES = ("dynamic", "static", "qat")
# Batch keys a quantized model ignores: training targets (the int8 model returns no loss).
TARGET_KEYS = ("labels", "start_positions", "end_positions")


def check_approach(approach: object) -> str:
    if approach not in APPROACHES:
        raise ConfigError(
            f"approach={approach!r}: the quantization backend (OpenVINO, CPU) can do "
            f"{', '.join(APPROACHES)}; 'none' means: do not call quantize()"
        )
    return approach


def check_num_calibration_samples(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"num_calibration_samples={value!r}: must be a positive number of examples (or null: every calibration batch)"
        )
    return value


def check_regexes(key: str, value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{key}={value!r}: must be a list of regular expressions (strings)")
    for item in items:
        try:
            re.compile(item)
        except re.error as error:
            raise ConfigError(f"{key} entry {item!r} is not a valid regular expression: {error}") from None
    return tuple(items)


def check_num_threads(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"num_threads={value!r}: must be a positive number of CPU threads (or null: OpenVINO's default)")
    return value


def check_flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: must be true or false")
    return value
