"""The quantization engine on a tiny BERT: int8 logits close to fp32, pruned zeros exactly zero in
the int8 weights, int8 embedding tables on the same grid, QAT fine-tuning under the pruning
engine's hooks, and errors naming the key."""
import copy

import openvino  # noqa: F401  a required dependency, used lazily by prunelab.quant: missing, collection errors
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

import prunelab
from prunelab.errors import ConfigError
from prunelab.quant import FakeQuantEmbedding, FakeQuantLinear, prepare_qat, quantize, strip_qat
from prunelab.quant.grid import fake_quantize_weight, weight_codes

VOCAB = 100
BERT_LINEARS = [
    f"bert.encoder.layer.{i}.{part}"
    for i in range(2)
    for part in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
]


EMBEDDINGS = [f"bert.embeddings.{kind}_embeddings" for kind in ("word", "position", "token_type")]


def tiny_bert(seed=0):
    """The brief's tiny BERT; the classifier is scaled up so logits are O(1) (at init they are
    ~0.03, which would make every absolute tolerance meaningless)."""
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, vocab_size=VOCAB)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    return model


def batches(count, size=8, length=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(0, VOCAB, (size, length), generator=generator),
            "attention_mask": torch.ones(size, length, dtype=torch.long),
            "labels": torch.randint(0, 2, (size,), generator=generator),
        }
        for _ in range(count)
    ]


# Test inputs: another seed, another batch size and length than any calibration batch (the
# exported graph has dynamic shapes), with padding in the second half of some rows.
TEST = batches(1, size=12, length=24, seed=7)[0]
TEST["attention_mask"][6:, 12:] = 0
TEST_INPUTS = {k: v for k, v in TEST.items() if k != "labels"}


def logits(model):
    with torch.no_grad():
        return model(**TEST_INPUTS).logits


def prune_in_place(model):
    """Zeros as the pruning engine leaves them: 2:4 groups along the input dim in every encoder
    Linear, plus whole zero rows and a zero input column in one layer."""
    with torch.no_grad():
        for name in BERT_LINEARS:
            weight = model.get_submodule(name).weight
            groups = weight.view(weight.shape[0], -1, 4)
            smallest = groups.abs().argsort(dim=-1)[..., :2]
            groups.scatter_(-1, smallest, 0.0)
        dense = model.bert.encoder.layer[0].intermediate.dense.weight
        dense[3] = 0
        dense[100:108] = 0
        dense[:, 5] = 0
    return model


@pytest.fixture(scope="module")
def pruned():
    return prune_in_place(tiny_bert())


@pytest.fixture(scope="module")
def quantized(pruned):
    """One int8 model per approach that needs no training (building one takes a few seconds)."""
    return {
        "dynamic": quantize(pruned, "dynamic", batches(1), num_threads=1),
        "static": quantize(pruned, "static", batches(4), num_calibration_samples=24, num_threads=1),
    }


# ------------------------------------------------------------------------------ accuracy
# Tolerance, relative to the largest fp32 logit. int8 rounding moves each weight (and embedding
# table entry) by at most half a step (0.4% of its row's largest value) and each static input by
# half a step of its calibrated range (0.2%, plus clipping where a test input leaves that range);
# through 7 quantized matmuls per path this is measured, on this model over seeds 0-3, as
# 1.4-1.8% of the logit scale for dynamic and 1.9-3.3% for static (per-tensor ranges from 24
# random examples), with int8 embedding tables (the default); with float32 tables
# (embeddings=False) it was 1.2-1.6% and 1.5-4.3%. The tolerances are about twice the worst
# measured case. The float export itself is exact
# (test_the_float_export_matches_torch_on_other_shapes_and_padding), so all of this error is
# int8 rounding.
RELATIVE_TOLERANCE = {"dynamic": 0.04, "static": 0.09}


@pytest.mark.parametrize("approach", ["dynamic", "static"])
def test_int8_logits_are_close_to_fp32_logits(pruned, quantized, approach):
    reference = logits(pruned)
    int8 = quantized[approach](**TEST).logits  # labels in the batch are ignored
    assert int8.shape == reference.shape == (12, 2)
    scale = reference.abs().max()
    assert scale > 0.5, "logits should be O(1) for the relative tolerance to mean something"
    error = (int8 - reference).abs().max() / scale
    assert error < RELATIVE_TOLERANCE[approach], f"{approach}: max |int8 - fp32| is {error:.2%} of the largest logit"
    assert error > 0, "int8 logits identical to fp32: nothing was quantized"
    assert quantized[approach].predict(TEST_INPUTS).logits.equal(int8)


def test_the_float_export_matches_torch_on_other_shapes_and_padding(pruned):
    """The traced graph has dynamic batch and length and honours the attention mask: exported
    with 8 x 16 unpadded inputs, it reproduces torch on 12 x 24 padded ones."""
    from prunelab.quant import backend

    example = {k: v for k, v in batches(1)[0].items() if k != "labels"}
    compiled = backend.compile_model(backend.convert(pruned, example), {"INFERENCE_NUM_THREADS": 1})
    reference = logits(pruned)
    assert float((torch.from_numpy(compiled(TEST_INPUTS)[0]) - reference).abs().max()) < 1e-5


def test_quantize_leaves_the_torch_model_untouched(pruned, quantized):
    assert all(type(pruned.get_submodule(name)) is nn.Linear for name in BERT_LINEARS)
    assert [name for name, _ in pruned.named_buffers() if "act_" in name] == []


# ---------------------------------------------------------------------------- zeros survive
@pytest.mark.parametrize("approach", ["dynamic", "static"])
def test_pruned_zeros_are_exactly_zero_in_the_int8_weights(pruned, quantized, approach):
    stored = quantized[approach].int8_weights()
    assert sorted(stored) == sorted([*BERT_LINEARS, "bert.pooler.dense", "classifier"])
    for name in BERT_LINEARS:
        weight = pruned.get_submodule(name).weight.detach()
        codes = torch.from_numpy(stored[name])
        assert codes.dtype == torch.int8 and codes.shape == weight.shape
        assert bool((codes[weight == 0] == 0).all()), f"{name}: a pruned weight has a nonzero int8 code"
        # The stored codes are exactly the grid QAT simulates (one rounding rule everywhere).
        assert torch.equal(codes, weight_codes(weight)), name
        # 2:4 holds in int8: every group of 4 along the input dim has at least 2 zero codes.
        assert bool(((codes.view(codes.shape[0], -1, 4) == 0).sum(-1) >= 2).all()), name
    codes = torch.from_numpy(stored["bert.encoder.layer.0.intermediate.dense"])
    assert bool((codes[3] == 0).all()) and bool((codes[100:108] == 0).all()) and bool((codes[:, 5] == 0).all())
    # Nonzero weights mostly stay nonzero (only those under half a step round to 0).
    weight = pruned.bert.encoder.layer[0].output.dense.weight.detach()
    codes = torch.from_numpy(stored["bert.encoder.layer.0.output.dense"])
    assert float(codes[weight != 0].ne(0).float().mean()) > 0.95


@pytest.mark.parametrize("approach", ["dynamic", "static"])
def test_embedding_tables_are_stored_as_int8_codes_on_the_weight_grid(pruned, quantized, approach):
    """Word, position and token type tables: int8 codes per row (the same grid as the Linear
    weights), read back from the graph; the padding row (all zeros) stays exactly zero."""
    int8 = quantized[approach]
    assert int8.quantized_embeddings == tuple(EMBEDDINGS)
    tables = int8.int8_embeddings()
    assert sorted(tables) == sorted(EMBEDDINGS)
    for name in EMBEDDINGS:
        weight = pruned.get_submodule(name).weight.detach()
        codes = torch.from_numpy(tables[name])
        assert codes.dtype == torch.int8 and codes.shape == weight.shape
        assert torch.equal(codes, weight_codes(weight)), name
    padding = pruned.config.pad_token_id
    assert bool((pruned.bert.embeddings.word_embeddings.weight[padding] == 0).all())
    assert bool((torch.from_numpy(tables[EMBEDDINGS[0]])[padding] == 0).all())
    # The Linear read-back is unchanged: tables are not mistaken for Linear weights.
    assert not set(tables) & set(int8.int8_weights())


def test_int8_tables_compute_exactly_what_torch_computes_with_rounded_tables(pruned):
    """The int8 tables alone (every Linear float), exported as quantize exports them: the graph
    (int8 constant -> f32 -> times the row scales -> Gather) reproduces the torch model with
    FakeQuantEmbedding tables to float precision, and the rounding of the tables costs little
    (measured 0.5% of the logit scale)."""
    from prunelab.quant import backend
    from prunelab.quant.convert import _freeze
    from prunelab.quant.qat import attach_fake_quant_embeddings

    rounded = copy.deepcopy(pruned)
    assert attach_fake_quant_embeddings(rounded) == EMBEDDINGS
    assert all(isinstance(rounded.get_submodule(name), FakeQuantEmbedding) for name in EMBEDDINGS)
    expected = logits(rounded)
    _freeze(rounded)  # int8 codes + scales as buffers: bit for bit the same tables
    assert torch.equal(logits(rounded), expected)
    graph = backend.convert(rounded, {k: v for k, v in batches(1)[0].items() if k != "labels"})
    tables = backend.int8_embeddings(graph)
    assert sorted(tables) == sorted(EMBEDDINGS) and backend.int8_weights(graph) == {}
    for name in EMBEDDINGS:
        assert torch.equal(torch.from_numpy(tables[name]), weight_codes(pruned.get_submodule(name).weight)), name
    compiled = backend.compile_model(graph, {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    assert float((torch.from_numpy(compiled(TEST_INPUTS)[0]) - expected).abs().max()) < 1e-5
    reference = logits(pruned)
    assert 0 < float((expected - reference).abs().max()) < 0.015 * float(reference.abs().max())


def test_embeddings_false_keeps_the_tables_float32(pruned, quantized):
    float_tables = quantize(pruned, "dynamic", batches(1), embeddings=False, num_threads=1)
    assert float_tables.quantized_embeddings == () and float_tables.int8_embeddings() == {}
    assert sorted(float_tables.int8_weights()) == sorted(quantized["dynamic"].int8_weights())
    # int8 tables save 3 of every 4 bytes of the tables, less one float32 scale per row and the
    # graph text of the three dequantization chains (measured 3.8 kB of model.xml).
    tables = [pruned.get_submodule(name).weight for name in EMBEDDINGS]
    saving = sum(3 * w.numel() - 4 * w.shape[0] for w in tables)
    assert saving - 8000 < float_tables.size_bytes - quantized["dynamic"].size_bytes <= saving
    reference = logits(pruned)
    error = float((float_tables(**TEST).logits - reference).abs().max() / reference.abs().max())
    assert 0 < error < RELATIVE_TOLERANCE["dynamic"]


def test_int8_codes_times_scales_are_the_fake_quantized_weights_bit_for_bit():
    """What the graph stores (codes, scales) dequantizes to exactly what QAT computes with, also
    where weight / scale lies within float32 rounding of a half step (a few per 10 million)."""
    from prunelab.quant.grid import weight_scales

    weight = torch.randn(4096, 384, generator=torch.Generator().manual_seed(0)) * 0.02
    weight[7] = 0
    scales = weight_scales(weight)
    codes = weight_codes(weight)
    assert torch.equal(codes.float() * scales[:, None], fake_quantize_weight(weight))
    assert bool((codes[weight == 0] == 0).all()) and int(codes.abs().max()) == 127


def test_fake_quantized_weights_keep_zeros_and_lie_on_the_int8_grid():
    weight = torch.randn(8, 16)
    weight[2] = 0  # a whole pruned row: scale clamps, no NaN
    weight[:, ::4] = 0
    rounded = fake_quantize_weight(weight)
    assert bool((rounded[weight == 0] == 0).all()) and not bool(rounded.isnan().any())
    steps = weight.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
    assert torch.allclose(rounded / steps, torch.round(rounded / steps), atol=1e-4)
    assert float((rounded - weight).abs().max()) <= float(steps.max()) / 2 + 1e-7


# ------------------------------------------------------------------------- QAT + pruning
PRUNING = {
    "pattern": "2:4",
    "target_sparsity": 0.5,
    "pruning_type": "snip_momentum",
    "start_step": 1,
    "end_step": 3,
    "pruning_frequency": 1,
}
STEPS = 7


def fine_tune(model, pruning, optimizer, steps, check):
    data = batches(steps, seed=3)
    model.train()
    pruning.on_train_begin()
    for step in range(steps):
        pruning.on_step_begin(step)
        model(**data[step]).loss.backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)
        check(step)
    pruning.on_train_end()
    model.eval()


@pytest.mark.parametrize("order", ["qat_first", "pruning_first"])
def test_qat_fine_tuning_keeps_pruned_weights_exactly_zero_and_masks_in_pattern(order):
    model = tiny_bert(seed=1)
    if order == "qat_first":  # the documented order
        prepare_qat(model)
        pruning = prunelab.prepare_pruning(model, PRUNING)
    else:
        pruning = prunelab.prepare_pruning(model, PRUNING)
        prepare_qat(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ops = pruning.groups[0].ops
    # The pruning engine still finds every encoder Linear (a FakeQuantLinear is an nn.Linear),
    # and prepare_qat changed modules in place: the engine, the model and the optimizer hold
    # the same module and weight objects.
    assert [op.name for op in ops] == BERT_LINEARS
    assert all(isinstance(op.module, FakeQuantLinear) and op.module is model.get_submodule(op.name) for op in ops)
    assert {id(op.weight) for op in ops} <= {id(p) for group in optimizer.param_groups for p in group["params"]}
    # The embedding tables train int8-rounded too (prepare_qat's default), same Parameter objects.
    tables = {name: model.get_submodule(name) for name in EMBEDDINGS}
    assert all(isinstance(table, FakeQuantEmbedding) for table in tables.values())
    assert {id(t.weight) for t in tables.values()} <= {id(p) for group in optimizer.param_groups for p in group["params"]}
    before = {name: table.weight.detach().clone() for name, table in tables.items()}
    masks = {}

    def check(step):
        for op in ops:
            assert bool((op.weight[op.mask == 0] == 0).all()), f"step {step}: pruned weight of {op.name} moved"
        if step >= PRUNING["end_step"]:  # masks are final: same pattern every step after
            for op in ops:
                if op.name in masks:
                    assert torch.equal(op.mask, masks[op.name]), f"step {step}: mask of {op.name} changed"
                masks[op.name] = op.mask.clone()

    fine_tune(model, pruning, optimizer, STEPS, check)
    assert pruning.step == STEPS
    for op in ops:
        groups = (op.mask == 0).view(op.mask.shape[0], -1, 4).sum(-1)
        assert bool((groups == 2).all()), f"{op.name}: mask is not 2:4"
        assert bool((op.weight[op.mask == 0] == 0).all())
    assert pruning.report()["pruned_ops_sparsity"] == pytest.approx(0.5)
    # QAT really ran: input ranges were observed during training.
    assert all(bool(op.module.act_observed) and float(op.module.act_high) > float(op.module.act_low) for op in ops)

    int8 = quantize(model, "qat", example_batch=TEST_INPUTS, num_threads=1)
    stored = int8.int8_weights()
    for op in ops:
        codes = torch.from_numpy(stored[op.name])
        assert bool((codes[op.mask == 0] == 0).all()), f"{op.name}: a pruned weight has a nonzero int8 code"
        assert torch.equal(codes, weight_codes(op.weight)), op.name
    stored_tables = int8.int8_embeddings()
    assert int8.quantized_embeddings == tuple(EMBEDDINGS) and sorted(stored_tables) == sorted(EMBEDDINGS)
    for name, table in tables.items():
        assert not torch.equal(table.weight, before[name]), f"{name} did not train"  # gradients reached the table
        assert torch.equal(torch.from_numpy(stored_tables[name]), weight_codes(table.weight)), name
    # Converted with exactly the rounding trained with: the int8 model matches the fake-quantized
    # torch model up to float summation order (an input rounding flipping at most one step).
    reference = logits(model)
    assert float((int8(**TEST).logits - reference).abs().max()) < 1e-3 * float(reference.abs().max()) + 1e-5


def test_strip_qat_gives_back_plain_linears_with_the_same_parameters():
    model = tiny_bert()
    weights = {name: model.get_submodule(name).weight for name in BERT_LINEARS + EMBEDDINGS}
    keys = set(model.state_dict())
    before = logits(model)
    prepare_qat(model, excluded_op_names=["classifier", "pooler"])
    assert type(model.classifier) is nn.Linear
    assert all(isinstance(model.get_submodule(n), FakeQuantLinear) for n in BERT_LINEARS)
    assert all(isinstance(model.get_submodule(n), FakeQuantEmbedding) for n in EMBEDDINGS)
    assert "bert.encoder.layer.0.attention.self.query.act_low" in model.state_dict()
    assert not torch.equal(logits(model), before)
    strip_qat(model)
    plain = {n: nn.Embedding if n in EMBEDDINGS else nn.Linear for n in weights}
    assert all(type(model.get_submodule(n)) is plain[n] and model.get_submodule(n).weight is w for n, w in weights.items())
    assert set(model.state_dict()) == keys
    assert torch.equal(logits(model), before)


def test_qat_with_float_embedding_tables_rounds_them_at_conversion_or_keeps_them():
    """prepare_qat(embeddings=False): the tables train in float32; quantize(..., "qat") then
    rounds them post-training (embeddings=True, the default) or keeps them float32."""
    model = prepare_qat(tiny_bert(), embeddings=False)
    assert all(type(model.get_submodule(n)) is nn.Embedding for n in EMBEDDINGS)
    with torch.no_grad():
        model.train()(**batches(1)[0])  # input ranges, as one training step would observe them
    model.eval()
    rounded = quantize(model, "qat", example_batch=TEST_INPUTS, num_threads=1)
    assert sorted(rounded.int8_embeddings()) == sorted(EMBEDDINGS)
    assert all(type(model.get_submodule(n)) is nn.Embedding for n in EMBEDDINGS)  # the model is untouched
    kept = quantize(model, "qat", example_batch=TEST_INPUTS, num_threads=1, embeddings=False)
    assert kept.int8_embeddings() == {} and sorted(kept.int8_weights()) == sorted(rounded.int8_weights())
    reference = logits(model)
    assert float((kept(**TEST).logits - reference).abs().max()) < 1e-3 * float(reference.abs().max()) + 1e-5


def test_qat_state_resumes_from_a_checkpoint_and_trains_under_autocast():
    model = prepare_qat(tiny_bert())
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: inputs arrive as bf16
        loss = model(**batches(1)[0]).loss
    loss.backward()
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.weight.grad is not None and query.has_input_range()
    state = model.state_dict()
    resumed = prepare_qat(tiny_bert(seed=5))
    assert not resumed.bert.encoder.layer[0].attention.self.query.has_input_range()
    resumed.load_state_dict(state)
    again = resumed.bert.encoder.layer[0].attention.self.query
    assert again.has_input_range() and torch.equal(again.act_high, query.act_high)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"approach": "static"}, r"^calibration_batches: approach='static' needs at least one calibration batch .*got none"),
        ({"approach": "static", "calibration_batches": []}, r"^calibration_batches: .*got an empty iterable"),
        ({"approach": "dynamic", "num_calibration_samples": 0}, r"^num_calibration_samples=0: must be a positive"),
        ({"approach": "static", "calibration_batches": batches(1), "num_calibration_samples": -5}, r"^num_calibration_samples=-5:"),
        ({"approach": "static", "num_calibration_samples": True}, r"^num_calibration_samples=True:"),
        ({"approach": "int4"}, r"^approach='int4': the quantization backend \(OpenVINO, CPU\) can do dynamic, static, qat"),
        ({"approach": "none"}, r"^approach='none': .*'none' means: do not call quantize\(\)"),
        ({"approach": "qat"}, r"^approach='qat': the model was not prepared with prepare_qat"),
        ({"approach": "dynamic", "op_names": ["decoder"]}, r"^op_names=\['decoder'\], excluded_op_names=\[\]: no nn.Linear"),
        ({"approach": "dynamic", "op_names": ["("]}, r"^op_names entry '\(' is not a valid regular expression"),
        ({"approach": "dynamic", "num_threads": 0}, r"^num_threads=0"),
        ({"approach": "dynamic", "embeddings": "yes"}, r"^embeddings='yes': must be true or false"),
        (
            {"approach": "dynamic", "calibration_batches": [{"input_ids": [1, 2]}]},
            r"^calibration_batches\[0\]\['input_ids'\]: expected a tensor",
        ),
    ],
)
def test_bad_requests_raise_value_error_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize(tiny_bert(), **kwargs)


def test_qat_mismatches_raise_value_error_naming_the_key():
    model = prepare_qat(tiny_bert())
    with pytest.raises(ValueError, match=r"^approach='static': the model was prepared with prepare_qat\(\)"):
        quantize(model, "static", batches(1))
    with pytest.raises(ValueError, match=r"^approach='qat': 14 layer\(s\) never saw a training forward pass"):
        quantize(model, "qat")
    with pytest.raises(ValueError, match=r"^embeddings=False: the model was prepared with prepare_qat\(embeddings=True\)"):
        quantize(model, "qat", embeddings=False)
    with pytest.raises(ValueError, match=r"^op_names/excluded_op_names: for approach='qat'"):
        quantize(model, "qat", op_names=["query"])
    with pytest.raises(ValueError, match=r"^model: it already carries FakeQuantLinear modules"):
        prepare_qat(model)
    with pytest.raises(ValueError, match=r"^embeddings=0: must be true or false"):
        prepare_qat(tiny_bert(), embeddings=0)


def test_a_batch_with_an_input_the_int8_model_lacks_is_refused(quantized):
    batch = {**TEST_INPUTS, "token_type_ids": torch.zeros_like(TEST_INPUTS["input_ids"])}
    with pytest.raises(ValueError, match=r"^batch\['token_type_ids'\]: not an input of this quantized model"):
        quantized["dynamic"].predict(batch)
    with pytest.raises(ValueError, match=r"^batch\['attention_mask'\]: missing"):
        quantized["dynamic"].predict({"input_ids": TEST_INPUTS["input_ids"]})


def test_num_calibration_samples_cuts_the_calibration_data():
    from prunelab.quant.convert import take_samples

    taken = take_samples(batches(4, size=8), 20)
    assert [b["input_ids"].shape[0] for b in taken] == [8, 8, 4]
    assert all("labels" not in b for b in taken)
    assert [b["input_ids"].shape[0] for b in take_samples(batches(2, size=8), None)] == [8, 8]


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, use_cache=False)).eval()


def test_gpt2_conv1d_layers_become_int8_like_linears():
    model = _tiny_gpt2()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    quantized = quantize(model, "dynamic", example_batch=batch)
    conv1d = [name for name, module in model.named_modules() if type(module).__name__ == "Conv1D"]
    # The graph's path for GPT-2 starts with the tracer's "model."; the names given are the modules'.
    stored = quantized.int8_weights()
    assert len(conv1d) == 8 and set(conv1d) <= set(stored) <= set(quantized.quantized_layers)
    # the int8 codes of each layer are those of its [out, in] weight, the transpose of Conv1D's
    codes = weight_codes(model.transformer.h[0].mlp.c_fc.weight.detach().t())
    assert torch.equal(torch.as_tensor(stored["transformer.h.0.mlp.c_fc"]), codes)
    with torch.no_grad():
        reference = model(**batch).logits
    error = (quantized(**batch).logits - reference).abs().max() / reference.abs().max()
    assert 0 < error < RELATIVE_TOLERANCE["dynamic"]


def test_qat_refuses_gpt2_conv1d_layers_in_one_line():
    with pytest.raises(ConfigError, match=r"approach='qat': the model's 8 Conv1D layers \(transformer.h.0.attn.c_attn"):
        prepare_qat(_tiny_gpt2())
