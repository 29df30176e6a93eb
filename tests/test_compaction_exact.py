"""Compaction cuts out exactly the head whose output-projection columns are zero: its own 16
contiguous columns, not every 4th one. The engine's head pattern zeroes a head's value rows too,
and a layer that loses every head looks the same either way, so only a head that is silent in
the output projection alone tells the two apart."""
import torch
from transformers import BertConfig, BertForSequenceClassification

from prunelab.export import compact

HEAD_SIZE = 16


def test_a_head_with_zero_output_columns_only_is_the_one_removed():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                                     intermediate_size=128, vocab_size=100)).eval()
    attention = model.bert.encoder.layer[0].attention
    with torch.no_grad():
        attention.output.dense.weight[:, HEAD_SIZE : 2 * HEAD_SIZE] = 0.0  # head 1 adds nothing
    result = compact(model)
    heads = next(p for p in result.plans if p.structure.kind == "head")
    assert (heads.keep, heads.folded) == ([0, 2, 3], [])  # silent, not constant: nothing to fold
    kept_rows = torch.cat([torch.arange(0, 16), torch.arange(32, 64)])
    compacted = result.model.bert.encoder.layer[0].attention
    assert torch.equal(compacted.self.value.weight, attention.self.value.weight[kept_rows])
    assert torch.equal(compacted.output.dense.weight, attention.output.dense.weight[:, kept_rows])
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(result.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
