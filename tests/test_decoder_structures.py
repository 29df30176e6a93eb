"""Heads and neurons of decoder LLMs: Llama with grouped-query attention (a unit is a key/value head
and its two query heads), Qwen2 with query/key/value biases, GPT-2 with query/key/value fused in one
Conv1D. Found, zeroed by the engine, cut out with logits unchanged, saved and reloaded; the unit
positions are written out by hand here, independently of the coupling table."""
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.utils import logging as hf_logging

import prunelab
from prunelab.export import (
    BiasOnly,
    EmptyBlock,
    compact,
    export_onnx,
    load_compacted,
    ort_session,
    run_ort,
    save_compacted,
)
from prunelab.export.onnx_export import example_inputs, max_abs_diff, torch_outputs
from prunelab.sparsity.coupling import find_structures

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 64, 4, 2, 16, 100
GQA_FFN, GPT2_FFN = 128, 256
ATOL = 1e-5

hf_logging.set_verbosity_error()  # GPT-2's default bos/eos ids lie outside the tiny vocabulary


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         intermediate_size=GQA_FFN, num_hidden_layers=2, vocab_size=VOCAB, tie_word_embeddings=True,
                         initializer_range=0.1)
    return LlamaForCausalLM(config).eval()


def tiny_mistral(seed=0):
    torch.manual_seed(seed)
    config = MistralConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                           intermediate_size=GQA_FFN, num_hidden_layers=2, vocab_size=VOCAB, tie_word_embeddings=True,
                           initializer_range=0.1, head_dim=HEAD_DIM)
    return MistralForCausalLM(config).eval()


def tiny_qwen2(seed=0):
    torch.manual_seed(seed)
    config = Qwen2Config(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         intermediate_size=GQA_FFN, num_hidden_layers=2, vocab_size=VOCAB, tie_word_embeddings=True,
                         initializer_range=0.1)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # transformers initialises biases to 0: make them count
        for layer in model.model.layers:
            for module in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                module.bias.normal_(0, 0.5)
    return model


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(n_embd=HIDDEN, n_head=HEADS, n_layer=2, vocab_size=VOCAB, n_positions=64, initializer_range=0.1)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") and ".h." in name:
                param.normal_(0, 0.5)
    return model


BUILDERS = {"llama": tiny_llama, "mistral": tiny_mistral, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2}


def units_of(family, model, layer):
    """Every head and neuron unit of one layer, as ``{kind: [[(weight, bias or None, axis, index)]]}``
    pieces per unit, written out from the transformers layouts: ``axis`` 0 rows / 1 columns of the
    *stored* weight (GPT-2's Conv1D stores ``[in, out]``)."""
    def span(start, size):
        return torch.arange(start, start + size)

    if family == "gpt2":
        block = model.transformer.h[layer]
        attn, mlp = block.attn, block.mlp
        heads = [[(attn.c_attn.weight, attn.c_attn.bias, 1, span(third * HIDDEN + h * HEAD_DIM, HEAD_DIM))
                  for third in range(3)] + [(attn.c_proj.weight, None, 0, span(h * HEAD_DIM, HEAD_DIM))]
                 for h in range(HEADS)]
        neurons = [[(mlp.c_fc.weight, mlp.c_fc.bias, 1, span(n, 1)), (mlp.c_proj.weight, None, 0, span(n, 1))]
                   for n in range(GPT2_FFN)]
        return {"head": heads, "neuron": neurons}
    decoder = model.model.layers[layer]
    attn, mlp = decoder.self_attn, decoder.mlp
    queries = HEAD_DIM * HEADS // KV_HEADS  # query rows of one key/value group: its 2 query heads
    heads = [[(attn.q_proj.weight, attn.q_proj.bias, 0, span(g * queries, queries)),
              (attn.k_proj.weight, attn.k_proj.bias, 0, span(g * HEAD_DIM, HEAD_DIM)),
              (attn.v_proj.weight, attn.v_proj.bias, 0, span(g * HEAD_DIM, HEAD_DIM)),
              (attn.o_proj.weight, None, 1, span(g * queries, queries))]
             for g in range(KV_HEADS)]
    neurons = [[(mlp.gate_proj.weight, None, 0, span(n, 1)), (mlp.up_proj.weight, None, 0, span(n, 1)),
                (mlp.down_proj.weight, None, 1, span(n, 1))] for n in range(GQA_FFN)]
    return {"head": heads, "neuron": neurons}


def unit_is_zero(unit):
    pieces = []
    for weight, bias, axis, index in unit:
        pieces.append(weight.index_select(axis, index))
        if bias is not None:
            pieces.append(bias[index])
    return all(bool((piece == 0).all()) for piece in pieces)


@torch.no_grad()
def zero_units(family, model, layer, kind, which):
    for unit in which:
        for weight, bias, axis, index in units_of(family, model, layer)[kind][unit]:
            weight.index_fill_(axis, index, 0.0)
            if bias is not None:
                bias.index_fill_(0, index, 0.0)


def ids(seed=1, batch=3, length=10):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, inputs):
    with torch.no_grad():
        return model(input_ids=inputs).logits


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2"])
def test_find_structures_gives_one_head_and_one_neuron_structure_per_layer(family):
    model = BUILDERS[family]()
    heads, problems = find_structures(model, "head")
    neurons, more = find_structures(model, "neuron")
    assert problems == more == []
    assert [s.layer for s in heads] == [s.layer for s in neurons] == (
        ["transformer.h.0", "transformer.h.1"] if family == "gpt2" else ["model.layers.0", "model.layers.1"])
    head, neuron = heads[1], neurons[1]
    if family == "gpt2":
        prefix = "transformer.h.1"
        assert (head.architecture, head.units, head.unit_size) == ("gpt2", HEADS, HEAD_DIM)
        assert head.rows == (f"{prefix}.attn.c_attn",) and head.cols == (f"{prefix}.attn.c_proj",)
        assert [(s.axis, s.start, s.size) for s in head.slices] == [
            ("rows", 0, HEAD_DIM), ("rows", HIDDEN, HEAD_DIM), ("rows", 2 * HIDDEN, HEAD_DIM), ("cols", 0, HEAD_DIM)]
        assert head.source == head.slices[2]  # the value third
        assert neuron.units == GPT2_FFN and neuron.rows == (f"{prefix}.mlp.c_fc",) and neuron.cols == (f"{prefix}.mlp.c_proj",)
    else:
        prefix = "model.layers.1"
        assert (head.architecture, head.units, head.unit_size) == ("llama", KV_HEADS, HEAD_DIM)  # GQA: one unit per kv head
        assert head.rows == tuple(f"{prefix}.self_attn.{p}_proj" for p in "qkv") and head.cols == (f"{prefix}.self_attn.o_proj",)
        assert [s.size for s in head.slices] == [2 * HEAD_DIM, HEAD_DIM, HEAD_DIM, 2 * HEAD_DIM]
        assert neuron.units == GQA_FFN and neuron.rows == (f"{prefix}.mlp.gate_proj", f"{prefix}.mlp.up_proj")
        assert neuron.cols == (f"{prefix}.mlp.down_proj",) and {s.size for s in neuron.slices} == {1}


def cut_parameters(family, kind, count):
    """Parameters one removed unit of ``kind`` takes with it, times ``count``."""
    if family == "gpt2":
        per = 3 * HEAD_DIM * (HIDDEN + 1) + HEAD_DIM * HIDDEN if kind == "head" else (HIDDEN + 1) + HIDDEN
    else:
        bias = 1 if family == "qwen2" else 0
        queries = HEAD_DIM * HEADS // KV_HEADS
        per = (queries + 2 * HEAD_DIM) * (HIDDEN + bias) + queries * HIDDEN if kind == "head" else 3 * HIDDEN
    return per * count


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2"])
def test_zeroed_units_compact_to_equal_logits_and_fewer_parameters(family, tmp_path):
    model = BUILDERS[family]()
    heads = KV_HEADS if family != "gpt2" else HEADS
    ffn = GPT2_FFN if family == "gpt2" else GQA_FFN
    reference = logits(model, ids())
    zero_units(family, model, 0, "head", [1])
    zero_units(family, model, 1, "head", range(heads))  # layer 1 loses every head ...
    zero_units(family, model, 0, "neuron", range(ffn))  # ... layer 0 every neuron
    zero_units(family, model, 1, "neuron", range(0, ffn, 3))
    masked = logits(model, ids())
    assert not torch.allclose(masked, reference, atol=1e-3)  # the units mattered
    result = compact(model)
    assert result.removed == {"heads": 1 + heads, "heads_total": 2 * heads,
                              "neurons": ffn + len(range(0, ffn, 3)), "neurons_total": 2 * ffn}
    assert torch.allclose(logits(result.model, ids()), masked, atol=ATOL)
    # Biases of the output projections stay (GPT-2's; BiasOnly zeros stand in for Llama's missing ones).
    added = 0 if family == "gpt2" else 2 * HIDDEN
    removed = cut_parameters(family, "head", 1 + heads) + cut_parameters(family, "neuron", ffn + len(range(0, ffn, 3)))
    assert result.parameters_after == result.parameters_before - removed + added
    layers = result.model.transformer.h if family == "gpt2" else result.model.model.layers
    attention = "attn" if family == "gpt2" else "self_attn"
    assert isinstance(getattr(layers[1], attention), EmptyBlock) and isinstance(layers[0].mlp, EmptyBlock)
    out = "c_proj" if family == "gpt2" else "o_proj"
    assert isinstance(getattr(getattr(layers[1], attention), out), BiasOnly)

    save_compacted(result, tmp_path)
    reloaded = load_compacted(tmp_path)
    assert torch.allclose(logits(reloaded, ids(seed=2, batch=2, length=7)), logits(result.model, ids(seed=2, batch=2, length=7)),
                          atol=ATOL)
    assert [tuple(p.shape) for p in reloaded.parameters()] == [tuple(p.shape) for p in result.model.parameters()]


def test_a_gqa_group_with_zero_value_rows_is_folded_into_the_output_bias():
    """Qwen2: key/value group 0 of layer 0 keeps its query and key rows but its value rows are zero:
    each of its two query heads outputs the value bias, a constant that goes into o_proj (which had
    no bias), tiled over both heads."""
    model = tiny_qwen2()
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight[:HEAD_DIM] = 0.0
    masked = logits(model, ids())
    result = compact(model)
    plan = next(p for p in result.plans if p.structure.kind == "head" and p.structure.layer == "model.layers.0")
    assert (plan.keep, plan.folded) == ([1], [0])
    o_proj = result.model.model.layers[0].self_attn.o_proj
    assert o_proj.weight.shape == (HIDDEN, 2 * HEAD_DIM) and o_proj.bias is not None
    assert torch.allclose(logits(result.model, ids()), masked, atol=ATOL)


def test_a_gated_neuron_with_a_zero_gate_row_or_a_zero_up_row_is_cut():
    """SiLU(0) = 0: a zero gate row (no bias) silences the neuron whatever its up row; a zero up row
    multiplies whatever SiLU gives by 0. A neuron with only part of a row zero stays."""
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight[5] = 0.0
        model.model.layers[0].mlp.up_proj.weight[9] = 0.0
        model.model.layers[0].mlp.up_proj.weight[11, 1:] = 0.0
    masked = logits(model, ids())
    result = compact(model)
    plan = next(p for p in result.plans if p.structure.kind == "neuron" and p.structure.layer == "model.layers.0")
    assert (len(plan.keep), 5 in plan.keep, 9 in plan.keep, 11 in plan.keep, plan.folded) == (GQA_FFN - 2, False, False, True, [])
    assert torch.allclose(logits(result.model, ids()), masked, atol=ATOL)


ENGINE = {
    "pruning_type": "snip_momentum",
    "start_step": 2,
    "end_step": 6,
    "pruning_frequency": 2,
    "max_sparsity_ratio_per_op": 1.0,
    "pruning_configs": [{"pattern": "head", "target_sparsity": 0.5}, {"pattern": "neuron", "target_sparsity": 0.5}],
}


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_the_engine_zeroes_whole_units_and_its_model_compacts_exactly(family):
    model = BUILDERS[family]()
    config = dict(ENGINE)
    if family == "gpt2":  # GPT-2's layers are Conv1D, which the default op types leave out
        config["pruning_op_types"] = ["Conv1D"]
    pruning = prunelab.prepare_pruning(model, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pruning.on_train_begin()
    model.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(8):
        batch = torch.randint(0, VOCAB, (4, 12), generator=generator)
        pruning.on_step_begin(pruning.step)
        output = model(input_ids=batch, labels=batch)
        output.loss.backward()
        pruning.on_before_optimizer_step()
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)
    pruning.on_train_end()
    model.eval()
    kept = pruning.kept_units()
    heads = HEADS if family == "gpt2" else KV_HEADS
    ffn = GPT2_FFN if family == "gpt2" else GQA_FFN
    assert sum(len(k["heads"]) for k in kept.values()) == heads  # half of 2 layers' units
    assert sum(len(k["neurons"]) for k in kept.values()) == ffn
    for index, layer in enumerate(sorted(kept)):
        units = units_of(family, model, index)
        for kind in ("head", "neuron"):
            for unit, pieces in enumerate(units[kind]):
                assert unit_is_zero(pieces) == (unit not in kept[layer][f"{kind}s"]), (layer, kind, unit)
    result = compact(model, kept)
    assert result.removed["heads"] == heads and result.removed["neurons"] == ffn
    inputs = ids()
    assert torch.allclose(logits(result.model, inputs), logits(model, inputs), atol=ATOL)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_unit_score_is_the_mean_over_all_its_parts_of_unequal_sizes(family):
    """Every weight 1 except one unit's output-projection columns (Llama: a key/value group's 32
    o_proj columns against its 16 key and 16 value rows; GPT-2: one head's c_proj rows of the
    stored [in, out] weight): that unit is the weakest only if all of its parts count."""
    model = BUILDERS[family]()
    weak = 1
    with torch.no_grad():
        for layer in range(2):
            heads = units_of(family, model, layer)["head"]
            for weight, _, _, _ in heads[0]:  # each piece holds its whole module's weight
                weight.fill_(1.0)
            for weight, _, axis, index in heads[weak][-1:]:  # the output projection's part
                weight.index_fill_(axis, index, 0.01)
    config = {"pruning_type": "magnitude", "pruning_scope": "local", "pattern": "head",
              "target_sparsity": 1 / (HEADS if family == "gpt2" else KV_HEADS)}
    if family == "gpt2":
        config["pruning_op_types"] = ["Conv1D"]
    pruning = prunelab.prepare_pruning(model, config)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    units = HEADS if family == "gpt2" else KV_HEADS
    for kinds in pruning.kept_units().values():
        assert kinds["heads"] == [u for u in range(units) if u != weak]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoding_with_a_cache_stays_exact_when_layer_0_keeps_no_head(family, tmp_path):
    """transformers reads the cached length off layer 0: its stand-in attention must keep it."""
    model = BUILDERS[family]()
    zero_units(family, model, 0, "head", range(HEADS if family == "gpt2" else KV_HEADS))
    result = compact(model)
    save_compacted(result, tmp_path)
    inputs = ids(batch=2, length=8)
    with torch.no_grad():
        expected = model(input_ids=inputs).logits[:, -2:]
        for compacted in (result.model, load_compacted(tmp_path)):
            prefix = compacted(input_ids=inputs[:, :6], use_cache=True)
            assert prefix.past_key_values.get_seq_length() == 6
            cache = prefix.past_key_values
            steps = [compacted(input_ids=inputs[:, i : i + 1], cache=cache).logits for i in (6, 7)]
            assert torch.allclose(torch.cat(steps, dim=1), expected, atol=ATOL)


def test_a_compacted_gqa_llama_exports_to_onnx_with_equal_logits(tmp_path):
    model = tiny_llama()
    zero_units("llama", model, 0, "head", range(KV_HEADS))
    zero_units("llama", model, 1, "head", [0])
    zero_units("llama", model, 1, "neuron", range(0, GQA_FFN, 2))
    result = compact(model)
    info = export_onnx(result.model, tmp_path / "model.onnx")
    assert info["inputs"] == ["input_ids", "attention_mask"] and info["outputs"] == ["logits"]
    inputs = example_inputs(model, batch=2, sequence=9)
    assert max_abs_diff(torch_outputs(model, inputs), run_ort(ort_session(tmp_path / "model.onnx", threads=1), inputs)) <= 1e-4
