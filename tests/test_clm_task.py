"""CausalLMTask: documents from local files packed into blocks, one-line file errors, and
perplexity from per-token losses against the model's own logits and loss."""
import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelab.errors import ConfigError
from prunelab.models import TinyLlama, byte_tokenizer
from prunelab.tasks.base import PAD_LOGIT
from prunelab.tasks.clm import CausalLMTask
from prunelab.train.evaluation import predict

from conftest import one_line, run_cli


def _task(tmp_path, train_lines, validation_lines, suffix=".txt", **keywords) -> CausalLMTask:
    files = {}
    for split, lines in (("train", train_lines), ("validation", validation_lines)):
        files[split] = tmp_path / f"{split}{suffix}"
        files[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return CausalLMTask(train_file=str(files["train"]), validation_file=str(files["validation"]), **keywords)


def test_documents_are_joined_by_eos_and_cut_into_full_blocks(tmp_path):
    tokenizer = byte_tokenizer()
    eos = tokenizer.eos_token_id
    # bytes: "ab" EOS "cde" EOS "f" = 8 tokens (the blank line is no document) -> 2 blocks of 3, tail "EOS f" dropped
    task = _task(tmp_path, ["ab", "", "cde", "f"], ["xyz", "uvw"], block_size=3)
    data = task.load(tokenizer)
    ids = [tokenizer.convert_tokens_to_ids(c) for c in "abcdefuvwxyz"]
    a, b, c, d, e, f, u, v, w, x, y, z = ids
    assert torch.equal(data.train.blocks, torch.tensor([[a, b, eos], [c, d, e]]))
    # "xyz" EOS "uvw" = 7 tokens -> 2 blocks, the last token dropped
    assert torch.equal(data.eval.blocks, torch.tensor([[x, y, z], [eos, u, v]]))
    item = data.train[1]
    assert torch.equal(item["labels"], item["input_ids"]) and torch.equal(item["attention_mask"], torch.ones(3, dtype=torch.long))
    batch = data.collator([data.train[0], data.train[1]])
    assert batch["input_ids"].shape == (2, 3) and set(batch) == {"input_ids", "attention_mask", "labels"}
    assert any("2 of 2 blocks of 3 tokens from 3 documents" in note for note in data.notes)
    assert task.input_length() == ("task.block_size", 3)


def test_block_limits_and_max_length(tmp_path):
    task = _task(tmp_path, ["abcdefghij"], ["abcdefgh"], max_length=2, max_train_samples=3, max_eval_samples=1)
    data = task.load(byte_tokenizer())
    assert (len(data.train), len(data.eval)) == (3, 1)  # of 5 and 4 blocks of 2 tokens
    assert task.input_length() == ("max_length", 2)
    assert any(note.endswith("3 of 5 blocks of 2 tokens from 1 documents (EOS between documents, the last partial "
                             "block dropped); max_train_samples=3") for note in data.notes)


def test_jsonl_reads_the_text_field(tmp_path):
    lines = [json.dumps({"body": "abcd", "id": 1}), "", json.dumps({"body": "efgh"})]
    data = _task(tmp_path, lines, lines, suffix=".jsonl", text_field="body", block_size=4).load(byte_tokenizer())
    assert len(data.train) == 2  # "abcd" EOS "efgh": 9 tokens


@pytest.mark.parametrize("bad, message", [
    ('{"text": "abc"', "not valid JSON (Expecting ',' delimiter at column 15)"),
    ('{"title": "no text here"}', "no string field 'text' (task.text_field)"),
    ('["text"]', "no string field 'text' (task.text_field)"),
])
def test_a_bad_json_line_is_one_error_naming_file_and_line(tmp_path, bad, message):
    good = json.dumps({"text": "some words"})
    task = _task(tmp_path, [good, "", bad, good], [good], suffix=".jsonl", block_size=2)
    with pytest.raises(ConfigError) as caught:
        task.load(byte_tokenizer())
    assert str(caught.value) == f"{tmp_path / 'train.jsonl'}:3: {message}"


def test_file_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^task.train_file=.*, task.validation_file=None: give both"):
        CausalLMTask(train_file="a.txt")
    (tmp_path / "t.txt").write_text("abc\n")
    with pytest.raises(ConfigError, match=r"^task.validation_file=.*missing.txt: file not found$"):
        CausalLMTask(train_file=str(tmp_path / "t.txt"), validation_file=str(tmp_path / "missing.txt")).load(byte_tokenizer())
    with pytest.raises(ConfigError, match=r"^task.train_file=.*data.csv: give a .txt file"):
        CausalLMTask(train_file=str(tmp_path / "data.csv"), validation_file=str(tmp_path / "v.txt")).load(byte_tokenizer())
    with pytest.raises(ConfigError, match=r"^task.validation_file=.*: its 1 documents hold fewer tokens than one block \(task.block_size=8\)$"):
        _task(tmp_path, ["abcdefghijkl"], ["abc"], block_size=8).load(byte_tokenizer())
    with pytest.raises(ConfigError, match=r"^task.block_size=1: a block must hold at least 2 tokens"):
        CausalLMTask(hub_dataset="x", block_size=1)


def test_files_are_read_from_data_root_when_it_is_set(tmp_path):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "t.txt").write_text("abcdefghijklmnop\n")
    (tmp_path / "text" / "v.txt").write_text("qrstuvwxyzabcdef\n")
    data = CausalLMTask(train_file="text/t.txt", validation_file="text/v.txt", block_size=8,
                        data_root=str(tmp_path)).load(byte_tokenizer())
    assert len(data.train) == len(data.eval) == 2 and str(tmp_path / "text" / "t.txt") in data.notes[0]


def test_hub_text_offline_is_one_line_naming_the_files_to_give(tmp_path):
    line = one_line(run_cli("task=clm", "model=tiny-llama", "progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"))
    assert line.startswith("prunelab: error: task.hub_dataset=Salesforce/wikitext: cannot load "
                           "'Salesforce/wikitext/wikitext-2-raw-v1' from the HuggingFace hub (")
    assert line.endswith("for local text give task.train_file and task.validation_file (.txt or .jsonl)")


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    return TinyLlama().load_model(AutoModelForCausalLM, use_cache=False).eval()


def _padded_batch(sequences: list[list[int]], pad: int) -> dict:
    """Right-padded inputs; labels -100 and attention 0 on the padding."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_perplexity_is_exp_of_the_mean_token_loss_over_batches_of_different_padding(tiny_llama):
    """Two eval batches padded differently: gathered per-token losses give exp(mean NLL over every
    real predicted token), computed here from each sequence's own full logits."""
    rng = np.random.default_rng(0)
    lengths = [[9, 4, 6], [3, 7]]
    batches = [[rng.integers(2, 258, n).tolist() for n in batch] for batch in lengths]
    task = CausalLMTask(hub_dataset="unused")
    outputs, _ = predict(tiny_llama, [_padded_batch(b, pad=1) for b in batches], task, device="cpu")
    nll = outputs[0]
    assert nll.shape == (5, 8) and nll.dtype == np.float32
    assert (nll != PAD_LOGIT).sum(axis=1).tolist() == [8, 3, 5, 2, 6]  # one predicted token fewer than each length
    reference = []
    with torch.no_grad():
        for sequence in (s for batch in batches for s in batch):
            ids = torch.tensor([sequence])
            log_probs = torch.log_softmax(tiny_llama(input_ids=ids).logits[0, :-1].double(), dim=-1)
            reference.append(-log_probs.gather(1, ids[0, 1:, None]).squeeze(1))
    expected = float(torch.cat(reference).mean())
    metrics = task.compute_metrics(outputs, data=None)
    assert metrics["loss"] == pytest.approx(expected, abs=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    # not the mean of per-batch (or per-sequence) means: the batches hold 16 and 8 tokens
    per_batch = np.mean([nll[:3][nll[:3] != PAD_LOGIT].mean(), nll[3:][nll[3:] != PAD_LOGIT].mean()])
    assert abs(per_batch - expected) > 1e-4


def test_perplexity_equals_the_models_own_loss_when_every_token_is_real(tmp_path, tiny_llama):
    task = _task(tmp_path, ["unused training text"], ["the cat sat on the mat", "and the dog ran"], block_size=8)
    data = task.load(byte_tokenizer())
    batch = data.collator([data.eval[i] for i in range(len(data.eval))])
    outputs, loss = predict(tiny_llama, [batch], task, device="cpu")
    metrics = task.compute_metrics(outputs, data)
    assert metrics["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert task.model_kwargs() == {"use_cache": False} and not task.greater_is_better
