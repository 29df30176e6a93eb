"""The quant group end to end on the tiny model: each approach runs from the config, is evaluated on
the eval set, keeps the pruned zeros in its int8 weights, and is saved whole and reloadable in a
fresh process."""
import json
import subprocess
import sys

import numpy as np
import openvino  # noqa: F401  a required dependency, used lazily by prunelab.quant: missing, collection errors
import pytest
from safetensors.torch import load_file

from prunelab.app.run import run
from prunelab.errors import ConfigError

# SST-2 (tiny): 96 examples, 2 epochs, pruning 2:4 at 0.5 over the second.
RUN = ["task=sst2", "max_train_samples=96", "max_eval_samples=48", "num_train_epochs=2", "learning_rate=1e-3",
       "sparsity_warm_epochs=1", "pattern=2:4"]


@pytest.fixture(scope="module", params=["dynamic", "static", "qat"])
def quantized_run(request, make_config, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"quant_{request.param}")
    overrides = [*RUN, f"quant={request.param}"]
    if request.param == "static":
        overrides.append("quant.num_calibration_samples=32")
    metrics = run(make_config(*overrides), out)
    return request.param, out, metrics


def test_the_int8_model_is_measured_beside_the_float_one(quantized_run):
    approach, out, metrics = quantized_run
    summary = json.loads((out / "summary.json").read_text())
    quantization = summary["quantization"]
    assert summary["metrics"] == metrics  # the top-level metrics stay the float model's
    assert quantization["approach"] == approach
    assert set(quantization["metrics"]) == set(metrics)
    # 48 dev sentences: the int8 model agrees with the float one to within a few of them.
    assert abs(quantization["metrics"]["eval/accuracy"] - metrics["eval/accuracy"]) <= 4 / 48
    assert 0 < quantization["size_bytes"] < quantization["float_size_bytes"]


def test_pruned_zeros_stay_zero_and_2in4_holds_in_the_int8_weights(quantized_run):
    _, out, _ = quantized_run
    from prunelab.quant import load_quantized

    int8 = load_quantized(out / "quantized").int8_weights()
    floats = load_file(out / "model" / "model.safetensors")
    pruned = [name for name in json.loads((out / "summary.json").read_text())["sparsity"]["ops"]]
    assert pruned and set(pruned) <= set(int8)
    for name in pruned:
        codes, weight = int8[name], floats[f"{name}.weight"].numpy()
        assert codes.shape == weight.shape and codes.dtype == np.int8
        assert np.all(codes[weight == 0] == 0)  # every pruned weight is code 0
        groups = (codes.reshape(codes.shape[0], -1, 4) == 0).sum(axis=-1)
        assert groups.min() >= 2  # 2 of every 4 along the input dim, in int8 too


def test_the_saved_int8_model_reloads_in_a_fresh_process(quantized_run, make_config):
    _, out, _ = quantized_run
    script = (
        "import sys, numpy as np; from prunelab.quant import load_quantized\n"
        "model = load_quantized(sys.argv[1])\n"
        "ids = np.array([[2, 10, 11, 12, 3]]); batch = dict(input_ids=ids, attention_mask=np.ones_like(ids),"
        " token_type_ids=np.zeros_like(ids))\n"
        "print(model(**batch).logits.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(out / "quantized")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch.Size([1, 2])"


def test_the_float_model_is_saved_without_fake_quantization(quantized_run):
    _, out, _ = quantized_run
    floats = load_file(out / "model" / "model.safetensors")
    assert not [key for key in floats if key.rsplit(".", 1)[-1] in ("act_low", "act_high", "act_observed")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["quant=static", "quant.num_calibration_samples=0"],
         "quant.num_calibration_samples=0: static quantization needs a positive number of training examples to calibrate on"),
        (["quant=dynamic", "+quant.num_calibration_samples=8"],
         "quant.num_calibration_samples=8: no such key for this quant option; allowed: op_names, excluded_op_names, num_threads"),
        (["quant=none", "+quant.num_threads=2"], "quant.num_threads=2: no such key for this quant option; allowed: "),
        (["quant=dynamic", "quant.num_threads=0"],
         "quant.num_threads=0: must be a positive number of CPU threads (or null: OpenVINO's default)"),
    ],
)
def test_bad_quantization_settings_fail_before_anything_loads(make_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as caught:
        run(make_config("model=bert-mini", "model.name_or_path=/nonexistent", *overrides), tmp_path)
    assert str(caught.value) == message  # refused before the (missing) model is looked for


@pytest.mark.parametrize("approach", ["dynamic", "static", "qat"])
def test_a_layer_choice_matching_nothing_fails_before_training(make_config, tmp_path, approach):
    with pytest.raises(ConfigError) as caught:
        run(make_config(f"quant={approach}", "quant.op_names=[attention.nomatch]"), tmp_path)
    assert str(caught.value) == ("quant.op_names=['attention.nomatch'], quant.excluded_op_names=[]: no nn.Linear "
                                 "of the model matches, nothing would be quantized")
    assert not (tmp_path / "metrics.jsonl").exists()  # no epoch was trained


def test_prune_once_for_all_stages_keep_the_sparse_models_zeros(make_config, tmp_path):
    """The README's walk-through on the tiny model: dense fine-tune -> a 4x1 sparse model (standing
    in for a sparse pretrained one) -> stage 1 (zeros locked, distilled from the dense model) ->
    stage 2 (the same with QAT, ending int8)."""
    from prunelab.quant import load_quantized

    def stage(name, *overrides):
        out = tmp_path / name
        run(make_config("task=sst2", "max_train_samples=48", "max_eval_samples=16", *overrides), out)
        return out

    local = ["model=bert-mini", "model.name=tiny"]  # a model directory of a previous run
    dense = stage("dense", "do_prune=false")
    sparse = stage("sparse", *local, f"model.name_or_path={dense / 'model'}", "target_sparsity=0.75")
    teacher = f"distill.teacher={dense / 'model'}"
    first = stage("stage1", *local, "experiment=pofa-stage1", f"model.name_or_path={sparse / 'model'}", teacher)
    second = stage("stage2", *local, "experiment=pofa-stage2", f"model.name_or_path={first / 'model'}", teacher)

    zeros = {key: value == 0 for key, value in load_file(sparse / "model" / "model.safetensors").items()
             if key.endswith(".weight") and "encoder" in key}
    for run_dir in (first, second):
        weights = load_file(run_dir / "model" / "model.safetensors")
        for key, mask in zeros.items():
            assert weights[key][mask].eq(0).all(), key  # every zero of the sparse start stays zero
            assert not weights[key][~mask].eq(0).any(), key  # and nothing else is pruned
    summary = json.loads((second / "summary.json").read_text())
    assert summary["quantization"]["approach"] == "qat" and summary["pruning_type"] == "pattern_lock"
    assert summary["target_sparsity"] is None
    int8 = load_quantized(second / "quantized").int8_weights()
    for key, mask in zeros.items():
        name = key.removesuffix(".weight")
        if name in int8:
            assert np.all(int8[name][mask.numpy()] == 0), name
