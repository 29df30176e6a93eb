"""task=ner (token classification): the CoNLL reader and its errors, seqeval's entity F1 by hand and
against a transcription of seqeval's rules, first-sub-token labels, evaluation batch by batch,
distillation over per-token distributions, and runs end to end (CLI, with quantization and export)."""
import json
import math
import random
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from prunelab.errors import ConfigError
from prunelab.models import TinyBert, character_tokenizer
from prunelab.tasks.ner import NerTask
from prunelab.tasks.ner_data import first_subtoken_labels, read_conll
from prunelab.tasks.ner_metric import TagScheme, entities, ner_scores
from prunelab.train.distillation import KnowledgeDistiller
from prunelab.train.evaluation import predict

from conftest import FixedLogits, run_cli

NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SCHEME = TagScheme.from_names(NAMES)

# The tiny model reads characters, and a word's first sub-token is its first letter: that letter tells
# an entity word's type and whether it begins an entity (z, q, x, k) or continues one (y, j, v, w).
ENTITY_WORDS = {"PER": (["zara", "zoe"], ["yed", "yimm"]), "ORG": (["qua", "quixo"], ["jorp", "jux"]),
                "LOC": (["xa", "xo"], ["vton", "vill"]), "MISC": (["ke", "kolo"], ["wish", "wurt"])}
FILLER = ["the", "met", "in", "said", "a", "on", "and", "to"]


def write_conll(path, count: int, seed: int):
    """A CoNLL-2003-like file (four columns, -DOCSTART-, blank lines) of one- and two-word entities."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(count):
        for _ in range(rng.randint(3, 8)):
            if rng.random() < 0.3:
                kind = rng.choice(list(ENTITY_WORDS))
                for j in range(rng.randint(1, 2)):
                    word = rng.choice(ENTITY_WORDS[kind][min(j, 1)]).capitalize()
                    lines.append(f"{word} NNP I-NP {'B' if j == 0 else 'I'}-{kind}")
            else:
                lines.append(f"{rng.choice(FILLER)} DT I-NP O")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def tags(*names: str) -> np.ndarray:
    return np.array([NAMES.index(name) for name in names])


def scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    sentence = np.repeat(np.arange(len(gold)), [len(s) for s in gold])
    return ner_scores(tags(*sum(gold, [])), tags(*sum(predicted, [])), sentence, SCHEME)


# --- the CoNLL reader ----------------------------------------------------------------------------

def test_conll_reader_skips_docstart_and_splits_sentences_on_blank_lines(tmp_path):
    path = tmp_path / "dev.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
                    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n-DOCSTART- -X- -X- O\n\nBRUSSELS NNP B-NP B-LOC",
                    encoding="utf-8")
    sentences = read_conll(path, NAMES)
    assert sentences.tokens == [["EU", "rejects"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert sentences.tags == [[3, 0], [1, 2], [5]]
    # Two-column files, the tag in column 1 (counted from the start).
    path.write_text("Peter B-PER\nBlackburn I-PER\n", encoding="utf-8")
    assert read_conll(path, NAMES, tag_column=1).tags == [[1, 2]]


@pytest.mark.parametrize("text, tag_column, message", [
    ("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nGerman JJ B-NP B-MSC\n", -1,
     ":4: tag 'B-MSC' is not one of task.label_names (O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC)"),
    ("EU B-ORG\nrejects\n", -1,
     ":2: 1 column ('rejects'); expected the word first and its tag in column -1 (task.tag_column, 0-based, -1: the last)"),
    ("EU NNP B-ORG\n", 3,
     ":1: 3 columns ('EU NNP B-ORG'); expected the word first and its tag in column 3 (task.tag_column, 0-based, -1: the last)"),
    ("-DOCSTART- -X- -X- O\n\n\n", -1,
     ": no sentences (expected one word per line with its tag, blank lines between sentences)"),
])
def test_a_bad_conll_file_is_one_line_naming_file_and_line(tmp_path, text, tag_column, message):
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        read_conll(path, NAMES, tag_column)
    assert str(refused.value) == f"{path}{message}"


def test_files_resolve_against_data_root_else_the_working_directory(tmp_path, monkeypatch):
    write_conll(tmp_path / "train.txt", 4, 1)
    write_conll(tmp_path / "dev.txt", 2, 2)
    by_root = NerTask(NAMES, train_file="train.txt", validation_file="dev.txt", data_root=str(tmp_path))
    assert len(by_root.load(character_tokenizer()).eval) == 2
    monkeypatch.chdir(tmp_path)
    assert len(NerTask(NAMES, train_file="train.txt", validation_file="dev.txt").load(character_tokenizer()).train) == 4
    with pytest.raises(ConfigError) as refused:
        NerTask(NAMES, train_file="train.txt", validation_file="nope.txt").load(character_tokenizer())
    assert str(refused.value) == (f"task.validation_file=nope.txt: {(tmp_path / 'nope.txt').resolve()} not found "
                                  "(relative paths start at the working directory)")


@pytest.mark.parametrize("kwargs, message", [
    ({"label_names": ["O", "B-PER", "PER"]}, "task.label_names=['O', 'B-PER', 'PER']: 'PER' is not O, B-<type> or I-<type>"),
    ({"label_names": ["O", "B-PER", "O"]}, "task.label_names=['O', 'B-PER', 'O']: give each tag once"),
    ({"tag_column": 0}, "task.tag_column=0: column 0 holds the word; the tag is a later column (-1: the last)"),
    ({"train_file": "train.txt"}, "task.train_file=train.txt, task.validation_file=None: give both CoNLL files, "
                                  "or neither (the hub's data)"),
])
def test_bad_settings_are_one_line(kwargs, message):
    with pytest.raises(ConfigError) as refused:
        NerTask(**{"label_names": NAMES, **kwargs})
    assert str(refused.value) == message


def test_the_hub_unreachable_is_one_line(monkeypatch):
    def offline(*args, **kwargs):  # as datasets fails offline, without waiting on the network
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError) as refused:
        NerTask(NAMES).load(character_tokenizer())
    assert str(refused.value) == ("task.train_file=null: cannot load 'eriktks/conll2003' from the HuggingFace hub "
                                  "(ConnectionError); give CoNLL files as task.train_file and task.validation_file")
    # A data_root means local data: without files it is refused, not replaced by the hub's.
    with pytest.raises(ConfigError) as refused:
        NerTask(NAMES, data_root="/data").load(character_tokenizer())
    assert str(refused.value) == ("data_root=/data: give the CoNLL files under it as task.train_file and "
                                  "task.validation_file, or set data_root=null for the HuggingFace hub")


# --- the entity metric ---------------------------------------------------------------------------

def test_entities_follow_seqeval_on_the_tricky_cases():
    sequence = ["I-PER", "I-PER", "O", "I-LOC", "I-ORG", "B-ORG", "I-ORG", "B-PER", "B-PER", "I-MISC"]
    found = entities(tags(*sequence), np.zeros(len(sequence), dtype=int), SCHEME)
    # I- after nothing / after O starts an entity; a type change starts one; B- always starts one;
    # an entity at the end is closed.
    assert found.tolist() == [[0, 1, 0], [3, 3, 2], [4, 4, 1], [5, 6, 1], [7, 7, 0], [8, 8, 0], [9, 9, 3]]
    # Sentences never share an entity: I-PER at the start of the second sentence starts a new one.
    assert entities(tags("B-PER", "I-PER"), np.array([0, 1]), SCHEME).tolist() == [[0, 0, 0], [1, 1, 0]]
    assert entities(tags(), np.zeros(0, dtype=int), SCHEME).shape == (0, 3)


def test_entity_precision_recall_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O", "B-MISC"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"],   # PER right; LOC typed ORG: wrong
                 ["B-ORG", "I-ORG", "O", "O", "I-MISC"]]  # ORG cut short: wrong; MISC (I- after O) right
    result = scores(gold, predicted)
    # 2 of the 4 predicted and of the 4 gold entities match exactly; 6 of the 9 tags do.
    assert result == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 6 / 9}
    # A partial overlap is wrong both ways; nothing predicted: precision 0 (seqeval's zero_division).
    assert scores([["B-LOC", "I-LOC"]], [["O", "B-LOC"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}
    assert scores([["B-LOC", "O"]], [["O", "O"]])["precision"] == 0.0
    partial = scores([["B-PER", "O", "B-LOC", "I-LOC", "O"]], [["B-PER", "O", "B-LOC", "O", "B-ORG"]])
    assert (partial["precision"], partial["recall"]) == (1 / 3, 1 / 2)
    assert partial["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def _seqeval_entities(sequences: list[list[str]]) -> set:
    """seqeval 1.2.2's ``get_entities`` (default, non-suffix mode), transcribed as a plain loop:
    sequences joined with an ``O`` between them, each tag's prefix its first character and its type
    the rest after the first ``-``, with its ``end_of_chunk`` / ``start_of_chunk`` rules."""
    flat = [tag for sequence in sequences for tag in sequence + ["O"]]
    chunks, prev_tag, prev_type, begin = set(), "O", "", 0
    for i, chunk in enumerate(flat + ["O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        end = (prev_tag in "ES" or (prev_tag, tag) in {("B", "B"), ("B", "S"), ("B", "O"), ("I", "B"), ("I", "S"), ("I", "O")}
               or (prev_tag not in "O." and prev_type != type_))
        start = (tag in "BS" or (prev_tag, tag) in {("E", "E"), ("E", "I"), ("S", "E"), ("S", "I"), ("O", "E"), ("O", "I")}
                 or (tag not in "O." and prev_type != type_))
        if end:
            chunks.add((prev_type, begin, i - 1))
        if start:
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def test_f1_equals_seqeval_s_definition_on_random_sequences():
    rng = random.Random(0)
    gold = [[rng.choice(NAMES) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    predicted = [[tag if rng.random() < 0.7 else rng.choice(NAMES) for tag in sentence] for sentence in gold]
    true_set, predicted_set = _seqeval_entities(gold), _seqeval_entities(predicted)
    precision = len(true_set & predicted_set) / len(predicted_set)
    recall = len(true_set & predicted_set) / len(true_set)
    result = scores(gold, predicted)
    assert len(true_set) > 300 and 0.3 < precision < 0.9  # plenty of entities, many of them wrong
    assert result["precision"] == precision and result["recall"] == recall
    assert result["f1"] == pytest.approx(2 * precision * recall / (precision + recall), rel=1e-12)


# --- tokenization and evaluation -----------------------------------------------------------------

def test_only_the_first_sub_token_of_each_word_is_labelled(tmp_path):
    tokenizer = character_tokenizer()  # every letter its own piece: a word of n letters is n tokens
    words = ["Peter", "Blackburn", "visited", "BRUSSELS", "."]
    labels, scored = first_subtoken_labels(tokenizer(words, is_split_into_words=True).word_ids(), [1, 2, 0, 5, 0])
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(words, is_split_into_words=True)["input_ids"])
    assert [p for p, label in zip(pieces, labels) if label != -100] == ["p", "b", "v", "b", "."]
    assert labels[labels != -100].tolist() == [1, 2, 0, 5, 0] and scored.tolist() == [0, 1, 2, 3, 4]
    assert len(labels) == 2 + sum(map(len, words))  # [CLS], [SEP]
    # Through the task: one label per word survives, and words cut off by max_length are not scored.
    (tmp_path / "t.txt").write_text("\n".join(f"{w} NNP {NAMES[t]}" for w, t in zip(words, [1, 2, 0, 5, 0])), encoding="utf-8")
    data = NerTask(NAMES, train_file="t.txt", validation_file="t.txt", data_root=str(tmp_path), max_length=18).load(tokenizer)
    assert data.eval[0]["labels"].count(-100) == 18 - 3  # [CLS] peter blackburn v...: 3 words start in 18 tokens
    assert data.extra["scored"].tolist() == [0, 1, 2]
    assert data.notes[-1].startswith("2 of 5 evaluation words are not scored: cut off at max_length=18 tokens")


def test_evaluation_keeps_predicted_and_gold_tags_across_padded_batches(tmp_path):
    write_conll(tmp_path / "dev.txt", 20, 3)
    task = NerTask(NAMES, train_file="dev.txt", validation_file="dev.txt", data_root=str(tmp_path), max_length=48)
    data = task.load(character_tokenizer())
    torch.manual_seed(0)
    model = TinyBert().load_model(task.auto_model_class(), **task.model_kwargs()).eval()
    loader = DataLoader(data.eval, batch_size=3, collate_fn=data.collator)  # batches padded to different lengths
    arrays, loss = predict(model, loader, task, device="cpu")
    assert [a.shape for a in arrays] == [(20, max(len(x["input_ids"]) for x in data.eval))] * 2 and loss > 0
    # The same predictions one sentence at a time, as seqeval would be given them.
    gold, predicted, sentence = [], [], []
    with torch.no_grad():
        for i in range(len(data.eval)):
            item = data.collator([data.eval[i]])
            keep = item["labels"][0] != -100
            predicted += model(**item).logits[0].argmax(-1)[keep].tolist()
            gold += item["labels"][0][keep].tolist()
            sentence += [i] * int(keep.sum())
    expected = ner_scores(np.array(gold), np.array(predicted), np.array(sentence), SCHEME)
    assert task.compute_metrics(arrays, data) == expected
    assert len(gold) == len(data.extra["scored"]) == sum(map(len, data.extra["tokens"]))
    task.write_predictions(arrays, data, tmp_path / "run")
    blocks = (tmp_path / "run" / "predictions.txt").read_text().strip().split("\n\n")
    assert len(blocks) == 20
    first = [line.split() for line in blocks[0].splitlines()]
    assert [w for w, _, _ in first] == data.extra["tokens"][0]
    assert [g for _, g, _ in first] == [NAMES[t] for t in data.extra["tags"][0]]
    assert [NAMES.index(p) for _, _, p in first] == predicted[:len(first)]


# --- distillation --------------------------------------------------------------------------------

def test_kd_is_the_mean_kl_over_real_tokens_times_t_squared(tmp_path):
    write_conll(tmp_path / "dev.txt", 8, 4)
    task = NerTask(NAMES, train_file="dev.txt", validation_file="dev.txt", data_root=str(tmp_path))
    data = task.load(character_tokenizer())
    torch.manual_seed(0)
    student = TinyBert().load_model(task.auto_model_class(), **task.model_kwargs()).eval()
    ordered = DataLoader(data.train, batch_size=4, collate_fn=data.collator)
    # The teacher is the student's copy: the loss is 0.
    same = KnowledgeDistiller(task, student, temperature=2.0)
    same.prepare(Accelerator(cpu=True), ordered)
    batch = data.collator([data.train[i] for i in range(4)])
    with torch.no_grad():
        assert same.extra_loss(student(**batch), batch, torch.arange(4)).item() == pytest.approx(0.0, abs=1e-6)
    # Known logits [2 sentences, 3 tokens, 2 classes]; at T=2, teacher [0, 2 ln 3] is [1/4, 3/4], [2 ln 3, 0] is [3/4, 1/4];
    # the student says [1/2, 1/2] everywhere; padding (mask 0) would add a large KL if it counted.
    ln3 = 2 * math.log(3)
    teacher = torch.tensor([[[0.0, ln3], [0.0, 0.0], [50.0, -50.0]], [[ln3, 0.0], [50.0, -50.0], [-50.0, 50.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    distiller = KnowledgeDistiller(task, student, temperature=2.0, loss_weight=3.0)
    distiller.teacher = FixedLogits(teacher)
    distiller.prepare(Accelerator(cpu=True), ordered)
    loss = distiller.extra_loss(SimpleNamespace(logits=torch.zeros(2, 3, 2)), {"attention_mask": mask}, torch.arange(2))
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(teacher || student), both skewed tokens
    # Mean over the 3 real tokens (two with this KL, one with 0), times T^2 = 4, times the weight 3.
    assert loss.item() == pytest.approx(2 * kl / 3 * 4 * 3, rel=1e-6)


# --- end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conll_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("conll")
    return write_conll(root / "train.txt", 96, 1), write_conll(root / "dev.txt", 48, 2)


SMALL = ["model=tiny", "num_train_epochs=1", "max_length=32", "per_device_train_batch_size=8",
         "per_device_eval_batch_size=16", "progress_bar=false"]


def test_cli_learns_prunes_distils_quantizes_and_exports(conll_files, tmp_path):
    """One dense epoch, then 4x1 to 0.8 over two more with kd from the dense start; dynamic int8; compaction."""
    train, dev = conll_files
    result = run_cli("task=ner", f"task.train_file={train}", f"task.validation_file={dev}", *SMALL, "num_train_epochs=3",
                     "sparsity_warm_epochs=1", "learning_rate=1e-3", "lr_scheduler_type=constant", "pattern=4x1",
                     "pruner=snip_momentum", "distill=kd", "quant=dynamic", "export=compact",
                     "export.latency_runs=0", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["task"], summary["task_family"], summary["main_metric"]) == (
        "completed", "ner", "token_classification", "eval/f1")
    assert list(summary["metrics"]) == ["eval/f1", "eval/precision", "eval/recall", "eval/accuracy"]
    # The 75 dev entities are told by first letters: found (near) perfectly, from none after one epoch.
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs[0]["eval/f1"] < 0.5 and summary["metrics"]["eval/f1"] >= 0.9
    assert summary["sparsity"]["pruned_ops_sparsity"] == pytest.approx(0.8, abs=0.005)
    quantization = summary["quantization"]
    assert quantization["approach"] == "dynamic" and set(quantization["metrics"]) == set(summary["metrics"])
    assert quantization["metrics"]["eval/f1"] >= summary["metrics"]["eval/f1"] - 0.05
    assert 0 < quantization["size_bytes"] < quantization["float_size_bytes"]
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    assert report["model_class"] == "BertForTokenClassification"
    assert report["max_abs_logit_diff"] < 1e-4
    blocks = (tmp_path / "predictions.txt").read_text().strip().split("\n\n")
    assert len(blocks) == 48


@pytest.mark.parametrize("pattern", ["head", "neuron"])
def test_structured_pruning_is_cut_out_of_the_token_classifier(conll_files, tmp_path, pattern):
    train, dev = conll_files
    result = run_cli("task=ner", f"task.train_file={train}", f"task.validation_file={dev}", *SMALL,
                     f"pattern={pattern}", "target_sparsity=0.5", "export=compact", "export.backends=[torch]",
                     "export.latency_runs=0", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    assert report["structure_removed"] and report["parameters"]["after"] < report["parameters"]["before"]
    assert report["removed"]["heads" if pattern == "head" else "neurons"] > 0
    assert report["max_abs_logit_diff"] < 1e-4
