"""SQuAD examples from the hub or from the official json files, and the held-out-article split.

Every loader returns a ``datasets.Dataset`` with the hub's ``squad`` schema: ``id``, ``title``,
``context``, ``question``, ``answers`` = ``{"text": [...], "answer_start": [...]}`` (both lists
empty for an unanswerable v2 question).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from prunelab.errors import ConfigError

VERSIONS = {"1.1": "squad", "2.0": "squad_v2"}  # official version -> hub dataset name


@dataclass
class SquadSplits:
    train: datasets.Dataset
    eval: datasets.Dataset
    notes: list[str] = field(default_factory=list)


def local_files(data_root: str | Path, version: str) -> tuple[Path, Path]:
    """The official file names under ``<data_root>/squad/``: (train, dev)."""
    folder = Path(data_root) / "squad"
    return folder / f"train-v{version}.json", folder / f"dev-v{version}.json"


def read_squad_json(path: str | Path) -> datasets.Dataset:
    """Flatten an official SQuAD json file (articles > paragraphs > qas) into one row per question."""
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)["data"]
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article["title"])
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append(
                    {
                        "text": [a["text"] for a in qa["answers"]],
                        "answer_start": [int(a["answer_start"]) for a in qa["answers"]],
                    }
                )
    return datasets.Dataset.from_dict(rows)


def load_squad(version: str, data_root: str | Path | None, split_dev_by_article: int | None, seed: int) -> SquadSplits:
    """Train and eval examples; with ``split_dev_by_article=n`` both come from the dev set.

    data_root None -> the hub (``squad`` / ``squad_v2``); otherwise the official json files.
    """
    if data_root is None:
        train, dev = _from_hub(version)
    else:
        train_path, dev_path = local_files(data_root, version)
        if not dev_path.is_file():
            raise ConfigError(
                f"SQuAD v{version} dev file not found: {dev_path} (data_root={data_root!r}). "
                f"Expected the official {dev_path.name} under <data_root>/squad/."
            )
        dev = read_squad_json(dev_path)
        train = read_squad_json(train_path) if train_path.is_file() else None
    if split_dev_by_article is not None:
        return split_by_article(dev, split_dev_by_article, seed)
    if train is None:
        raise ConfigError(
            f"No SQuAD v{version} training file ({train_path} is missing). To train on part of the "
            f"dev set, set task.split_dev_by_article=N: it trains on the other articles and "
            f"evaluates on N held-out dev articles."
        )
    return SquadSplits(train=train, eval=dev)


def _from_hub(version: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    name = VERSIONS[version]
    try:
        loaded = datasets.load_dataset(name)
    except Exception as err:  # the hub raises many error types when offline
        train_name, dev_name = (p.name for p in local_files(".", version))
        raise RuntimeError(
            f"Could not load the hub dataset {name!r} ({type(err).__name__}: {err}). Offline, set "
            f"data_root= to a folder holding squad/{dev_name} (and squad/{train_name}, or set "
            f"task.split_dev_by_article=N)."
        ) from err
    return loaded["train"], loaded["validation"]


def split_by_article(dev: datasets.Dataset, n_eval_articles: int, seed: int) -> SquadSplits:
    """Hold out ``n_eval_articles`` whole articles (chosen from ``seed``) for eval; train on the rest.

    Splitting by article, not by question, keeps every paragraph on one side, so no eval context
    is seen in training.
    """
    titles = list(dict.fromkeys(dev["title"]))
    if not 1 <= n_eval_articles < len(titles):
        raise ConfigError(
            f"task.split_dev_by_article={n_eval_articles}: must be between 1 and {len(titles) - 1} "
            f"(the dev set has {len(titles)} articles and at least one must remain for training)"
        )
    held_out = set(np.random.default_rng(seed).choice(titles, size=n_eval_articles, replace=False).tolist())
    is_eval = np.isin(np.asarray(dev["title"]), list(held_out))
    eval_split = dev.select(np.flatnonzero(is_eval))
    train_split = dev.select(np.flatnonzero(~is_eval))
    note = (
        f"No SQuAD training file was used: train and eval are both carved out of the dev set by "
        f"article (task.split_dev_by_article={n_eval_articles}, seed={seed}). Eval holds "
        f"{n_eval_articles} of {len(titles)} dev articles ({len(eval_split)} questions): "
        f"{', '.join(sorted(held_out))}; training uses the other {len(titles) - n_eval_articles} "
        f"articles ({len(train_split)} questions). Scores are not comparable with full-dev SQuAD results."
    )
    return SquadSplits(train=train_split, eval=eval_split, notes=[note])
