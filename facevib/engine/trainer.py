"""The training loop: one step after another, with callbacks around them.

The parts come from :mod:`facevib.engine.build`; the objective (backbone + Partial FC +
margin + beta-weighted KL + plug-in auxiliary losses) is
:class:`facevib.engine.task.FaceRecognitionTask`, called once per step under
``torch.autocast`` when mixed precision is on. Logging, verification, checkpoints, the
``backbone.pt`` export and plug-in recorders are :mod:`facevib.engine.callbacks`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn
from torch.utils.data import Dataset

from facevib import __version__
from facevib.config import ConfigError, TrainConfig, config_to_dict
from facevib.data.transforms import normalize_images
from facevib.distributed import DistEnv
from facevib.engine import build
from facevib.engine.backends import check_deterministic, configure_backends
from facevib.engine.callbacks import Callback, default_callbacks
from facevib.engine.checkpoint import CHECKPOINT_FORMAT, Checkpointer
from facevib.engine.data import DataPosition, GlobalBatchSampler, batches_per_epoch, build_loader, random_flip
from facevib.engine.logger import MetricLogger
from facevib.engine.optim import load_named_state, named_state, set_lr
from facevib.engine.plugins import build_aux_losses, build_plugin_callbacks, import_plugins
from facevib.engine.readout import NonFiniteLossError, StepReadout
from facevib.engine.seeding import Stream, seed_step, torch_generator
from facevib.engine.update import GuardedUpdate

__all__ = ["Trainer", "NonFiniteLossError"]


class Trainer:
    """Builds a run from a validated config and runs the loop.

    Every rank constructs a Trainer; collective operations (saving and loading the sharded
    Partial FC, all-reducing logged metrics) are called on all ranks, files other than the
    Partial FC shards are written by rank 0.

    Args:
        cfg: validated config.
        env: from :func:`facevib.distributed.init_distributed`.
        resume: None, ``"latest"`` (newest checkpoint in ``run.output`` if there is one —
            what an elastic restart needs) or a checkpoint folder.
        stream: where rank 0 prints progress (stdout by default).
        dataset: use this instead of reading ``data.rec`` (e.g. in-memory images for a
            benchmark); it must yield ``(3, H, W)`` uint8 RGB images with integer labels
            and have ``num_classes``.
        aux_losses: auxiliary losses added to the objective (see :mod:`facevib.engine.task`),
            ``{name: module}``; by default those the ``run.plugins`` builders make.
        callbacks: extra callbacks, called after the default and plug-in ones.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        resume: str | None = None,
        stream: TextIO | None = None,
        dataset: Dataset | None = None,
        aux_losses: dict[str, nn.Module] | None = None,
        callbacks: list[Callback] | None = None,
    ):
        self.cfg, self.env, self.device = cfg, env, env.device
        self.output = Path(cfg.run.output)
        self.seed = cfg.run.seed
        self.logger = MetricLogger(self.output, env.is_main, cfg.run.tensorboard, stream)
        self.checkpointer = Checkpointer(self.output, cfg.run.keep_checkpoints, env.is_main)
        configure_backends(cfg.run.deterministic, self.device)
        import_plugins(cfg.run.plugins)

        self.dataset = build.build_dataset(cfg) if dataset is None else dataset
        self.num_classes = self.dataset.num_classes
        self.global_batch = cfg.data.batch_size * env.world_size
        self.steps_per_epoch = batches_per_epoch(len(self.dataset), self.global_batch)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{cfg.data.rec}: {len(self.dataset)} images is less than one global batch of "
                f"{self.global_batch} (data.batch_size={cfg.data.batch_size} x {env.world_size} ranks)"
            )
        self.total_steps = cfg.run.total_steps or cfg.run.epochs * self.steps_per_epoch
        build.check_labels(self.dataset, self.num_classes, cfg.data.rec)

        self.backbone = build.build_backbone(cfg, self.device, self.logger.info)
        self.pfc = build.build_partial_fc(cfg, self.backbone.embedding_dim, self.num_classes, self.device)
        if aux_losses is None:
            aux_losses = build_aux_losses(cfg, self.backbone, self.device)
        if cfg.run.deterministic:  # before the first step, not at its first backward
            check_deterministic({"backbone": self.backbone, **aux_losses}, self.device)
        self.task = build.build_task(cfg, self.backbone, self.pfc, env, aux_losses)
        self.optimizer, self.base_lr = build.build_optim(cfg, self.task, self.global_batch)
        self.lr_at = build.build_schedule(cfg, self.base_lr, self.total_steps)
        self.amp_dtype = build.amp_dtype(cfg.run.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.update = GuardedUpdate(
            self.optimizer, self.scaler, self.backbone.parameters(), cfg.optim.clip_grad_norm,
            checked=self.task.aux_losses.parameters(),
        )  # fmt: skip
        self.readout = StepReadout(cfg.run.max_nonfinite_steps, self.logger.info)
        self.callbacks = [*default_callbacks(), *build_plugin_callbacks(cfg, self), *(callbacks or [])]

        self.step = 0
        self.position = DataPosition()
        self.last: dict[str, Any] = {}
        self.resumed_from: Path | None = None
        if resume is not None:
            self._resume(resume)
        self._write_run_info()

    def _write_run_info(self) -> None:
        if not self.env.is_main:
            return
        info = {
            "config": config_to_dict(self.cfg),
            "world_size": self.env.world_size,
            "global_batch": self.global_batch,
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "num_classes": self.num_classes,
            "num_images": len(self.dataset),
            "device": str(self.device),
            "amp": str(self.amp_dtype),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "versions": {"facevib": __version__, "torch": torch.version.__version__},
        }
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "config.json").write_text(json.dumps(info, indent=2) + "\n")

    # ------------------------------------------------------------------ checkpoints

    def backbone_state(self) -> dict[str, Any]:
        """The entries :func:`~facevib.engine.checkpoint.read_checkpoint` needs (``backbone.pt``)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": self.backbone.arch,
            "backbone": {k: v.cpu() for k, v in self.backbone.state_dict().items()},
            "config": config_to_dict(self.cfg),
            "step": self.step,
        }

    def state_dict(self) -> dict[str, Any]:
        """The replicated part of a checkpoint (the Partial FC shard is saved by DCP)."""
        return {
            **self.backbone_state(),
            "version": 2,
            "auxiliary": {k: v.cpu() for k, v in self.task.aux_losses.state_dict().items()},
            "optimizer": named_state(self.optimizer, skip=(self.pfc.weight,)),
            "partial_fc": {"num_classes": self.num_classes, "embedding_dim": self.backbone.embedding_dim},
            "scheduler": {"base_lr": self.base_lr, "total_steps": self.total_steps, "step": self.step},
            "scaler": self.scaler.state_dict(),
            "epoch": self.position.epoch,
            "data_position": {"epoch": self.position.epoch, "batch": self.position.batch},
            "global_batch": self.global_batch,
            "world_size": self.env.world_size,
            # No generator state is needed: every draw derives from (seed, stream, step, rank).
            "rng": {"seed": self.seed, "scheme": "derived per (seed, stream, step, rank)"},
            "nonfinite_steps": self.readout.nonfinite_steps,
        }

    def save(self) -> Path:
        """Write ``checkpoint_<step>/`` (all ranks call: each writes its Partial FC rows).

        The kept step metrics are read first: the checkpoint's non-finite count is exact, and
        a run past ``run.max_nonfinite_steps`` stops here rather than saving."""
        self.readout.read()
        path = self.checkpointer.save(self.step, self.state_dict(), self.pfc.sharded_state_dict(self.optimizer))
        self.logger.info(f"step {self.step}: saved {path}")
        return path

    def _resume(self, resume: str) -> None:
        path = self.checkpointer.resolve(resume)
        if path is None:
            self.logger.info(f"--resume latest: no checkpoint in {self.output}; starting from step 0")
            return
        state = self.checkpointer.load(path).state
        if state["arch"] != self.backbone.arch:
            raise ConfigError(
                f"{path}: checkpoint architecture {state['arch']} differs from the configured {self.backbone.arch}"
            )
        self.backbone.load_state_dict(state["backbone"])
        self.checkpointer.load_partial_fc(
            path, self.pfc, self.optimizer, self.num_classes, self.backbone.embedding_dim, self.cfg.data.rec
        )
        self.task.aux_losses.load_state_dict(state["auxiliary"])
        load_named_state(self.optimizer, state["optimizer"], str(path))
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        saved = DataPosition(**state["data_position"])
        self.position = saved.remap(int(state["global_batch"]), self.global_batch)
        self.readout.nonfinite_steps = int(state["nonfinite_steps"])
        self.resumed_from = path
        note = "" if state["world_size"] == self.env.world_size else (
            f" (saved with {state['world_size']} ranks, now {self.env.world_size}: Partial FC re-sharded)"
        )  # fmt: skip
        self.logger.info(f"resumed from {path} at step {self.step}, epoch {saved.epoch} batch {saved.batch}{note}")

    # ------------------------------------------------------------------ steps

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on this rank's share of a global batch.

        Nothing is read to the host: the update is skipped on the device when the step is
        not finite (:class:`~facevib.engine.update.GuardedUpdate`), and the metrics, returned
        as device tensors, are kept for the next :meth:`StepReadout.read
        <facevib.engine.readout.StepReadout.read>`.
        """
        cfg, env = self.cfg, self.env
        self.task.train()
        seed_step(self.seed, self.step, env.rank)
        lr = self.lr_at(self.step)
        set_lr(self.optimizer, lr)

        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if cfg.data.horizontal_flip:
            images = random_flip(images, self.seed, self.step, env.rank, env.world_size)
        images = normalize_images(images)
        if cfg.run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)

        sampling = None
        if self.pfc.num_sample < self.pfc.num_local:  # negatives are drawn only when sampling
            sampling = torch_generator(self.seed, Stream.CLASS_SAMPLING, self.step, env.rank, device=self.device)
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, task_metrics = self.task(images, labels, sampling)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        skipped, grad_norm = self.update(task_metrics["loss"])
        self.readout.record(self.step, lr, task_metrics, skipped, grad_norm)
        return task_metrics

    @property
    def nonfinite_steps(self) -> int:
        """Skipped (non-finite) steps counted up to the last read of the step metrics."""
        return self.readout.nonfinite_steps

    # ------------------------------------------------------------------ loop

    def _batches(self):
        """(images, labels) from the current data position on, epoch after epoch.

        ``fit`` advances ``self.position`` after each step, so the position always counts
        the batches *trained on*, never the ones the DataLoader has merely prefetched.
        """
        cfg, env = self.cfg, self.env
        while True:
            self.position = self.position.normalised(self.steps_per_epoch)
            sampler = GlobalBatchSampler(
                len(self.dataset), cfg.data.batch_size, env.rank, env.world_size, self.seed,
                epoch=self.position.epoch, start_batch=self.position.batch,
            )  # fmt: skip
            yield from build_loader(self.dataset, sampler, cfg.data.num_workers, pin_memory=self.device.type == "cuda")

    def _read_due(self) -> bool:
        """Read the step metrics now: a logging step, or the last."""
        return self.step % self.cfg.run.log_every == 0 or self.step == self.total_steps

    def notify(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; return the last logged metrics (and validation results)."""
        self.logger.info(
            f"training {self.backbone.arch['name']} on {len(self.dataset)} images / {self.num_classes} identities: "
            f"{self.env.world_size} rank(s) x batch {self.cfg.data.batch_size}, {self.total_steps} steps "
            f"({self.steps_per_epoch} per epoch), lr {self.base_lr:g}, amp {self.amp_dtype}, device {self.device}"
        )
        self.notify("on_train_start")
        batches = self._batches()
        while self.step < self.total_steps:
            images, labels = next(batches)
            self.train_step(images, labels)
            self.step += 1
            self.position = DataPosition(self.position.epoch, self.position.batch + 1)
            self.notify("on_step_end", self.readout.read() if self._read_due() else None)
        batches.close()
        self.notify("on_train_end")
        self.logger.close()
        # Leave together: a rank tearing down gloo while a peer still talks to it can abort.
        self.env.barrier()
        return self.last
