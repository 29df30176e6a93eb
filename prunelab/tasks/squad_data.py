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
    """Flatten an official SQuAD json file (articles > paragraphs > qas) into one row per question.

    A file that is not valid JSON, or not in the official layout, raises ``ConfigError`` naming the
    file and the line:column (invalid JSON) or the article / paragraph / question (missing key,
    wrong type). The checks cost no second walk over the questions unless something is wrong.
    """
    articles = _load_articles(path)
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    texts: list = []  # every answer text, for one type check at the end
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    rows["id"].append(qa["id"])
                    rows["title"].append(article["title"])
                    rows["context"].append(paragraph["context"])
                    rows["question"].append(qa["question"])
                    answer_texts = [a["text"] for a in qa["answers"]]
                    texts.extend(answer_texts)
                    rows["answers"].append(
                        {
                            "text": answer_texts,
                            "answer_start": [int(a["answer_start"]) for a in qa["answers"]],
                        }
                    )
    except (KeyError, TypeError, ValueError, AttributeError):
        _raise_layout_error(path, articles)
        raise
    strings = (rows["id"], rows["title"], rows["context"], rows["question"], texts)
    if not all(set(map(type, values)) <= {str} for values in strings):
        _raise_layout_error(path, articles)
    if not rows["id"]:
        raise ConfigError(f"{path}: no questions ('data' holds {len(articles)} articles but not one question)")
    return datasets.Dataset.from_dict(rows)


_LAYOUT = 'the official SQuAD layout {"version": ..., "data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}'


def _load_articles(path: str | Path) -> list:
    """The ``data`` list of a SQuAD json file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the file ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        offset = error.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, offset) + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[offset]:02x}: {error.reason})") from None
    if not text.strip():
        raise ConfigError(f"{path}: file is empty (expected {_LAYOUT})")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})") from None
    if not isinstance(document, dict) or "data" not in document:
        found = f"keys {sorted(document)}" if isinstance(document, dict) else f"a JSON {_json_type(document)}"
        raise ConfigError(f"{path}: no 'data' at the top level (found {found}; expected {_LAYOUT})")
    if not isinstance(document["data"], list):
        raise ConfigError(f"{path}: 'data' is a JSON {_json_type(document['data'])}, expected a list of articles")
    return document["data"]


# Each level of the official layout: the keys it must have and their JSON types.
_ARTICLE = {"title": str, "paragraphs": list}
_PARAGRAPH = {"context": str, "qas": list}
_QA = {"id": str, "question": str, "answers": list}
_ANSWER = {"text": str, "answer_start": int}


def _raise_layout_error(path, articles: list) -> None:
    """Walk ``articles`` checking every key and type; raise ``ConfigError`` at the first problem.

    Runs only after the fast flattening failed, so its cost is on the error path alone.
    """
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        _check(path, where, article, _ARTICLE, _label("title", article))
        for p, paragraph in enumerate(article["paragraphs"]):
            where_p = f"{where}.paragraphs[{p}]"
            _check(path, where_p, paragraph, _PARAGRAPH, _label("title", article))
            for q, qa in enumerate(paragraph["qas"]):
                where_q = f"{where_p}.qas[{q}]"
                _check(path, where_q, qa, _QA, _label("id", qa))
                for n, answer in enumerate(qa["answers"]):
                    _check(path, f"{where_q}.answers[{n}]", answer, _ANSWER, _label("id", qa, "question id"))


def _label(key: str, item, name: str | None = None) -> str:
    """`` (id '56be4db0')``: what names an item besides its index, when it has it."""
    if isinstance(item, dict) and isinstance(item.get(key), str):
        return f" ({name or key} {item[key]!r})"
    return ""


def _check(path, where: str, item, keys: dict[str, type], label: str) -> None:
    if not isinstance(item, dict):
        raise ConfigError(
            f"{path}: {where} is a JSON {_json_type(item)}, expected an object with {', '.join(map(repr, keys))}"
        )
    for key, kind in keys.items():
        if key not in item:
            raise ConfigError(f"{path}: {where}{label}: no {key!r} key (expected {', '.join(map(repr, keys))})")
        value = item[key]
        if kind is int:
            ok = not isinstance(value, bool) and _is_int(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            expected = {str: "a string", list: "a list", int: "an integer"}[kind]
            raise ConfigError(f"{path}: {where}{label}: {key!r} is {_short(value)}, expected {expected}")


def _is_int(value) -> bool:
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True


def _short(value) -> str:
    """A JSON value as the message shows it: its text if short, else its type."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else f"a JSON {_json_type(value)}"


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


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
                f"data_root={data_root}: {dev_path} not found; expected the official SQuAD v{version} "
                f"files <data_root>/squad/{dev_path.name} (and {train_path.name}, or set task.split_dev_by_article=N)"
            )
        dev = read_squad_json(dev_path)
        train = read_squad_json(train_path) if train_path.is_file() else None
    if split_dev_by_article is not None:
        return split_by_article(dev, split_dev_by_article, seed)
    if train is None:
        raise ConfigError(
            f"data_root={data_root}: no SQuAD v{version} training file ({train_path} not found). To train "
            f"on part of the dev set, set task.split_dev_by_article=N: it trains on the other articles and "
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
