"""The information tools as training plug-ins: IFM as an auxiliary loss, the
information-plane recorder as a callback at every evaluation.

Named in ``run.plugins`` (the default), imported by the trainer before it builds a run;
both stay off unless the config turns them on (``ifm.weight > 0``, ``info.record``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facevib.config import TrainConfig
from facevib.engine.callbacks import Callback
from facevib.engine.plugins import register_aux_loss, register_callback
from facevib.engine.seeding import Stream, derive_seed

__all__ = ["InfoPlaneCallback", "ifm_losses", "infoplane_callback"]


@register_aux_loss("ifm")
def ifm_losses(cfg: TrainConfig, backbone: nn.Module, device: torch.device) -> dict[str, nn.Module]:
    """IFM on ``ifm.pairs`` when ``ifm.weight > 0``.

    The critics are sized by one forward of zeros and initialised from their own seed
    stream; they train in the optimizer's ``auxiliary`` group and are saved with the task's
    auxiliary state, never in the backbone or its export.
    """
    if cfg.ifm.weight == 0:
        return {}
    from facevib.info.ifm import IFMRegularizer, IFMTaskLoss

    size = backbone.config.input_size
    torch.manual_seed(derive_seed(cfg.run.seed, Stream.INIT, 2))
    example = torch.zeros(2, 3, size, size, device=device)
    ifm = IFMRegularizer.for_model(backbone, cfg.ifm.pairs, example, cfg.ifm.weight, cfg.ifm.locations)
    return {"ifm": IFMTaskLoss(ifm.to(device))}


class InfoPlaneCallback(Callback):
    """At each evaluation: measure the backbone's layers, write the history, log the bits."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def on_evaluate(self, trainer: Any, results: dict[str, Any]) -> None:
        self.recorder.record(trainer.step)
        self.recorder.write(trainer.output)
        trainer.logger.log(trainer.step, self.recorder.scalars(), kind="info")


@register_callback("infoplane")
def infoplane_callback(cfg: TrainConfig, trainer: Any) -> InfoPlaneCallback | None:
    """A recorder on a probe set from ``data.rec`` (rank 0 only) when ``info.record``."""
    info = cfg.info
    if not (info.record and trainer.env.is_main):
        return None
    from facevib.info.recorder import recorder_for_recordio

    recorder = recorder_for_recordio(trainer.backbone, cfg.data.rec, info.max_classes, info.per_class, info.bin_size)
    return InfoPlaneCallback(recorder)
