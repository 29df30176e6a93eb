"""ONNX export of any task head: the graph's outputs are the tensors of the model's output object,
by name and in order, and ONNX Runtime computes what torch computes for each of them."""
import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification

from prunelab.export import export_onnx, ort_session, run_ort
from prunelab.export.onnx_export import as_arrays, example_inputs, max_abs_diff, output_names, torch_outputs


def tiny(model_class):
    torch.manual_seed(0)
    labels = 2 if model_class is BertForQuestionAnswering else 3  # QA: a start and an end score per token
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, num_labels=labels)
    return model_class(config).eval()


@pytest.mark.parametrize("model_class, names", [
    (BertForSequenceClassification, ["logits"]),
    (BertForQuestionAnswering, ["start_logits", "end_logits"]),
    (BertForTokenClassification, ["logits"]),
])
def test_onnx_outputs_are_the_model_outputs_by_name(model_class, names, tmp_path):
    model = tiny(model_class)
    assert output_names(model, example_inputs(model, batch=2, sequence=8)) == names
    info = export_onnx(model, tmp_path / "model.onnx")
    session = ort_session(tmp_path / "model.onnx", threads=1)
    assert info["fallback_from"] is None  # the dynamo exporter took each head
    assert info["outputs"] == names == [output.name for output in session.get_outputs()]
    inputs = example_inputs(model, batch=3, sequence=11, seed=1)  # other shapes than traced
    assert max_abs_diff(torch_outputs(model, inputs), run_ort(session, inputs)) <= 1e-4


def test_only_tensors_are_outputs_and_every_runtime_reads_as_arrays():
    model = tiny(BertForQuestionAnswering)
    inputs = example_inputs(model, batch=2, sequence=8)
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)  # hidden states: a tuple, no graph output
    arrays = as_arrays(outputs)  # torch's ModelOutput (OpenVINO's outputs are a dict of tensors too)
    assert list(outputs) == ["start_logits", "end_logits", "hidden_states"] and [a.shape for a in arrays] == [(2, 8)] * 2
    assert max_abs_diff(arrays, as_arrays([a.copy() for a in arrays])) == 0.0  # ONNX Runtime's list of arrays
