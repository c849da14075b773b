"""Information flow maximisation (IFM) as a training option for any ``nn.Module``.

"Learning to Find Correlated Features by Maximizing Information Flow in Convolutional
Neural Networks" (Shen, Li, Liu): for chosen adjacent layer pairs (H_l, H_{l+1}) a critic
D_l estimates the Jensen-Shannon mutual information between them, and training minimises

    L = L_clf - lambda * sum_l F_l                                      (paper eq. 5)

with F_l the JSD objective of D_l (eq. 3-4). Sample pairs (§3.2, Fig. 2): H_{l+1} is
up-sampled to H_l's spatial size; a positive pair is the two feature vectors at the same
location of the same sample, a negative pair a vector of H_l with one at a random location
of *another* sample's H_{l+1}. Each pair is concatenated and fed to D_l.

The layers are read by forward hooks on named modules, so the backbone's code is
untouched; the critics live in this module, not in the backbone, so the backbone's
``state_dict`` and its ONNX export never contain them (the paper removes the IFM blocks at
test time). Feature layouts: (B, C, H, W) maps (locations = positions), (B, L, E) token
sequences (locations = tokens) and (B, D) vectors (one location).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["IFMRegularizer", "LayerTap", "feature_vectors", "parse_pairs", "sample_pairs"]

CRITIC_HIDDEN = (256, 128, 64)  # network D of the IFM paper, Table 2
_LEAKY_SLOPE = 0.2


def parse_pairs(pairs: Sequence[str | Sequence[str]]) -> list[tuple[str, str]]:
    """Layer pairs from ``("a", "b")`` items or ``"a:b"`` strings (the config form).

    Raises:
        ValueError: an item that is not two non-empty names, or no pairs at all.
    """
    parsed: list[tuple[str, str]] = []
    for item in pairs:
        names = item.split(":") if isinstance(item, str) else list(item)
        if len(names) != 2 or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"IFM layer pair {item!r}: expected 'shallow:deep' (two module names)")
        parsed.append((names[0], names[1]))
    if not parsed:
        raise ValueError("IFM needs at least one layer pair")
    return parsed


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


def feature_vectors(features: Tensor, size: tuple[int, ...] | None = None) -> Tensor:
    """(B, locations, channels) view of a layer output, resized to ``size`` when given.

    (B, C, H, W) maps are resized (nearest) to ``size`` = (H', W') first; (B, L, E)
    sequences and (B, D) vectors are taken as they are.
    """
    if features.dim() == 4:
        if size is not None and tuple(features.shape[2:]) != tuple(size):
            features = F.interpolate(features, size=size, mode="nearest")
        return features.flatten(2).transpose(1, 2)
    if features.dim() == 3:
        return features
    if features.dim() == 2:
        return features.unsqueeze(1)
    raise ValueError(f"IFM: unsupported layer output of shape {tuple(features.shape)}")


def sample_pairs(shallow: Tensor, deep: Tensor, locations: int) -> tuple[Tensor, Tensor]:
    """Positive and negative concatenated pairs for one layer pair (IFM paper §3.2).

    Args:
        shallow: H_l output.
        deep: H_{l+1} output; up-sampled to H_l's spatial size when both are feature maps.
        locations: locations drawn per sample (all of them when there are fewer).

    Returns:
        ``(joint, marginal)``, each (B * k, C_l + C_{l+1}). The marginal pairs take H_{l+1}
        from another sample (a random non-zero shift of the batch index) at a random
        location. Draws use torch's global generator.
    """
    size = tuple(shallow.shape[2:]) if shallow.dim() == 4 and deep.dim() == 4 else None
    a = feature_vectors(shallow)
    b = feature_vectors(deep, size)
    batch, num_loc = a.shape[0], a.shape[1]
    if b.shape[:2] != (batch, num_loc):
        raise ValueError(
            f"IFM: layer outputs of shapes {tuple(shallow.shape)} and {tuple(deep.shape)} do not share "
            "batch and locations (pair feature maps with feature maps, token sequences of equal length)"
        )
    if batch < 2:
        raise ValueError("IFM: negative pairs need at least 2 samples per batch")
    device = a.device
    k = min(locations, num_loc)
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    loc = torch.randint(num_loc, (batch * k,), device=device)
    joint = torch.cat([a[rows, loc], b[rows, loc]], dim=1)
    shift = torch.randint(1, batch, (batch * k,), device=device)
    other_loc = torch.randint(num_loc, (batch * k,), device=device)
    marginal = torch.cat([a[rows, loc], b[(rows + shift) % batch, other_loc]], dim=1)
    return joint, marginal


def _critic(in_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    """Network D (IFM paper Table 2): FC-BN-LeakyReLU layers, then FC to one logit."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.LeakyReLU(_LEAKY_SLOPE)]
        in_dim = width
    layers.append(nn.Linear(in_dim, 1))
    return nn.Sequential(*layers)


def jsd_lower_bound(joint_logits: Tensor, marginal_logits: Tensor) -> Tensor:
    """Jensen-Shannon MI objective E_P[-softplus(-V)] - E_Q[softplus(V)] (f-GAN, Deep InfoMax).

    It is the f-divergence bound of the IFM paper's eq. 3 with the JSD generator
    (g_f(v) = log 2 - log(1 + e^-v), f*(t) = -log(2 - e^t)) without its constant 2 log 2;
    maximal when D outputs 1 on joint pairs and 0 on marginal pairs.
    """
    return (-F.softplus(-joint_logits)).mean() - F.softplus(marginal_logits).mean()


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
        self.critics = nn.ModuleList(_critic(c_l + c_next, hidden) for c_l, c_next in channels)
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
            logits = critic(torch.cat([joint, marginal]).float()).squeeze(1)
            flows.append(jsd_lower_bound(logits[: len(joint)], logits[len(joint) :]))
        self._tap.clear()
        total = torch.stack(flows)
        return -self.weight * total.sum(), total.detach()


def _channels(features: Tensor) -> int:
    return int(feature_vectors(features).shape[2])
