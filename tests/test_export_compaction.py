"""Compaction and export with real numbers: pruned heads and neurons cut out of tiny BERT, RoBERTa and
DistilBERT models, logits equal to the masked model's (<= 1e-4) in torch, after a reload in a fresh
process and in ONNX Runtime; ``python -m prunelab.export RUN_DIR`` end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

import prunelab
from prunelab.export import (
    BiasOnly,
    EmptyBlock,
    compact,
    export_onnx,
    export_run,
    load_compacted,
    ort_session,
    run_ort,
    save_compacted,
)
from prunelab.export.__main__ import main as export_main
from prunelab.export.onnx_export import example_inputs, max_abs_diff, torch_outputs

from conftest import require_minilm

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def tiny(family, seed=0):
    torch.manual_seed(seed)
    if family == "bert":
        model = BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                         intermediate_size=256, vocab_size=100))
    elif family == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                               intermediate_size=256, vocab_size=100,
                                                               max_position_embeddings=64))
    else:
        model = DistilBertForSequenceClassification(DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=256,
                                                                     vocab_size=100))
    with torch.no_grad():  # logits of order 1, so that 1e-4 is a real bound
        for name, param in model.named_parameters():
            if "classifier" in name and name.endswith("weight"):
                param.mul_(20.0)
    return model.eval()


def layer_names(model):
    base = {BertForSequenceClassification: "bert.encoder.layer", RobertaForSequenceClassification: "roberta.encoder.layer"}
    prefix = base.get(type(model), "distilbert.transformer.layer")
    return f"{prefix}.0", f"{prefix}.1"


def prune_units(model, heads=0.5, neurons=0.5):
    """One-shot magnitude head + neuron pruning, global, after shrinking layer 1's attention and layer
    0's FFN so that layer 1 loses every head and layer 0 every neuron."""
    first, second = layer_names(model)
    with torch.no_grad():
        for name, module in model.named_modules():
            attention = name.startswith(second + ".attention") and isinstance(module, torch.nn.Linear)
            ffn = name.startswith(first) and isinstance(module, torch.nn.Linear) and "attention" not in name
            if attention or ffn:
                module.weight.mul_(0.01)
    config = {"pruning_type": "magnitude", "max_sparsity_ratio_per_op": 1.0, "pruning_configs": [
        {"pattern": "head", "target_sparsity": heads}, {"pattern": "neuron", "target_sparsity": neurons}]}
    pruning = prunelab.prepare_pruning(model, config)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    kept = pruning.kept_units()
    assert kept[second]["heads"] == [] and kept[first]["neurons"] == []
    return pruning


def test_bert_round_trip_compacted_saved_reloaded_in_a_fresh_process_and_run_in_onnxruntime(tmp_path):
    model = tiny("bert")
    pruning = prune_units(model)
    kept = pruning.kept_units()
    result = compact(model, kept)
    compacted = result.model
    first, second = compacted.bert.encoder.layer
    assert first.attention.self.query.weight.shape == (64, 64)  # layer 0 kept its 4 heads ...
    assert isinstance(first.intermediate, EmptyBlock) and isinstance(first.output.dense, BiasOnly)  # ... and no neuron
    assert isinstance(second.attention.self, EmptyBlock) and isinstance(second.attention.output.dense, BiasOnly)
    assert second.intermediate.dense.weight.shape == (len(kept["bert.encoder.layer.1"]["neurons"]), 64)
    assert second.output.dense.weight.shape == (64, len(kept["bert.encoder.layer.1"]["neurons"]))
    assert result.parameters_after == result.parameters_before - 4 * (3 * (64 * 16 + 16) + 64 * 16) - 256 * (2 * 64 + 1) - (
        256 - second.intermediate.dense.out_features) * (2 * 64 + 1)
    assert result.removed == {"heads": 4, "heads_total": 8, "neurons": 256, "neurons_total": 512}

    inputs = example_inputs(model, batch=3, sequence=24)
    reference = torch_outputs(model, inputs)
    assert max_abs_diff(reference, torch_outputs(compacted, inputs)) <= TOLERANCE

    save_compacted(result, tmp_path / "model")
    torch.save(inputs, tmp_path / "inputs.pt")
    script = (
        "import sys, torch; from prunelab.export import load_compacted; "
        "model = load_compacted(sys.argv[1]); inputs = torch.load(sys.argv[2]); "
        "torch.save(model(**inputs).logits.detach(), sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "inputs.pt"),
                    str(tmp_path / "logits.pt")], check=True, env=ENV, cwd=tmp_path, timeout=120)
    fresh = torch.load(tmp_path / "logits.pt").numpy()
    assert max_abs_diff(reference, [fresh]) <= TOLERANCE

    info = export_onnx(compacted, tmp_path / "model.onnx")
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and info["outputs"] == ["logits"]
    session = ort_session(tmp_path / "model.onnx", threads=1)
    assert max_abs_diff(reference, run_ort(session, inputs)) <= TOLERANCE  # other batch and length than traced
    one = example_inputs(model, batch=1, sequence=7, seed=3)
    assert max_abs_diff(torch_outputs(model, one), run_ort(session, one)) <= TOLERANCE


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_roberta_and_distilbert_compact_exactly_and_reload(family, tmp_path):
    model = tiny(family)
    pruning = prune_units(model, heads=0.625, neurons=0.6)
    result = compact(model, pruning.kept_units())
    inputs = example_inputs(model, batch=2, sequence=20)
    reference = torch_outputs(model, inputs)
    assert max_abs_diff(reference, torch_outputs(result.model, inputs)) <= TOLERANCE
    assert result.removed["heads"] == 5 and result.removed["neurons"] == round(0.6 * 512)
    save_compacted(result, tmp_path)
    reloaded = load_compacted(tmp_path)
    assert max_abs_diff(reference, torch_outputs(reloaded, inputs)) <= TOLERANCE
    assert [tuple(p.shape) for p in reloaded.parameters()] == [tuple(p.shape) for p in result.model.parameters()]


def test_constant_units_are_folded_into_the_output_bias():
    """1xchannel zeroes FFN-in rows but not their biases: each such neuron adds act(bias) x its column,
    a constant that compaction moves into the FFN-out bias. A head whose value rows are zero adds
    W_o @ value bias. channelx1 on FFN-out removes neurons with nothing to fold. A head with zero
    query rows only still changes the output (uniform attention): it is kept."""
    model = tiny("bert")
    pruning = prunelab.prepare_pruning(model, {"pruning_type": "magnitude", "pruning_scope": "local", "pruning_configs": [
        {"pattern": "1xchannel", "op_names": [r"layer\.0\.intermediate"], "target_sparsity": 0.4},
        {"pattern": "channelx1", "op_names": [r"layer\.1\.output\.dense"], "target_sparsity": 0.25}]})
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    layer0, layer1 = model.bert.encoder.layer
    with torch.no_grad():
        layer0.intermediate.dense.bias.fill_(0.5)  # large constants: a missing fold would show
        layer0.attention.self.value.weight[16:32] = 0.0
        layer0.attention.self.value.bias[16:32] = 0.7
        layer1.attention.self.query.weight[32:48] = 0.0
        layer1.attention.self.query.bias[32:48] = 0.0
    result = compact(model)
    by_name = {(p.structure.layer, p.structure.kind): p for p in result.plans}
    assert by_name["bert.encoder.layer.0", "neuron"].folded and len(by_name["bert.encoder.layer.0", "neuron"].keep) == round(0.6 * 256)
    assert not by_name["bert.encoder.layer.1", "neuron"].folded and len(by_name["bert.encoder.layer.1", "neuron"].keep) == 192
    assert by_name["bert.encoder.layer.0", "head"].keep == [0, 2, 3] and by_name["bert.encoder.layer.0", "head"].folded == [1]
    assert by_name["bert.encoder.layer.1", "head"].keep == [0, 1, 2, 3]
    inputs = example_inputs(model, batch=3, sequence=16)
    assert max_abs_diff(torch_outputs(model, inputs), torch_outputs(result.model, inputs)) <= TOLERANCE


def test_shape_keeping_zeros_remove_nothing_and_engine_units_must_be_zero():
    model = tiny("bert")
    # 1x1 at 0.5: no whole row or column is zero (4x1 at 0.8 on this tiny model zeroes a few whole
    # FFN-out columns of 16 blocks by chance, and compaction rightly removes those neurons).
    pruning = prunelab.prepare_pruning(model, {"pattern": "1x1", "pruning_type": "magnitude", "target_sparsity": 0.5})
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    result = compact(model)
    assert not result.structure_removed and result.parameters_after == result.parameters_before
    assert all(isinstance(m, torch.nn.Linear) for m in result.model.bert.encoder.layer[0].attention.self.children()
               if not isinstance(m, torch.nn.Dropout))

    heads = tiny("bert")
    engine = prunelab.prepare_pruning(heads, {"pattern": "head", "pruning_type": "magnitude", "target_sparsity": 0.5,
                                              "pruning_scope": "local"})
    engine.on_train_begin()
    engine.on_step_begin(0)
    kept = engine.kept_units()
    gone = [h for h in range(4) if h not in kept["bert.encoder.layer.0"]["heads"]][0]
    with torch.no_grad():  # weights changed after the masks were applied: no longer removable
        heads.bert.encoder.layer[0].attention.output.dense.weight[:, gone * 16] = 1.0
        heads.bert.encoder.layer[0].attention.self.value.weight[gone * 16] = 1.0
    with pytest.raises(ValueError, match=rf"bert.encoder.layer.0: heads \[{gone}\] are pruned by the engine but"):
        compact(heads, kept)
    with pytest.raises(ValueError, match="already compacted"):
        compact(compact(tiny("bert")).model)


def save_run(model, run_dir, pattern):
    model.save_pretrained(run_dir / "model")
    (run_dir / "model" / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # stands for the tokenizer files
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "pattern": pattern, "target_sparsity": 0.5}))


def test_cli_exports_a_run_dir_with_checked_logits_and_latencies(tmp_path):
    model = tiny("bert")
    prune_units(model)
    run_dir = tmp_path / "run"
    save_run(model, run_dir, "head+neuron")
    done = subprocess.run(
        [sys.executable, "-m", "prunelab.export", str(run_dir), "--runs", "2", "--batch-sizes", "1,2", "--seq-len", "16",
         "--threads", "1"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=170,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "parameters" in done.stdout and "removed 4 of 8 attention heads" in done.stdout
    out = run_dir / "export"
    report = json.loads((out / "export.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model", "model.onnx"]
    assert (out / "model" / "vocab.txt").exists()
    assert report["parameters"]["after"] < report["parameters"]["before"]
    assert report["max_abs_logit_diff"] <= TOLERANCE
    assert set(report["logit_diffs"]) == {"torch_compacted", "reloaded", "onnxruntime"}
    assert report["layers"]["bert.encoder.layer.1"]["heads"] == {"kept": [], "total": 4}
    assert report["layers"]["bert.encoder.layer.0"]["neurons"] == {"kept": 0, "total": 256}
    assert report["structure_removed"] is True and report["run"]["pattern"] == "head+neuron"
    assert report["backends"] == ["torch", "onnxruntime"] and report["quantized"] is None
    assert report["load"] == "prunelab.export.load_compacted('<this dir>/model')"
    assert report["onnx"]["exporter"] == "torch.onnx.export(dynamo=True)" and report["onnx"]["outputs"] == ["logits"]
    latency = report["latency"]
    assert (latency["runs"], latency["sequence_length"], latency["threads"]) == (2, 16, 1)
    for batch in ("batch_1", "batch_2"):
        row = latency[batch]
        assert set(row) == {"torch_dense_ms", "torch_compacted_ms", "torch_compacted_ratio", "ort_compacted_ms",
                            "ort_compacted_ratio"}
        assert row["torch_dense_ms"] > 0 and row["ort_compacted_ms"] > 0
        assert row["torch_compacted_ratio"] == pytest.approx(row["torch_compacted_ms"] / row["torch_dense_ms"])
    reloaded = load_compacted(out / "model")
    inputs = example_inputs(model, batch=2, sequence=12)
    assert max_abs_diff(torch_outputs(model, inputs), torch_outputs(reloaded, inputs)) <= TOLERANCE


def test_export_of_shape_keeping_zeros_claims_no_speedup_and_bad_run_dirs_are_one_line(tmp_path, capsys):
    model = tiny("bert")
    pruning = prunelab.prepare_pruning(model, {"pattern": "2:4", "pruning_type": "magnitude", "target_sparsity": 0.5})
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    save_run(model, tmp_path / "run", "2:4")
    report = export_run(tmp_path / "run", runs=1, batch_sizes=(1,), sequence=8, threads=1, backends=("torch",))
    assert report["structure_removed"] is False and report["speedup_claimed"] is False
    assert report["note"].startswith("nothing removable") and "no speedup is claimed" in report["note"]
    assert report["parameters"]["before"] == report["parameters"]["after"]
    assert report["removed"] == {"heads": 0, "heads_total": 8, "neurons": 0, "neurons_total": 512}
    assert report["onnx"] is None and set(report["latency"]["batch_1"]) == {
        "torch_dense_ms", "torch_compacted_ms", "torch_compacted_ratio"}

    capsys.readouterr()
    assert export_main([str(tmp_path / "nowhere")]) == 2  # bad input: one line, exit 2 (as every entry point)
    error = capsys.readouterr().err
    assert error.startswith("prunelab.export: ") and error.count("\n") == 1 and "no saved model" in error
    for backends, why in (("torch,tensorrt", "no backend 'tensorrt'; allowed: torch, onnxruntime, openvino"),
                          ("openvino", "openvino runs the int8 model of the compacted one")):
        with pytest.raises(SystemExit) as caught:
            export_main([str(tmp_path / "run"), "--backends", backends])
        error = capsys.readouterr().err
        assert caught.value.code == 2 and error.count("\n") == 1
        assert error.startswith(f"python -m prunelab.export: error: argument --backends: {why}")


def test_real_minilm_heads_and_neurons_compact_exactly():
    """all-MiniLM-L6-v2 (BERT layout, 6 layers x 12 heads, FFN 1536) from its PyPI package."""
    package = require_minilm()
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new classifier head is reported as newly initialised
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(package.get_model_path(), num_labels=2).eval()
    pruning = prunelab.prepare_pruning(model, {"pruning_type": "magnitude", "pruning_configs": [
        {"pattern": "head", "target_sparsity": 0.5}, {"pattern": "neuron", "target_sparsity": 0.5}]})
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    kept = pruning.kept_units()
    counts = [len(k["heads"]) for k in kept.values()]
    assert len(counts) == 6 and sum(counts) == 36 and len(set(counts)) > 1  # global: uneven per layer
    result = compact(model, kept)
    assert result.removed["heads"] == 36 and result.removed["neurons"] == 6 * 1536 // 2
    head, neuron = 3 * (384 * 32 + 32) + 384 * 32, 2 * 384 + 1  # q/k/v rows + biases + output columns; row + bias + column
    assert result.parameters_before - result.parameters_after == 36 * head + 4608 * neuron
    inputs = example_inputs(model, batch=2, sequence=32)
    assert max_abs_diff(torch_outputs(model, inputs), torch_outputs(result.model, inputs)) <= TOLERANCE
