"""The engine inside a training loop: masks under AdamW, hook order, resume, report, op kinds."""
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab

INPUTS = torch.randn(8, 16, 16, generator=torch.Generator().manual_seed(0))  # 8 batches of 16 x 16
LABELS = torch.randint(0, 4, (8, 16), generator=torch.Generator().manual_seed(1))


class Tiny(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.classifier = nn.Linear(32, 4)

    def forward(self, x):
        return self.classifier(self.body(x))


def train(model, pruning, optimizer, steps, after_step=None, before_optimizer=None):
    """The documented loop, one optimizer step per batch."""
    for _ in range(steps):
        step = pruning.step
        pruning.on_step_begin(step)
        F.cross_entropy(model(INPUTS[step % 8]), LABELS[step % 8]).backward()
        pruning.on_before_optimizer_step()
        if before_optimizer:
            before_optimizer(step)
        optimizer.step()
        pruning.on_after_optimizer_step()
        optimizer.zero_grad(set_to_none=True)
        if after_step:
            after_step(step)


def prepared(config, seed=0, lr=1e-2):
    model = Tiny(seed)
    pruning = prunelab.prepare_pruning(model, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    pruning.on_train_begin()
    return model, pruning, optimizer


ITERATIVE = {"pattern": "4x1", "target_sparsity": 0.75, "start_step": 2, "end_step": 12, "pruning_frequency": 2}


def test_pruned_weights_are_exactly_zero_after_every_adamw_step():
    model, pruning, optimizer = prepared(ITERATIVE)
    ops = pruning.groups[0].ops
    seen_zero = {op.name: torch.zeros_like(op.mask, dtype=torch.bool) for op in ops}

    def grads_masked(step):
        for op in ops:
            assert bool((op.weight.grad[op.mask == 0] == 0).all()), f"step {step}: gradient left on pruned weights"

    def weights_zero(step):
        for op in ops:
            zero = op.weight == 0
            assert bool(zero[op.mask == 0].all()), f"step {step}: pruned weight of {op.name} moved"
            assert bool(zero[seen_zero[op.name]].all()), f"step {step}: a pruned weight of {op.name} came back"
            seen_zero[op.name] |= op.mask == 0

    train(model, pruning, optimizer, 20, after_step=weights_zero, before_optimizer=grads_masked)
    report = pruning.report()
    assert report["pruned_ops_sparsity"] == pytest.approx(0.75, abs=2 / (16 * 32 + 32 * 32))
    assert report["step"] == 20
    assert optimizer.param_groups[0]["weight_decay"] == 0.1  # decay was on the whole time


def run_hooks(pruning, sequence):
    for call in sequence:
        getattr(pruning, call)()


@pytest.mark.parametrize(
    "sequence, message",
    [
        (["on_step_begin"], r"before on_train_begin\(\)"),
        (
            ["on_train_begin", "on_step_begin", "on_before_optimizer_step", "on_step_begin"],
            r"on_after_optimizer_step\(\) was not called after optimizer.step\(\) of step 0",
        ),
        (["on_train_begin", "on_step_begin", "on_step_begin"], r"on_step_begin\(\) called twice for step 0"),
        (["on_train_begin", "on_before_optimizer_step"], r"without on_step_begin\(\) first"),
        (["on_train_begin", "on_step_begin", "on_after_optimizer_step"], r"without on_before_optimizer_step\(\) first"),
        (["on_train_begin", "on_step_begin", "on_train_end"], r"on_train_end\(\) called in the middle of step 0"),
    ],
)
def test_a_broken_hook_sequence_raises_naming_the_missing_call(sequence, message):
    model = Tiny()
    pruning = prunelab.prepare_pruning(model, {"pruning_type": "magnitude", "start_step": 5, "end_step": 5})
    model(INPUTS[0]).sum().backward()
    with pytest.raises(RuntimeError, match=message):
        run_hooks(pruning, sequence)


def test_inc_documented_loop_with_on_step_end_only_raises_at_the_next_step():
    model = Tiny()
    pruning = prunelab.prepare_pruning(model, {"pruning_type": "magnitude", "start_step": 5, "end_step": 5})
    pruning.on_train_begin()
    pruning.on_epoch_begin(0)
    pruning.on_step_begin(0)
    model(INPUTS[0]).sum().backward()
    pruning.on_before_optimizer_step()
    pruning.on_step_end()  # INC's example stops here; its step counter never moved
    with pytest.raises(RuntimeError, match=r"on_after_optimizer_step\(\) was not called"):
        pruning.on_step_begin(1)


def test_gradient_criterion_without_gradients_raises():
    model, pruning, _ = prepared(ITERATIVE)
    pruning.on_step_begin(0)
    with pytest.raises(RuntimeError, match=r"needs gradients at step 0.*after loss.backward\(\)"):
        pruning.on_before_optimizer_step()


def test_state_dict_round_trip_resumes_with_identical_masks_scores_and_weights():
    # Progressive with a blend under way at the checkpoint: every piece of state must travel.
    config = {**ITERATIVE, "pruning_type": "snip_momentum_progressive", "pruning_frequency": 4, "end_step": 16}
    model, pruning, optimizer = prepared(config)
    train(model, pruning, optimizer, 8)
    assert pruning.groups[0].blend_start == 6  # updated at step 6, blending in over steps 6..9
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "pruning": pruning.state_dict()}, saved)
    train(model, pruning, optimizer, 12)

    saved.seek(0)
    checkpoint = torch.load(saved)
    resumed_model, resumed, resumed_optimizer = prepared(config, seed=123)  # different init, overwritten below
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["pruning"])
    resumed.on_train_begin()
    assert resumed.step == 8
    train(resumed_model, resumed, resumed_optimizer, 12)

    for op, other in zip(pruning.groups[0].ops, resumed.groups[0].ops):
        assert torch.equal(op.mask, other.mask)
        assert torch.equal(op.state, other.state)
    for (name, param), other in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(param, other), name
    assert resumed.report() == pruning.report()


def test_load_state_dict_rejects_a_different_setup():
    _, pruning, _ = prepared(ITERATIVE)
    state = pruning.state_dict()
    _, other, _ = prepared({**ITERATIVE, "pattern": "1x1"})
    with pytest.raises(ValueError, match=r"checkpoint has pattern='4x1', this run '1x1'"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match=r"not a prunelab pruning state"):
        other.load_state_dict({"step": 3})


def test_report_counts_zeros_over_pruned_ops_linear_conv_ops_and_all_parameters():
    model = nn.ModuleDict({"embeddings": nn.Embedding(10, 8), "body": nn.Linear(8, 8), "classifier": nn.Linear(8, 4)})
    with torch.no_grad():
        model["classifier"].weight[0, 0] = 0.0  # excluded op: counted in the Linear/Conv ratio only
    pruning = prunelab.prepare_pruning(model, {"pattern": "1x1", "pruning_type": "magnitude", "target_sparsity": 0.5})
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    report = pruning.report()
    assert set(report) == {
        "ops", "unpruned_ops", "pruned_ops_sparsity", "linear_conv_sparsity", "all_params_sparsity",
        "target_sparsity", "groups", "step",
    }
    assert report["ops"] == {
        "body": {"shape": [8, 8], "numel": 64, "zeros": 32, "sparsity": 0.5, "pattern": "1x1", "group": 0}
    }
    assert report["pruned_ops_sparsity"] == 0.5
    assert report["linear_conv_sparsity"] == pytest.approx(33 / 96)
    assert report["all_params_sparsity"] == pytest.approx(33 / (80 + 72 + 36))
    assert report["groups"] == [
        {"pattern": "1x1", "pruning_type": "magnitude", "target_sparsity": 0.5, "current_sparsity": 0.5, "ops": ["body"]}
    ]
    assert (report["unpruned_ops"], report["target_sparsity"], report["step"]) == ([], 0.5, 0)


def test_ops_that_do_not_fit_stay_dense_with_one_warning():
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 6), nn.Linear(6, 12))
    with pytest.warns(UserWarning, match=r"1 op\(s\) do not fit.*: 1 \[6, 8\] \(4x1\)"):
        pruning = prunelab.prepare_pruning(model, {"pruning_type": "magnitude", "target_sparsity": 0.5})
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    report = pruning.report()
    assert report["unpruned_ops"] == ["1"]
    assert sorted(report["ops"]) == ["0", "2"]
    assert int((model[1].weight == 0).sum()) == 0


def test_groups_select_ops_by_name_and_type_and_must_not_overlap():
    model = Tiny()
    config = {
        "pruning_type": "magnitude",
        "pruning_configs": [{"op_names": ["body.0"], "pattern": "1x1"}, {"op_names": ["body.2"], "target_sparsity": 0.5}],
    }
    pruning = prunelab.prepare_pruning(model, config)
    assert [[op.name for op in g.ops] for g in pruning.groups] == [["body.0"], ["body.2"]]
    with pytest.raises(ValueError, match=r"pruning group 1 matches no op: op_names=\['decoder'\]"):
        prunelab.prepare_pruning(model, {**config, "pruning_configs": [{"op_names": ["body"]}, {"op_names": ["decoder"]}]})
    with pytest.raises(ValueError, match=r"op 'body.2' is claimed by pruning groups 0 and 1"):
        prunelab.prepare_pruning(model, {**config, "pruning_configs": [{"op_names": ["body"]}, {"op_names": ["2"]}]})
    with pytest.raises(ValueError, match=r"matches no op.*pruning_op_types=\['Conv2d'\]"):
        prunelab.prepare_pruning(model, {"pruning_type": "magnitude", "pruning_op_types": ["Conv2d"]})


def test_gpt2_conv1d_blocks_follow_output_features():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = nn.Sequential(Conv1D(8, 12))  # weight stored [in=12, out=8]
    config = {"pruning_type": "magnitude", "pruning_op_types": ["Conv"], "pruning_scope": "local", "target_sparsity": 0.5}
    pruning = prunelab.prepare_pruning(layer, config)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    out_by_in = layer[0].weight.t() == 0
    blocks = out_by_in.view(2, 4, 12)  # 4 consecutive output features x 1 input
    assert torch.equal(blocks.all(dim=1), blocks.any(dim=1))
    assert int(out_by_in.sum()) == 48
    assert pruning.report()["ops"]["0"]["shape"] == [8, 12]


def test_conv2d_n_in_m_runs_along_input_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 4, 3))
    config = {"pruning_type": "magnitude", "pattern": "2:4", "target_sparsity": 0.5, "pruning_op_types": ["Conv2d"]}
    pruning = prunelab.prepare_pruning(model, config)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    channels_last = model[0].weight.permute(0, 2, 3, 1).reshape(4, 9, 2, 4)  # groups of 4 input channels
    assert bool(((channels_last == 0).sum(-1) == 2).all())


def test_progressive_pruning_blends_each_new_mask_in_over_four_steps():
    config = {"pattern": "1x1", "pruning_type": "magnitude_progressive", "target_sparsity": 0.5, "start_step": 0,
              "end_step": 8, "pruning_frequency": 4, "sparsity_decay_type": "linear", "pruning_scope": "local"}
    model, pruning, optimizer = prepared(config)
    zeros = []
    train(model, pruning, optimizer, 9, after_step=lambda step: zeros.append(int((model.body[0].weight == 0).sum())))
    new_at_4 = 0.25 * 512
    assert zeros[:4] == [0, 0, 0, 0]
    assert zeros[4:8] == [new_at_4 / 4, new_at_4 / 2, 3 * new_at_4 / 4, new_at_4]
    assert zeros[8] == new_at_4 + new_at_4 / 4
    pruning.on_train_end()  # finishes the blend still under way
    assert int((model.body[0].weight == 0).sum()) == 256


def test_pattern_lock_keeps_the_existing_zeros_and_adds_none():
    model = Tiny()
    with torch.no_grad():
        model.body[2].weight[::3] = 0.0
    locked = model.body[2].weight == 0
    pruning = prunelab.prepare_pruning(model, {"pruning_type": "pattern_lock"})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    pruning.on_train_begin()
    train(model, pruning, optimizer, 5)
    assert torch.equal(model.body[2].weight == 0, locked)
    assert int((model.body[0].weight == 0).sum()) == 0
    report = pruning.report()
    assert report["target_sparsity"] == pytest.approx(int(locked.sum()) / (512 + 1024))
    assert report["groups"][0]["current_sparsity"] == report["target_sparsity"]


def test_iterative_schedule_drives_masks_and_current_sparsity():
    config = {"pattern": "1x1", "pruning_type": "magnitude", "target_sparsity": 0.8, "start_step": 0, "end_step": 8,
              "pruning_frequency": 2, "sparsity_decay_type": "linear"}
    model, pruning, optimizer = prepared(config)
    measured, scheduled = [], []

    def record(step):
        measured.append(pruning.report()["pruned_ops_sparsity"])
        scheduled.append(pruning.current_sparsity)

    train(model, pruning, optimizer, 10, after_step=record)
    expected = [0, 0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8]
    assert measured == pytest.approx(expected, abs=1 / 1536)
    assert scheduled[:-1] == pytest.approx(expected[1:])  # read after the step: the next step's value


def test_training_shorter_than_the_schedule_warns():
    model, pruning, optimizer = prepared({**ITERATIVE, "end_step": 100})
    train(model, pruning, optimizer, 3)
    with pytest.warns(UserWarning, match=r"training ended at step 3 before the last mask update.*step 100"):
        pruning.on_train_end()


@pytest.mark.parametrize(
    "pruning_type, grad, pruned",
    [
        ("movement", [1.0, -1.0, -1.0, 1.0], [0, 2]),  # W*G > 0: gradient descent pulls W towards zero
        ("gradient", [0.1, -3.0, 0.2, 5.0], [0, 2]),
        ("snip", [4.0, -0.1, 0.2, 5.0], [1, 2]),
        ("snip_momentum", [4.0, -0.1, 0.2, 5.0], [1, 2]),
    ],
)
def test_gradient_criteria_score_as_documented(pruning_type, grad, pruned):
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0, -1.0, -1.0]]))
    config = {"pattern": "1x1", "pruning_type": pruning_type, "target_sparsity": 0.5, "start_step": 1, "end_step": 1,
              "excluded_op_names": []}
    pruning = prunelab.prepare_pruning(layer, config)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    layer.weight.grad = torch.tensor([grad])
    pruning.on_before_optimizer_step()
    pruning.on_after_optimizer_step()  # no optimizer: the weights stay as set
    pruning.on_step_begin(1)
    assert (layer.weight[0] == 0).nonzero().squeeze(1).tolist() == pruned


def test_masks_follow_a_model_recast_after_prepare():
    model = Tiny()
    pruning = prunelab.prepare_pruning(model, {"pattern": "1x1", "pruning_type": "magnitude", "target_sparsity": 0.5})
    model.double()
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    assert pruning.groups[0].ops[0].mask.dtype == torch.float64
    assert pruning.report()["pruned_ops_sparsity"] == 0.5


def test_tiny_bert_prunes_every_encoder_linear_and_leaves_head_and_pooler():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    model = BertForSequenceClassification(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every op fits 4x1: no warning
        pruning = prunelab.prepare_pruning(model, {"pattern": "4x1", "pruning_type": "magnitude", "target_sparsity": 0.8})
    names = [op.name for op in pruning.groups[0].ops]
    assert len(names) == 12 and not any("pooler" in n or "classifier" in n for n in names)
    pruning.on_train_begin()
    pruning.on_step_begin(0)
    report = pruning.report()
    assert report["pruned_ops_sparsity"] == pytest.approx(0.8, abs=2 / 24576)
    assert report["linear_conv_sparsity"] < report["pruned_ops_sparsity"]


def test_a_pattern_that_fits_none_of_a_groups_ops_raises_naming_group_pattern_and_shapes():
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 16), nn.Linear(16, 64), nn.Linear(64, 8))
    config = {"pattern": "3x7", "pruning_type": "magnitude", "target_sparsity": 0.8, "excluded_op_names": []}
    message = (
        "pruning group 0: pattern 3x7 fits none of its 5 ops (shapes [32, 16], [16, 32], [16, 16], ...); "
        "choose a pattern whose block divides the weight shapes"
    )
    with pytest.raises(ValueError) as raised:
        prunelab.prepare_pruning(model, config)
    assert str(raised.value) == message
    # The group is named by its index; N:M gets the advice about the input dim.
    groups = {"pruning_type": "magnitude", "excluded_op_names": [], "pruning_configs": [
        {"op_names": ["^0$"], "pattern": "4x1", "target_sparsity": 0.5},
        {"op_names": ["^[1-4]$"], "pattern": "1:3", "target_sparsity": 0.3},
    ]}
    with pytest.raises(ValueError, match=r"^pruning group 1: pattern 1:3 fits none of its 4 ops \(shapes \[16, 32\], "
                                         r"\[16, 16\], \[64, 16\], \.\.\.\); choose a pattern whose M divides the input dim"):
        prunelab.prepare_pruning(model, groups)
    # Nothing to prune (target 0) or nothing new to prune (pattern_lock): no error, the ops stay dense.
    for quiet in ({**config, "target_sparsity": 0.0}, {**config, "pruning_type": "pattern_lock"}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert prunelab.prepare_pruning(model, quiet).report()["pruned_ops_sparsity"] == 0.0
    # A partial misfit still only warns (test_ops_that_do_not_fit_stay_dense_with_one_warning).
