"""Coupled units in the engine: attention heads and FFN neurons pruned whole across their modules,
on tiny BERT, RoBERTa and DistilBERT models, with every criterion, scope and the checkpoint."""
import io
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

import prunelab
from prunelab.sparsity.coupling import find_structures
from prunelab.sparsity.patterns import parse_pattern

CONF = Path(__file__).resolve().parents[1] / "conf"
HEADS, HEAD_SIZE, HIDDEN, FFN = 4, 16, 64, 256


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=FFN,
                        vocab_size=100)
    return BertForSequenceClassification(config)


def tiny_roberta(seed=0):
    torch.manual_seed(seed)
    config = RobertaConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=FFN,
                           vocab_size=100, max_position_embeddings=64)
    return RobertaForSequenceClassification(config)


def tiny_distilbert(seed=0):
    torch.manual_seed(seed)
    config = DistilBertConfig(dim=HIDDEN, n_layers=2, n_heads=HEADS, hidden_dim=FFN, vocab_size=100)
    return DistilBertForSequenceClassification(config)


# Module names of one layer, per family: (q, k, v, attention output, FFN in, FFN out).
NAMES = {
    "bert": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense"),
    "distilbert": ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"),
}


def layer_modules(model, layer):
    family = "distilbert" if "transformer.layer" in layer else "bert"
    return [model.get_submodule(f"{layer}.{name}") for name in NAMES[family]]


def assert_coupled_zeros(model, kept):
    """Every unit outside ``kept`` is zero in all its modules; every kept unit has nonzero weights."""
    for layer, kinds in kept.items():
        q, k, v, out, ffn_in, ffn_out = layer_modules(model, layer)
        for head in range(HEADS):
            rows = slice(head * HEAD_SIZE, (head + 1) * HEAD_SIZE)
            pieces = [m.weight[rows] for m in (q, k, v)] + [m.bias[rows] for m in (q, k, v)] + [out.weight[:, rows]]
            zero = all(bool((piece == 0).all()) for piece in pieces)
            assert zero == (head not in kinds.get("heads", range(HEADS))), (layer, head)
        for neuron in range(FFN):
            pieces = [ffn_in.weight[neuron], ffn_in.bias[neuron : neuron + 1], ffn_out.weight[:, neuron]]
            zero = all(bool((piece == 0).all()) for piece in pieces)
            assert zero == (neuron not in kinds.get("neurons", range(FFN))), (layer, neuron)


def batches(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 100, (8, 12), generator=generator), torch.randint(0, 2, (8,), generator=generator))
            for _ in range(count)]


def train(model, pruning, optimizer, data, after_step=None):
    for ids, labels in data:
        pruning.on_step_begin(pruning.step)
        F.cross_entropy(model(input_ids=ids).logits, labels).backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)
        if after_step:
            after_step()


BOTH = {
    "pruning_type": "snip_momentum",
    "start_step": 2,
    "end_step": 8,
    "pruning_frequency": 2,
    "max_sparsity_ratio_per_op": 1.0,
    "pruning_configs": [{"pattern": "head", "target_sparsity": 0.5}, {"pattern": "neuron", "target_sparsity": 0.6}],
}


@pytest.mark.parametrize("build", [tiny_bert, tiny_roberta, tiny_distilbert])
def test_pruned_heads_and_neurons_stay_zero_in_every_coupled_module_through_adamw(build):
    model = build()
    pruning = prunelab.prepare_pruning(model, BOTH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    pruning.on_train_begin()
    history = []

    def check():
        kept = pruning.kept_units()
        assert_coupled_zeros(model, kept)
        for earlier in history:  # masks only grow
            for layer, kinds in kept.items():
                for kind, units in kinds.items():
                    assert set(units) <= set(earlier[layer][kind])
        history.append(kept)

    train(model, pruning, optimizer, batches(10), after_step=check)
    pruning.on_train_end()
    kept = pruning.kept_units()
    assert sum(len(k["heads"]) for k in kept.values()) == 4  # half of 2 x 4 heads
    assert sum(len(k["neurons"]) for k in kept.values()) == round(0.4 * 2 * FFN)
    report = pruning.report()
    assert report["groups"][0]["ops"][:4] == [name for name in report["ops"]][:4]
    assert report["units"] == {
        layer: {"heads": {"kept": len(k["heads"]), "total": HEADS}, "neurons": {"kept": len(k["neurons"]), "total": FFN}}
        for layer, k in kept.items()
    }
    attention_ops = [name for name, op in report["ops"].items() if op["pattern"] == "head"]
    assert len(attention_ops) == 8
    zeros = sum(report["ops"][name]["zeros"] for name in attention_ops)
    assert zeros == sum(report["ops"][name]["numel"] for name in attention_ops) // 2  # weights only, exactly half


def test_the_coupling_table_finds_each_familys_modules():
    expected = {
        tiny_bert: ("bert", "bert.encoder.layer.1"),
        tiny_roberta: ("bert", "roberta.encoder.layer.1"),
        tiny_distilbert: ("distilbert", "distilbert.transformer.layer.1"),
    }
    for build, (architecture, layer) in expected.items():
        model = build()
        heads, _ = find_structures(model, "head")
        neurons, _ = find_structures(model, "neuron")
        assert [s.architecture for s in heads + neurons] == [architecture] * 4
        assert (heads[1].layer, heads[1].units, heads[1].unit_size) == (layer, HEADS, HEAD_SIZE)
        assert (neurons[1].units, neurons[1].unit_size) == (FFN, 1)
        q, k, v, out, ffn_in, ffn_out = layer_modules(model, layer)
        modules = dict(model.named_modules())
        assert [modules[n] for n in heads[1].rows] == [q, k, v] and [modules[n] for n in heads[1].cols] == [out]
        assert [modules[n] for n in neurons[1].rows] == [ffn_in] and [modules[n] for n in neurons[1].cols] == [ffn_out]


def test_global_scope_prunes_layers_unevenly_and_a_layer_can_lose_every_head():
    model = tiny_bert()
    with torch.no_grad():  # layer 1's attention is 100x smaller: magnitude takes its heads first
        for module in layer_modules(model, "bert.encoder.layer.1")[:4]:
            module.weight.mul_(0.01)
    config = {"pattern": "head", "pruning_type": "magnitude", "target_sparsity": 0.5, "max_sparsity_ratio_per_op": 1.0}
    pruning = prunelab.prepare_pruning(model, config)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    kept = pruning.kept_units()
    assert kept == {"bert.encoder.layer.0": {"heads": [0, 1, 2, 3]}, "bert.encoder.layer.1": {"heads": []}}
    assert_coupled_zeros(model, kept)
    # The layer's attention output is now exactly LayerNorm(bias + input): the heads contribute nothing.
    attention = model.bert.encoder.layer[1].attention.eval()
    hidden = torch.randn(2, 5, HIDDEN)
    with torch.no_grad():
        expected = attention.output.LayerNorm(attention.output.dense.bias + hidden)
        assert torch.allclose(attention(hidden)[0], expected, atol=1e-6)

    # Local scope: the same count in every layer; the default max ratio (0.98) keeps one head per layer.
    local = prunelab.prepare_pruning(tiny_bert(), {**config, "pruning_scope": "local"})
    local.on_train_begin()
    local.on_step_begin(0)
    assert [len(k["heads"]) for k in local.kept_units().values()] == [2, 2]
    capped = prunelab.prepare_pruning(tiny_bert(), {**config, "target_sparsity": 0.9, "max_sparsity_ratio_per_op": 0.98})
    capped.on_train_begin()
    capped.on_step_begin(0)
    assert [len(k["heads"]) for k in capped.kept_units().values()] == [1, 1]


@pytest.mark.parametrize("pruning_type", ["magnitude", "gradient", "snip", "snip_momentum", "movement"])
def test_every_criterion_scores_whole_units(pruning_type):
    model = tiny_bert()
    config = {"pattern": "neuron", "pruning_type": pruning_type, "target_sparsity": 0.25, "start_step": 3, "end_step": 3}
    pruning = prunelab.prepare_pruning(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    pruning.on_train_begin()
    train(model, pruning, optimizer, batches(4))
    kept = pruning.kept_units()
    assert sum(len(k["neurons"]) for k in kept.values()) == round(0.75 * 2 * FFN)
    assert_coupled_zeros(model, kept)


def test_a_unit_score_is_the_mean_over_all_its_modules():
    model = tiny_bert()
    with torch.no_grad():
        for layer in ("bert.encoder.layer.0", "bert.encoder.layer.1"):
            q, k, v, out, ffn_in, ffn_out = layer_modules(model, layer)
            for module in (q, k, v, out, ffn_in, ffn_out):
                module.weight.fill_(1.0)
            # Head 2's output columns alone are small, and neuron 7's FFN-out column alone: each is
            # the weakest unit only if all of its modules count.
            out.weight[:, 2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0.01
            ffn_out.weight[:, 7] = 0.01
    config = {"pruning_type": "magnitude", "pruning_scope": "local", "pruning_configs": [
        {"pattern": "head", "target_sparsity": 0.25}, {"pattern": "neuron", "target_sparsity": 1 / FFN}]}
    pruning = prunelab.prepare_pruning(model, config)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    for kinds in pruning.kept_units().values():
        assert kinds["heads"] == [0, 1, 3]
        assert kinds["neurons"] == [n for n in range(FFN) if n != 7]


def test_progressive_head_pruning_resumes_exactly_from_a_checkpoint():
    config = {**BOTH, "pruning_type": "snip_momentum_progressive", "pruning_frequency": 4, "end_step": 12}
    data = batches(14)

    def prepared(seed):
        model = tiny_bert(seed).eval()  # no dropout: the continued and the resumed run see the same forward
        pruning = prunelab.prepare_pruning(model, config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        pruning.on_train_begin()
        return model, pruning, optimizer

    model, pruning, optimizer = prepared(0)
    train(model, pruning, optimizer, data[:7])
    assert pruning.groups[0].blend_start == 6  # a blend under way at the checkpoint
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "pruning": pruning.state_dict()}, saved)
    train(model, pruning, optimizer, data[7:])

    saved.seek(0)
    checkpoint = torch.load(saved)
    other, resumed, other_optimizer = prepared(1)
    other.load_state_dict(checkpoint["model"])
    other_optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["pruning"])
    resumed.on_train_begin()
    train(other, resumed, other_optimizer, data[7:])
    assert resumed.kept_units() == pruning.kept_units()
    for (name, param), twin in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(param, twin), name
    assert_coupled_zeros(model, pruning.kept_units())
    entry = checkpoint["pruning"]["groups"][0]["ops"]["bert.encoder.layer.0:heads"]
    assert entry["mask"].shape == (HEADS,) and entry["members"][0] == "bert.encoder.layer.0.attention.self.query"


def test_groups_claim_only_their_units_modules_and_incomplete_units_are_refused_or_left_dense():
    model = tiny_bert()
    # A head group and a 4x1 group on the FFN: no overlap, since the head group takes only attention modules.
    mixed = {"pruning_type": "magnitude", "pruning_configs": [
        {"pattern": "head", "target_sparsity": 0.5}, {"pattern": "4x1", "op_names": ["intermediate", r"layer\.\d+\.output"]}]}
    pruning = prunelab.prepare_pruning(model, mixed)
    assert len(pruning.groups[0].op_names) == 8 and len(pruning.groups[1].op_names) == 4
    with pytest.raises(ValueError, match=r"claimed by pruning groups 0 and 1"):
        prunelab.prepare_pruning(model, {**mixed, "pruning_configs": [{"pattern": "head"}, {"pattern": "4x1"}]})
    with pytest.raises(ValueError, match=r"pattern head finds no complete attention head among its 2 ops.*Known layouts"):
        prunelab.prepare_pruning(model, {"pattern": "head", "op_names": ["query"], "pruning_type": "magnitude"})
    with pytest.warns(UserWarning, match=r"do not fit.*layer.1.attention.self.query"):
        partial = prunelab.prepare_pruning(model, {"pattern": "head", "pruning_type": "magnitude",
                                                   "op_names": [r"layer\.0\.attention", "layer.1.attention.self.query"]})
    assert [op.name for op in partial.groups[0].ops] == ["bert.encoder.layer.0:heads"]


def test_head_count_comes_from_the_model_config_or_the_key():
    model = tiny_bert()
    model.config.num_attention_heads = 3
    keys = {"pattern": "head", "pruning_type": "magnitude"}
    with pytest.raises(ValueError, match=r"not a multiple of num_attention_heads=3"):
        prunelab.prepare_pruning(model, keys)
    pruning = prunelab.prepare_pruning(model, {"pattern": "head", "num_attention_heads": 8, "pruning_type": "magnitude",
                                               "target_sparsity": 0.5})
    assert [op.units for op in pruning.groups[0].ops] == [8, 8]
    body = torch.nn.Module()  # a model without a config
    body.layer = tiny_bert().bert.encoder.layer
    with pytest.raises(ValueError, match=r"no config.num_attention_heads; set the pruning key num_attention_heads"):
        prunelab.prepare_pruning(body, keys)
    with pytest.raises(ValueError, match=r"num_attention_heads=0 must be a positive integer"):
        prunelab.prepare_pruning(body, {**keys, "num_attention_heads": 0})


def test_pattern_names_configs_and_the_dense_measurement():
    assert parse_pattern("mha").name == "head" and parse_pattern(" Neuron ").name == "neuron"
    for name in ("head", "neuron"):
        text = (CONF / "pattern" / f"{name}.yaml").read_text()
        assert text.startswith("# @package pruning") and yaml.safe_load(text) == {"pattern": name}
    with warnings.catch_warnings():  # target 0 (how the app measures dense runs): no update, no warning
        warnings.simplefilter("error")
        dense = prunelab.prepare_pruning(tiny_bert(), {"pattern": "head", "target_sparsity": 0.0, "pruning_type": "magnitude"})
    assert dense.report()["pruned_ops_sparsity"] == 0.0
    assert dense.kept_units()["bert.encoder.layer.0"] == {"heads": [0, 1, 2, 3]}
