"""What the loop calls around its steps: progress logging, verification, checkpoints and
the ``backbone.pt`` export; plug-ins add their own (see :mod:`facevib.engine.plugins`).

A callback implements any of the :class:`Callback` hooks; the :class:`Trainer` calls them in
list order. Hooks run on every rank; a hook that writes files or computes on one rank only
checks ``trainer.env.is_main`` itself, and collective ones (a checkpoint) run everywhere.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from facevib.engine.logger import format_duration

if TYPE_CHECKING:
    from facevib.engine.trainer import Trainer

__all__ = ["BackboneExport", "Callback", "Checkpointing", "ProgressLog", "Verification", "default_callbacks"]


class Callback:
    """Hooks the loop calls; each default does nothing."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first step of :meth:`Trainer.fit`."""

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any] | None) -> None:
        """After each step (``trainer.step`` already counts it).

        ``metrics``: the step's metrics on the host on the steps the loop reads them (every
        ``run.log_every`` steps and the last; see :mod:`facevib.engine.readout`), None on
        the others: reading device tensors every step would stall the device.
        """

    def on_evaluate(self, trainer: Trainer, results: dict[str, Any]) -> None:
        """After a verification run, on rank 0, before the ranks meet again."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step."""


def _due(every: int, step: int) -> bool:
    return bool(every) and step % every == 0


class ProgressLog(Callback):
    """Every ``run.log_every`` steps and at the last (the steps the loop reads the metrics):
    metrics to the logs, a progress line."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.tic, self.tic_step = time.perf_counter(), trainer.step

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any] | None) -> None:
        if metrics is None:
            return
        elapsed = time.perf_counter() - self.tic
        rate = (trainer.step - self.tic_step) * trainer.global_batch / max(elapsed, 1e-9)
        eta = (trainer.total_steps - trainer.step) * trainer.global_batch / max(rate, 1e-9)
        trainer.last = {**metrics, "samples_per_s": rate, "epoch": trainer.position.epoch}
        trainer.logger.log(trainer.step, trainer.last)
        self._print(trainer, trainer.last, eta)
        self.tic, self.tic_step = time.perf_counter(), trainer.step

    @staticmethod
    def _print(trainer: Trainer, m: dict[str, Any], eta: float) -> None:
        head = f"step {trainer.step}/{trainer.total_steps}"
        if "margin_loss" not in m:
            trainer.logger.info(f"{head} loss {m['loss']} (update skipped)")
            return
        trainer.logger.info(
            f"{head}  loss {m['loss']:.4f} (margin {m['margin_loss']:.4f} "
            f"+ beta*KL {m['kl_loss']:.4g})  lr {m['lr']:.4g}  {m['samples_per_s']:.1f} samples/s  "
            f"eta {format_duration(eta)}"
        )


class Verification(Callback):
    """Verification accuracy on ``data.val_targets`` every ``run.eval_every`` steps and at
    the end of a run with targets (rank 0 computes, the others wait); then ``on_evaluate``."""

    def __init__(self) -> None:
        self.bins: list | None = None  # decoded once, reused at every evaluation

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any] | None) -> None:
        if _due(trainer.cfg.run.eval_every, trainer.step):
            trainer.last["val"] = self.evaluate(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.cfg.data.val_targets and not _due(trainer.cfg.run.eval_every, trainer.step):
            trainer.last["val"] = self.evaluate(trainer)

    def evaluate(self, trainer: Trainer) -> dict[str, Any]:
        """Verify now; the results on rank 0, ``{}`` on the others."""
        from facevib.eval.verification import evaluate_bins, load_bins

        cfg, results = trainer.cfg, {}
        if trainer.env.is_main:
            if self.bins is None:
                self.bins = load_bins(cfg.data.val_dir, cfg.data.val_targets)
            results = evaluate_bins(trainer.backbone, self.bins, batch_size=cfg.data.batch_size, device=trainer.device)
            flat = {
                f"{name}/{key}": value
                for name, res in results.items()
                for key, value in res.items()
                if isinstance(value, (int, float))
            }
            trainer.logger.log(trainer.step, flat, kind="val")
            summary = ", ".join(f"{name} {res['accuracy'] * 100:.2f}%" for name, res in results.items())
            trainer.logger.info(f"step {trainer.step}: verification {summary}")
            trainer.notify("on_evaluate", results)
        trainer.env.barrier()
        return results


class Checkpointing(Callback):
    """A checkpoint every ``run.checkpoint_every`` steps and after the last step."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.start_step = trainer.step

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any] | None) -> None:
        if _due(trainer.cfg.run.checkpoint_every, trainer.step):
            trainer.save()

    def on_train_end(self, trainer: Trainer) -> None:
        if not _due(trainer.cfg.run.checkpoint_every, trainer.step) and trainer.step > self.start_step:
            trainer.save()


class BackboneExport(Callback):
    """``backbone.pt`` at the end: the embedding model alone, for evaluation and export."""

    def on_train_end(self, trainer: Trainer) -> None:
        path = trainer.checkpointer.write_backbone(trainer.backbone_state())
        if trainer.env.is_main:
            trainer.logger.info(f"wrote {path}")


def default_callbacks() -> list[Callback]:
    """The callbacks every run has, in the order they run (checkpoint, then verification)."""
    return [ProgressLog(), Checkpointing(), Verification(), BackboneExport()]
