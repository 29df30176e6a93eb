"""Feature distillation: ``distill=hidden_mse`` and ``distill=simkd``.

``hidden_mse`` is what INC's GLUE pruning examples did with ``--distill_loss_weight w`` ("variant 3"
of SimKD, arXiv 2203.14001): the training loss became ``w * MSE(student.hidden_states[-1],
teacher.hidden_states[-1])``, the teacher being the dense model the student starts from. The
task head (pooler, classifier) is then reached by no gradient: it stays the teacher's, which is
what makes it a form of SimKD.

``simkd`` is SimKD itself (Chen et al., "Knowledge Distillation with the Reused Teacher
Classifier"): a projector P maps the student's classifier input f_s to the teacher's, trained with
loss_weight * MSE(P(f_s), f_t), and the student predicts with the teacher's classifier on P(f_s).
P is affine, so teacher_classifier(P(f)) = (W_t A) f + (W_t b + c) is itself a Linear of the
student's classifier shape: the student's classifier holds that product at all times (frozen; P
is trained by the trainer's optimizer, declared by the distiller's ``parameter_groups()``, and the
head is refolded after each step). Evaluation and the saved model are therefore SimKD's
predictions in a stock Hugging Face model. (SimKD's paper uses a small non-linear projector for CNNs; an affine one is
what can be folded into a stock head.)

Both compute MSE as ``torch.nn.MSELoss`` does (mean over every element), on per-token states
including padding positions, as the reference did.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import ConfigError
from prunelab.tasks.base import Task
from prunelab.train.distillation import TeacherDistiller

POSITIONS = ("all", "cls")
ALL_LAYERS = "all"  # distill.layers: the output of every layer
# Task heads whose input SimKD reuses the teacher's on, in the order looked for.
HEAD_NAMES = ("classifier", "classifier.out_proj", "qa_outputs")


class HiddenStateKnowledgeDistiller(TeacherDistiller):
    """``distill=hidden_mse``: loss_weight * mean over matched layers of MSE(student hidden state,
    teacher hidden state).

    layers: student hidden-state indices matched (0 = embeddings, i = output of layer i, negative
    from the end; ``all``: every layer's output, 1..depth; null: [-1], or the keys of layer_map). layer_map: {student index: teacher index},
    needed when the two models differ in depth (without it the last matches the last, 0 matches 0
    and other indices match the same index). positions: ``all`` (every token, the reference) or
    ``cls`` (the first token only). replace_task_loss: true (the reference) trains on this term
    alone, and then freezes the student parameters no gradient of it reaches (the task head), as
    the reference left them untouched; false adds it to the task loss. precompute: only with
    positions=cls (per-token states of a whole training set do not fit in memory).
    """

    forward_kwargs = {"output_hidden_states": True}

    def __init__(
        self,
        task: Task,
        student: nn.Module,
        teacher: str | None = None,
        loss_weight: float | None = None,
        layers: list[int] | str | None = None,
        layer_map: dict[int, int] | None = None,
        positions: str = "all",
        replace_task_loss: bool = True,
        precompute: bool = False,
    ):
        if positions not in POSITIONS:
            raise ConfigError(f"distill.positions={positions}: allowed {list(POSITIONS)}")
        if precompute and positions == "all":
            raise ConfigError(
                "distill.precompute=true: per-token hidden states (distill.positions=all) of the whole training "
                "set do not fit in memory; set distill.positions=cls or distill.precompute=false"
            )
        super().__init__(task, student, teacher, loss_weight, precompute, replace_task_loss)
        self.positions = positions
        self.pairs = layer_pairs(_depth(student), _depth(self.teacher), layers, layer_map)
        widths = (student.config.hidden_size, self.teacher.config.hidden_size)
        if widths[0] != widths[1]:
            raise ConfigError(
                f"distill=hidden_mse: the student's hidden size {widths[0]} differs from the teacher's {widths[1]}; "
                "MSE needs equal widths (distill=simkd projects the classifier input instead)"
            )
        self.frozen = freeze_unreached(student, [s for s, _ in self.pairs]) if replace_task_loss else []

    def extra_loss(self, outputs, batch: dict, example_index: torch.Tensor) -> torch.Tensor:
        """Training-loop hook: the distillation term."""
        student = self._select(outputs.hidden_states, [s for s, _ in self.pairs])
        teacher = self._targets(batch, example_index, student)
        terms = [F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher)]
        return self.loss_weight * torch.stack(terms).mean()

    def _teacher_targets(self, batch: dict) -> tuple[torch.Tensor, ...]:
        with torch.no_grad(), self.accelerator.autocast():
            states = self.teacher(**batch, output_hidden_states=True).hidden_states
            return tuple(t.detach() for t in self._select(states, [t for _, t in self.pairs]))

    def _select(self, states: Sequence[torch.Tensor], indices: list[int]) -> tuple[torch.Tensor, ...]:
        picked = [states[i] for i in indices]
        return tuple(state[:, 0] for state in picked) if self.positions == "cls" else tuple(picked)


class ReusedClassifierKnowledgeDistiller(TeacherDistiller):
    """``distill=simkd``: loss_weight * MSE(P(f_s), f_t), f the input of the task head
    (``classifier`` / ``classifier.out_proj`` / ``qa_outputs``), P an affine projector initialised
    to the identity; the student's head is frozen and holds teacher_head o P (module docstring).

    replace_task_loss: true (SimKD) trains on this term alone; false adds the task loss, whose
    gradient reaches the student's features through the reused head (not P). precompute: only for
    per-example features (GLUE); per-token ones (a task with ``per_token_outputs``: SQuAD) do not
    fit in memory. P is trained by the trainer's optimizer (``parameter_groups()``): its learning-rate
    schedule, betas, gradient clipping and accumulation, gradients averaged across processes, no
    weight decay; P's weights are saved in checkpoints by ``state_dict``, its AdamW state with the
    trainer's optimizer.
    """

    def __init__(
        self,
        task: Task,
        student: nn.Module,
        teacher: str | None = None,
        loss_weight: float | None = None,
        replace_task_loss: bool = True,
        precompute: bool = False,
    ):
        if precompute and task.per_token_outputs:  # the head then reads per-token features too
            raise ConfigError(
                "distill.precompute=true: simkd's teacher features are per token for this task; those of the "
                "whole training set do not fit in memory; set distill.precompute=false"
            )
        super().__init__(task, student, teacher, loss_weight, precompute, replace_task_loss)
        self.head = _task_head(student, "student")
        self.teacher_head = _task_head(self.teacher, "teacher")
        if self.head.out_features != self.teacher_head.out_features or self.head.bias is None:
            raise ConfigError(
                f"distill=simkd: the student's head ({self.head.out_features} outputs, bias: {self.head.bias is not None}) "
                f"cannot hold the teacher's ({self.teacher_head.out_features} outputs) on projected features"
            )
        self.projector = nn.Linear(self.head.in_features, self.teacher_head.in_features)
        with torch.no_grad():
            nn.init.eye_(self.projector.weight)
            self.projector.bias.zero_()
        self.head.requires_grad_(False)
        self.fold()
        self.features: dict[str, torch.Tensor] = {}
        self.head.register_forward_pre_hook(self._keep("student"))
        self.teacher_head.register_forward_pre_hook(self._keep("teacher"))

    def parameter_groups(self) -> list[dict]:
        """Training-loop declaration: the trainer's optimizer trains P, without weight decay."""
        return [{"name": "distill.projector", "params": list(self.projector.parameters()), "weight_decay": 0.0}]

    def prepare(self, accelerator, ordered_loader) -> None:
        self.projector.to(accelerator.device)
        super().prepare(accelerator, ordered_loader)
        self.fold()

    def extra_loss(self, outputs, batch: dict, example_index: torch.Tensor) -> torch.Tensor:
        """Training-loop hook: the distillation term (the student's head input was kept by its hook)."""
        feature = self.features.pop("student")
        projected = self.projector(feature.to(self.projector.weight.dtype))
        (teacher,) = self._targets(batch, example_index, (projected,))
        return self.loss_weight * F.mse_loss(projected.float(), teacher.float())

    def on_after_optimizer_step(self) -> None:
        """Training-loop hook: the trainer's optimizer has moved P; the head follows."""
        self.fold()

    def fold(self) -> None:
        """The student's head := teacher head o projector: W = W_t A, b = W_t b_P + c_t."""
        with torch.no_grad():
            weight = self.teacher_head.weight.float()
            bias = self.teacher_head.bias.float() if self.teacher_head.bias is not None else 0.0
            self.head.weight.copy_(weight @ self.projector.weight.float())
            self.head.bias.copy_(weight @ self.projector.bias.float() + bias)

    def state_dict(self) -> dict:
        """P's weights (its AdamW state is in the trainer's optimizer)."""
        return {"projector": self.projector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.projector.load_state_dict(state["projector"])
        self.fold()

    def _teacher_targets(self, batch: dict) -> tuple[torch.Tensor, ...]:
        with torch.no_grad(), self.accelerator.autocast():
            self.teacher(**batch)
        return (self.features.pop("teacher").detach(),)

    def _keep(self, role: str):
        def hook(module: nn.Module, args: tuple) -> None:
            # The student's head input is kept only where a gradient is wanted (not in evaluation).
            if role == "teacher" or torch.is_grad_enabled():
                self.features[role] = args[0]

        return hook


def layer_pairs(student_depth: int, teacher_depth: int, layers: Sequence[int] | str | None,
                layer_map: Mapping[int, int] | None) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices, each in 0..depth (0: embeddings, depth: last layer);
    ``layers="all"``: every layer's output of the student."""

    def index(value, depth: int, key: str, given) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not -(depth + 1) <= value <= depth:
            raise ConfigError(
                f"{key}={given}: {value!r} is not a hidden-state index of a {depth}-layer model "
                f"(0: embeddings, 1..{depth}: layer outputs, negative: from the last)"
            )
        return value % (depth + 1)

    mapping = None
    if layer_map is not None:
        given = dict(layer_map.items())
        mapping = {index(_as_int(s), student_depth, "distill.layer_map", given):
                   index(_as_int(t), teacher_depth, "distill.layer_map", given) for s, t in given.items()}
    if isinstance(layers, str):
        if layers != ALL_LAYERS:
            raise ConfigError(f"distill.layers={layers}: give a list of hidden-state indices, {ALL_LAYERS} "
                              "(every layer's output) or null (the last)")
        written, layers = layers, list(range(1, student_depth + 1))  # messages name what the config wrote
    else:
        layers = list(layers) if layers is not None else (sorted(mapping) if mapping else [-1])
        written = layers
    if not layers:
        raise ConfigError("distill.layers=[]: give at least one layer (null: the last)")
    pairs = []
    for value in layers:
        student = index(value, student_depth, "distill.layers", written)
        if mapping is not None:
            if student not in mapping:
                raise ConfigError(f"distill.layers={written}: student layer {student} has no entry in distill.layer_map")
            pairs.append((student, mapping[student]))
        elif student_depth == teacher_depth or student == 0:
            pairs.append((student, student))
        elif student == student_depth:
            pairs.append((student, teacher_depth))
        else:
            raise ConfigError(
                f"distill.layers={written}: the student has {student_depth} layers and the teacher {teacher_depth}; "
                "give distill.layer_map ({student layer: teacher layer})"
            )
    return pairs


def freeze_unreached(model: nn.Module, indices: list[int]) -> list[str]:
    """Freeze (requires_grad=False) the parameters no gradient of the hidden states ``indices``
    reaches, found with one tiny probe forward; returns their names. With the task loss replaced,
    they would get no gradient anyway (AdamW skips them, as in the reference); frozen, the
    optimizer and data-parallel training leave them out too (DDP refuses unused parameters)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    device = named[0][1].device
    probe = {"input_ids": torch.zeros(1, 2, dtype=torch.long, device=device),
             "attention_mask": torch.ones(1, 2, dtype=torch.long, device=device)}
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        states = model(**probe, output_hidden_states=True).hidden_states
        total = torch.stack([states[i].float().sum() for i in indices]).sum()
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    model.train(was_training)
    frozen = [name for (name, _), grad in zip(named, grads) if grad is None]
    for (name, p), grad in zip(named, grads):
        if grad is None:
            p.requires_grad_(False)
    return frozen


def _depth(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def _as_int(value) -> int | str:
    """Keys of a layer map given on the command line may arrive as strings."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _task_head(model: nn.Module, role: str) -> nn.Linear:
    for name in HEAD_NAMES:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Linear):
            return module
    raise ConfigError(
        f"distill=simkd: the {role} ({type(model).__name__}) has no Linear task head among {list(HEAD_NAMES)}"
    )
