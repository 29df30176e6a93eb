"""The export group end to end on the tiny model: heads and neurons pruned during fine-tuning, cut
out after saving, and the compacted model computing what the saved (masked) model computes."""
import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from prunelab.app.run import run
from prunelab.errors import ConfigError
from prunelab.export import load_compacted
from prunelab.quant import load_quantized


def test_heads_and_neurons_are_cut_out_exactly(make_config, tmp_path):
    run(make_config("task=sst2", "max_train_samples=64", "num_train_epochs=2", "experiment=heads-neurons",
                    "export.backends=[torch]", "export.latency_runs=0"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    assert summary["pattern"] == "head+neuron" and summary["notes"][-1].startswith("export: ")
    # tiny BERT: 2 layers x 2 heads and 2 x 256 neurons; half of each go.
    units = summary["sparsity"]["units"]
    assert sum(layer["heads"]["kept"] for layer in units.values()) == 2
    assert sum(layer["neurons"]["kept"] for layer in units.values()) == 256
    assert report["structure_removed"] and report["parameters"]["after"] < report["parameters"]["before"]
    masked = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    compacted = load_compacted(tmp_path / "export" / "model").eval()
    ids = torch.randint(5, 60, (3, 20), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        assert torch.allclose(compacted(**batch).logits, masked(**batch).logits, atol=1e-4)


def test_export_needs_the_saved_model(make_config, tmp_path):
    with pytest.raises(ConfigError) as caught:
        run(make_config("export=compact", "save_model=false"), tmp_path)
    assert str(caught.value) == "export: works on the saved model; set save_model=true, or export=none"


@pytest.mark.parametrize("overrides, message", [
    (["export.backends=[torch,tensorrt]"],
     "export.backends=[torch, tensorrt]: no backend 'tensorrt'; allowed: torch, onnxruntime, openvino"),
    (["export.backends=[torch,torch]"],
     "export.backends=[torch, torch]: give each backend once, at least one of: torch, onnxruntime, openvino"),
    (["export.backends=[openvino]"],
     "export.backends: openvino runs the int8 model of the compacted one, which quant=dynamic or quant=static makes"),
    (["export.backends=[openvino]", "quant=qat"],
     "export.backends: openvino runs the int8 model of the compacted one, which quant=dynamic or quant=static makes"),
])
def test_bad_backends_are_refused_in_one_line_before_anything_loads(make_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as caught:
        run(make_config("export=compact", *overrides), tmp_path)
    assert str(caught.value) == message
    # Refused by the config check: only the refusal's summary.json is written.
    assert [path.name for path in tmp_path.iterdir()] == ["summary.json"]


def test_static_int8_of_the_compacted_model_matches_int8_of_the_masked_one(make_config, tmp_path):
    run(make_config("task=sst2", "max_train_samples=64", "num_train_epochs=2", "experiment=heads-neurons",
                    "export.backends=[torch,openvino]", "export.latency_runs=2", "quant=static",
                    "quant.num_calibration_samples=32"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    int8_files = (tmp_path / "export" / "quantized").iterdir()
    assert report["backends"] == ["torch", "openvino"] and report["onnx"] is None
    assert report["quantized"]["approach"] == "static"
    assert report["quantized"]["size_bytes"] == sum(path.stat().st_size for path in int8_files)
    assert report["quantized"]["max_abs_logit_diff_to_float"] > 0  # int8 rounding, reported
    assert "int8 (static) of the compacted model" in summary["notes"][-1]
    # The compacted float model scores what the masked model scored in training; removed units were
    # exact zeros, so the int8 of either model sees the same activation ranges and weight codes.
    assert report["metrics"]["compacted"] == summary["metrics"]
    assert report["metrics"]["int8"]["eval/accuracy"] == summary["quantization"]["metrics"]["eval/accuracy"]
    masked_int8 = load_quantized(tmp_path / "quantized")
    compacted_int8 = load_quantized(tmp_path / "export" / "quantized")
    ids = torch.randint(5, 60, (3, 20), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    assert torch.allclose(compacted_int8(**batch)["logits"], masked_int8(**batch)["logits"], atol=1e-3)
    assert set(report["latency"]["batch_1"]) >= {"torch_dense_ms", "torch_compacted_ms", "int8_compacted_ms",
                                                  "int8_compacted_ratio"}
