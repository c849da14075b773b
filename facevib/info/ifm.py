"""Information flow maximisation (IFM) as a training option for any ``nn.Module``.

"Learning to Find Correlated Features by Maximizing Information Flow in Convolutional
Neural Networks" (Shen, Li, Liu): for chosen adjacent layer pairs (H_l, H_{l+1}) a critic
D_l estimates the Jensen-Shannon mutual information between them, and training minimises

    L = L_clf - lambda * sum_l F_l                                      (paper eq. 5)

with F_l the JSD objective of D_l (eq. 3-4). Critic, objective and sample pairs (§3.2,
Fig. 2: positives at the same location of the same sample, negatives at random locations
of other samples, H_{l+1} up-sampled to H_l) come from :mod:`facevib.info.jsd`.

The layers are read by forward hooks on named modules, so the backbone's code is
untouched; the critics live in this module, not in the backbone, so the backbone's
``state_dict`` and its ONNX export never contain them (the paper removes the IFM blocks at
test time). Feature layouts: (B, C, H, W) maps (locations = positions), (B, L, E) token
sequences (locations = tokens) and (B, D) vectors (one location).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from facevib.config import parse_pairs
from facevib.info.jsd import CRITIC_HIDDEN, Critic, feature_vectors, jsd_objective, sample_pairs

__all__ = ["IFMRegularizer", "IFMTaskLoss", "LayerTap", "parse_pairs"]


class LayerTap:
    """Forward hooks that keep the latest output of named modules while the model trains.

    Outputs are kept only in training mode, so evaluation, tracing and ONNX export of the
    model see no side effect. A module returning a tuple (a VIB cell block called with
    ``return_kl=True``) contributes its first element.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(
                f"IFM: {type(model).__name__} has no module {missing[0]!r}; "
                f"some of its names: {', '.join(list(modules)[1:12])}"
            )
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = [
            modules[name].register_forward_hook(self._hook(name)) for name in dict.fromkeys(names)
        ]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
            if module.training:
                self.outputs[name] = output[0] if isinstance(output, tuple) else output

        return hook

    def clear(self) -> None:
        """Forget the kept outputs (and the graphs they hold)."""
        self.outputs.clear()

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()


class IFMRegularizer(nn.Module):
    """Critics for chosen layer pairs of a model, and the ``-lambda * sum_l F_l`` term.

    Build it with :meth:`for_model` (which measures the layers' widths with one forward
    pass), add :meth:`parameters` to the optimiser, and after each training forward of the
    model call ``term, flows = ifm()``: ``term`` is ``-weight * sum_l F_l`` to add to the
    loss, ``flows`` the per-pair F_l (detached). Checkpoint it apart from the backbone.

    Args:
        pairs: ``(shallow, deep)`` module names of the model, adjacent in depth.
        channels: ``(C_l, C_{l+1})`` per pair.
        weight: lambda (the IFM paper uses 1).
        locations: locations sampled per sample and pair per step.
        hidden: critic widths (Table 2: 256, 128, 64).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        channels: Sequence[tuple[int, int]],
        weight: float = 1.0,
        locations: int = 16,
        hidden: Sequence[int] = CRITIC_HIDDEN,
    ) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"IFM weight (lambda) must be >= 0, got {weight!r}")
        if isinstance(locations, bool) or not isinstance(locations, int) or locations <= 0:
            raise ValueError(f"IFM locations must be a positive int, got {locations!r}")
        self.pairs = [tuple(p) for p in pairs]
        self.weight = float(weight)
        self.locations = locations
        self.critics = nn.ModuleList(Critic(c_l + c_next, hidden) for c_l, c_next in channels)
        self._tap: LayerTap | None = None

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        pairs: Sequence[str | Sequence[str]],
        example: Tensor,
        weight: float = 1.0,
        locations: int = 16,
        hidden: Sequence[int] = CRITIC_HIDDEN,
    ) -> IFMRegularizer:
        """Critics sized from one no-grad forward of ``model`` on ``example``, hooks attached.

        The forward runs in training mode (hooks keep outputs only then) on a copy of the
        BatchNorm statistics, which are restored afterwards.
        """
        parsed = parse_pairs(pairs)
        tap = LayerTap(model, [name for pair in parsed for name in pair])
        buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
        was_training = model.training
        try:
            model.train()
            with torch.no_grad():
                model(example)
            channels = [(_channels(tap.outputs[a]), _channels(tap.outputs[b])) for a, b in parsed]
        finally:
            model.train(was_training)
            model.load_state_dict(buffers, strict=False)
            tap.remove()
        ifm = cls(parsed, channels, weight, locations, hidden)
        ifm.attach(model)
        return ifm

    def attach(self, model: nn.Module) -> None:
        """Hook the pairs' modules of ``model`` (replacing earlier hooks)."""
        self.detach()
        self._tap = LayerTap(model, [name for pair in self.pairs for name in pair])

    def detach(self) -> None:
        """Remove the hooks; the model is left exactly as it was."""
        if self._tap is not None:
            self._tap.remove()
            self._tap = None

    def forward(self) -> tuple[Tensor, Tensor]:
        """``(-weight * sum_l F_l, F per pair detached)`` from the last training forward.

        Raises:
            RuntimeError: not attached, or no training forward of the model since the last
                call (hooks keep outputs in training mode only).
        """
        if self._tap is None:
            raise RuntimeError("IFMRegularizer is not attached to a model (use for_model or attach)")
        outputs = self._tap.outputs
        missing = [name for pair in self.pairs for name in pair if name not in outputs]
        if missing:
            raise RuntimeError(f"IFM: no training-mode output of {missing[0]!r} since the last step")
        flows = []
        for (shallow, deep), critic in zip(self.pairs, self.critics, strict=True):
            joint, marginal = sample_pairs(outputs[shallow], outputs[deep], self.locations)
            # One critic call on both halves, so BatchNorm sees joint and marginal pairs together.
            logits = critic(torch.cat([joint, marginal]).float())
            flows.append(jsd_objective(logits[: len(joint)], logits[len(joint) :]))
        self._tap.clear()
        total = torch.stack(flows)
        return -self.weight * total.sum(), total.detach()


class IFMTaskLoss(nn.Module):
    """IFM as an auxiliary loss of :class:`facevib.engine.task.FaceRecognitionTask`.

    The task calls ``forward(batch)`` after the backbone's forward and adds the returned
    term; the regulariser already holds the hooked feature maps, so ``batch`` is not read.
    Metrics: ``flows``, F_l per layer pair (logged as ``ifm/flows``).
    """

    def __init__(self, regularizer: IFMRegularizer) -> None:
        super().__init__()
        self.regularizer = regularizer

    def forward(self, batch: object = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(-weight * sum_l F_l, {"flows": F per pair})`` from the last training forward."""
        term, flows = self.regularizer()
        return term, {"flows": flows}


def _channels(features: Tensor) -> int:
    return int(feature_vectors(features).shape[2])
