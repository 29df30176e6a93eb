"""Which eval-set examples a saved model has trained on, and the refusal to score it on them.

SQuAD's ``split_dev_by_article`` trains on part of the dev set and holds out articles chosen from
the seed. A pruning run with another seed than its start point's would then evaluate on articles
its start model (or teacher) trained on, and report inflated scores without a sign. So a model
trained on examples carved out of an eval set carries their ids (``trained_examples.json``, beside
its weights, together with its own start point's), and a run whose eval examples overlap them is
refused before training.
"""
from __future__ import annotations

import json
from pathlib import Path

from prunelab.errors import ConfigError
from prunelab.tasks.base import ExampleIds

FILE = "trained_examples.json"


def read(directory: str | Path) -> list[ExampleIds]:
    """The records a model directory carries; none for hub ids and models saved without one."""
    path = Path(directory) / FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
        return [ExampleIds(e["source"], tuple(e["ids"]), e.get("how", "")) for e in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: not a trained-examples record ({type(error).__name__}: {error})") from None


def check(start_points: dict[str, str], evaluated: ExampleIds | None) -> None:
    """Refuse, in one line, when a start point (``{config key: directory}``) trained on any eval example."""
    if evaluated is None:
        return
    wanted = set(evaluated.ids)
    for key, directory in start_points.items():
        for record in read(directory):
            if record.source != evaluated.source:
                continue
            seen = wanted.intersection(record.ids)
            if seen:
                raise ConfigError(
                    f"{key}={directory}: trained on {len(seen)} of this run's {len(wanted)} eval examples "
                    f"({evaluated.source}, carved with {record.how or 'unrecorded settings'}); evaluate on "
                    f"examples it never saw: use the same settings as the run that made it"
                )


def carried(start_points: dict[str, str], own: ExampleIds | None) -> str | None:
    """The record a model trained in this run carries: its start points' and its own, or None."""
    records = [record for directory in start_points.values() for record in read(directory)]
    if own is not None:
        records.append(own)
    records = list(dict.fromkeys(records))  # a run carved like its start point repeats its record
    if not records:
        return None
    return json.dumps([{"source": r.source, "how": r.how, "ids": list(r.ids)} for r in records])
