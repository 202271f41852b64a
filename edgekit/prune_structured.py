"""Structured pruning internals: where FFN neurons and layers live, how important they are, and the surgery.

Everything cut here is expressible in the model's own stock transformers
config, so the result reloads with ``from_pretrained`` anywhere (no remote
code): ``intermediate_size`` (the same number of FFN neurons removed in every
layer, which ones chosen per layer by importance) and ``num_hidden_layers``.

Attention heads are not cut, because no BERT-family config in transformers 5
can carry fewer heads of the same size: ``BertSelfAttention`` (and RoBERTa,
ELECTRA, XLM-R, DistilBERT) derive ``attention_head_size = hidden_size /
num_attention_heads`` with no attribute to override it, and DeBERTa-v2, which
does honour an ``attention_head_size`` attribute, keeps its attention output
projection ``hidden_size x hidden_size``. Zeroing heads instead would keep
every matmul the same size, i.e. no speedup. See :data:`HEADS_NOT_EXPRESSIBLE`.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import progress
from .deps import require
from .errors import ModelError

HEADS_NOT_EXPRESSIBLE = (
    "transformers 5 derives attention_head_size = hidden_size / num_attention_heads for this architecture "
    "(no config attribute overrides it), so a checkpoint with fewer heads of the same size would not reload "
    "with from_pretrained")


@dataclass(frozen=True)
class Layout:
    """Where one model type keeps what structured pruning cuts (module paths inside each encoder layer)."""

    ffn_in: str                        # Linear that produces the FFN neurons
    ffn_out: str                       # Linear that consumes them


_BERT = Layout("intermediate.dense", "output.dense")

#: config.model_type -> layout; only these can be pruned structurally
LAYOUTS: dict[str, Layout] = {"bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "electra": _BERT,
                              "deberta-v2": _BERT}


def layout_of(config) -> Layout:
    layout = LAYOUTS.get(getattr(config, "model_type", None))
    if layout is None:
        raise ModelError(f"Structured pruning does not support model type '{config.model_type}'",
                         f"supported: {', '.join(sorted(LAYOUTS))} (blocks in encoder.layer, FFN in "
                         f"intermediate.dense/output.dense, sized by intermediate_size and num_hidden_layers)",
                         "Prune a model of a supported type, or optimize this one without --prune-* options")
    return layout


def encoder_layers(model) -> list:
    """The encoder's transformer blocks (``<base>.encoder.layer``)."""
    try:
        return list(model.base_model.encoder.layer)
    except AttributeError:
        raise ModelError("The model has no encoder.layer list", f"{type(model).__name__} is not BERT-like",
                         "Prune a BERT-family classifier") from None


def param_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


class _NeuronScore:
    """Pre-hook on the FFN's output Linear: first-order Taylor scores per input neuron.

    Masking neuron i with m_i changes the loss by about dL/dm_i = sum over
    tokens of grad_i * activation_i; the score is |dL/dm_i| per example,
    summed over every example seen (padding contributes zero gradient).
    """

    def __init__(self):
        self.total = None

    def __call__(self, module, inputs):
        act = inputs[0]
        if act.requires_grad:
            act.register_hook(lambda grad: self._add(grad, act))

    def _add(self, grad, act) -> None:
        per = (grad * act).detach().sum(dim=1).abs().sum(0)     # [B, S, I] -> [I]
        self.total = per if self.total is None else self.total + per


def taylor_ffn_importance(model, batches: list[dict]) -> list:
    """Per layer, a score per FFN neuron from cross-entropy gradients on labeled ``batches`` (weights unchanged)."""
    torch = require("torch")
    layout = layout_of(model.config)
    scorers = [_NeuronScore() for _ in encoder_layers(model)]
    handles = [layer.get_submodule(layout.ffn_out).register_forward_pre_hook(s)
               for layer, s in zip(encoder_layers(model), scorers)]
    model.eval()  # no dropout: the scores describe the deployed function
    try:
        with torch.enable_grad():
            for batch in progress.bar(batches, desc="FFN importance", unit="batch"):
                model.zero_grad(set_to_none=True)
                model(**batch).loss.backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    if scorers[0].total is None:
        raise ModelError("No gradient reached the FFN layers", "the importance pass saw no batch",
                         "Pass training data with at least one labeled row")
    return [s.total for s in scorers]


def magnitude_ffn_importance(model) -> list:
    """Per layer, a score per FFN neuron from weights alone: |row of W_in| * |column of W_out|."""
    layout = layout_of(model.config)
    return [layer.get_submodule(layout.ffn_in).weight.detach().norm(dim=1)
            * layer.get_submodule(layout.ffn_out).weight.detach().norm(dim=0) for layer in encoder_layers(model)]


class _Skip:
    """Forward hook that makes a transformer block return its input (the block is bypassed)."""

    def __call__(self, module, args, output):
        if isinstance(output, tuple):
            return (args[0], *output[1:])
        return args[0]


def _log_probs(model, batches: list[dict], skipped: set[int] = frozenset()) -> list:
    """Per batch, log-softmax of the logits with the blocks in ``skipped`` bypassed."""
    torch = require("torch")
    layers = encoder_layers(model)
    handles = [layers[i].register_forward_hook(_Skip()) for i in skipped]
    model.eval()
    try:
        with torch.inference_mode():
            return [torch.log_softmax(model(**_inputs(b)).logits.float(), -1) for b in batches]
    finally:
        for h in handles:
            h.remove()


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def output_change(model, batches: list[dict], reference: list, skipped: set[int]) -> float:
    """Mean KL(reference || model with ``skipped`` blocks bypassed) per example: how much the function moves."""
    torch = require("torch")
    total = rows = 0.0
    for ref, got in zip(reference, _log_probs(model, batches, skipped)):
        total += float(torch.nn.functional.kl_div(got, ref, log_target=True, reduction="sum"))
        rows += len(ref)
    return total / rows


def layers_to_drop(model, batches: list[dict] | None, count: int) -> list[int]:
    """Which ``count`` blocks to remove.

    With ``batches`` (real rows): greedy leave-one-out, each time dropping the
    block whose removal moves the model's predictions least (measured KL from
    the full model's outputs, not estimated). Without: the top ``count``
    blocks, which Sajjad et al. (2020, "On the effect of dropping layers of
    pre-trained transformer models") found the best data-free choice.
    """
    total = len(encoder_layers(model))
    if count == 0:
        return []
    if batches is None:
        return list(range(total - count, total))
    reference = _log_probs(model, batches)
    dropped: set[int] = set()
    for _ in progress.bar(range(count), desc="choose blocks to drop", unit="block"):
        change = {i: output_change(model, batches, reference, dropped | {i}) for i in range(total) if i not in dropped}
        dropped.add(min(change, key=change.get))
    return sorted(dropped)


def keep_top(scores: list, keep: int) -> list:
    """Per layer: indices (ascending) of the ``keep`` highest scores."""
    torch = require("torch")
    return [torch.sort(torch.topk(s.float(), keep).indices).values for s in scores]


def pruned_state(model, kept_layers: list[int], kept_ffn: list | None) -> dict:
    """The state dict with dropped blocks removed (the rest renumbered) and dropped FFN neurons cut out.

    ``kept_ffn[i]`` are the neuron indices kept in original block ``i``
    (None = all neurons of every block).
    """
    layout = layout_of(model.config)
    layers = encoder_layers(model)
    prefix = _prefix_of(model, layers[0]).rsplit(".", 2)[0] + "."          # e.g. "bert.encoder.layer."
    out = {}
    for name, tensor in model.state_dict().items():
        if not name.startswith(prefix):
            out[name] = tensor.detach().clone()
            continue
        index, rest = name[len(prefix):].split(".", 1)
        if int(index) not in kept_layers:
            continue
        if kept_ffn is not None:
            tensor = _cut(tensor, rest, layout, kept_ffn[int(index)])
        out[f"{prefix}{kept_layers.index(int(index))}.{rest}"] = tensor.detach().clone().contiguous()
    return out


def _cut(tensor, rest: str, layout: Layout, keep):
    if rest in (f"{layout.ffn_in}.weight", f"{layout.ffn_in}.bias"):
        return tensor.index_select(0, keep)
    if rest == f"{layout.ffn_out}.weight":
        return tensor.index_select(1, keep)
    return tensor


def _prefix_of(model, layer) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name + "."
    raise ModelError("Cannot locate an encoder layer in the model", None, "Prune a BERT-family classifier")


def rebuild(config, state: dict):
    """A fresh model of ``config``'s architecture holding ``state`` (every weight must fit exactly)."""
    transformers = require("transformers")
    cls = getattr(transformers, config.architectures[0])
    model = cls(config)
    wanted = set(model.state_dict())
    missing = sorted(wanted - set(state))
    if missing:
        raise ModelError("Pruning produced an incomplete model", f"missing weights: {', '.join(missing[:4])}",
                         "Report this model type as unsupported for pruning")
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    return model.eval()
