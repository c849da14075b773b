"""The training loop: data, optimizer, schedule, mixed precision, logging, checkpoints, eval.

The objective itself (backbone + Partial FC + margin + beta-weighted KL) is
:class:`facevib.engine.task.FaceRecognitionTask`; the loop calls it once per step under
``torch.autocast`` when mixed precision is on.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from facevib import __version__
from facevib.config import TrainConfig, config_to_dict
from facevib.data.datasets import MXFaceDataset
from facevib.data.transforms import normalize_images
from facevib.distributed import DistEnv
from facevib.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    STATE_FILE,
    latest_checkpoint,
    load_checkpoint,
    load_sharded,
    read_torch_file,
    save_checkpoint,
    sharded_entries,
)
from facevib.engine.data import DataPosition, GlobalBatchSampler, batches_per_epoch, build_loader, random_flip
from facevib.engine.logger import MetricLogger, format_duration
from facevib.engine.optim import build_optimizer, load_named_state, lr_factor, named_state, scaled_lr, set_lr
from facevib.engine.seeding import Stream, derive_seed, seed_step, torch_generator
from facevib.engine.task import FaceRecognitionTask
from facevib.losses import CombinedMarginLoss
from facevib.models import create_model, load_arcface_state_dict
from facevib.partial_fc import PartialFC

__all__ = ["Trainer", "NonFiniteLossError"]

CHECKPOINT_VERSION = 2  # 1: single file with the full Partial FC; 2: folder + sharded Partial FC


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf more often than ``run.max_nonfinite_steps`` allows."""


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def _to_host(metrics: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Metric tensors as floats (scalars) and lists (vectors), in one device-to-host copy."""
    flat = torch.cat([v.detach().float().reshape(-1) for v in metrics.values()]).tolist()
    out, offset = {}, 0
    for name, value in metrics.items():
        piece = flat[offset : offset + value.numel()]
        out[name] = piece[0] if value.dim() == 0 else piece
        offset += value.numel()
    return out


class Trainer:
    """Builds everything from a validated config and runs the loop.

    Every rank constructs a Trainer; collective operations (saving and loading the sharded
    Partial FC, all-reducing logged metrics) are called on all ranks, files other than the
    Partial FC shards are written by rank 0.

    Args:
        cfg: validated config.
        env: from :func:`facevib.distributed.init_distributed`.
        resume: None, ``"latest"`` (newest checkpoint in ``run.output`` if there is one —
            what an elastic restart needs) or a checkpoint path.
        stream: where rank 0 prints progress (stdout by default).
        dataset: use this instead of reading ``data.rec`` (e.g. in-memory images for a
            benchmark); it must yield ``(3, H, W)`` uint8 RGB images with integer labels
            and have ``num_classes``.
        aux_losses: auxiliary losses added to the objective (see
            :mod:`facevib.engine.task`), ``{name: module}``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        resume: str | None = None,
        stream: TextIO | None = None,
        dataset: Dataset | None = None,
        aux_losses: dict[str, nn.Module] | None = None,
    ):
        self.cfg = cfg
        self.env = env
        self.device = env.device
        self.output = Path(cfg.run.output)
        self.seed = cfg.run.seed
        self.logger = MetricLogger(self.output, env.is_main, cfg.run.tensorboard, stream)
        self._configure_backends()

        # uint8 samples, no per-sample flip: workers only read and decode (4x less to copy
        # between processes and to the GPU); flips and normalisation happen per batch on
        # the device, the flips drawn per global sample position so that a resume repeats them.
        if dataset is None:
            dataset = MXFaceDataset(cfg.data.rec, train=False, skip_corrupt=cfg.data.skip_corrupt, normalize=False)
        self.dataset = dataset
        self.num_classes = self.dataset.num_classes
        self.global_batch = cfg.data.batch_size * env.world_size
        self.steps_per_epoch = batches_per_epoch(len(self.dataset), self.global_batch)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{cfg.data.rec}: {len(self.dataset)} images is less than one global batch of "
                f"{self.global_batch} (data.batch_size={cfg.data.batch_size} x {env.world_size} ranks)"
            )
        self.total_steps = cfg.run.total_steps or cfg.run.epochs * self.steps_per_epoch

        self._check_labels()

        self.backbone = self._build_backbone()
        margin = CombinedMarginLoss(
            s=cfg.head.scale, m1=cfg.head.m1, m2=cfg.head.m2, m3=cfg.head.m3, detach_margin=cfg.head.detach_margin
        )
        self.pfc = PartialFC(
            margin,
            self.backbone.embedding_dim,
            self.num_classes,
            cfg.head.sample_rate,
            generator=torch_generator(self.seed, Stream.INIT, 1),
            device=self.device,
        )
        if aux_losses is None:
            aux_losses = self._configured_aux_losses()
        self.task = FaceRecognitionTask(
            self.backbone,
            self.pfc,
            env,
            aux_losses=aux_losses,
            compile_backend=cfg.run.compile_backend if cfg.run.compile else None,
        ).to(self.device)

        self.base_lr = scaled_lr(cfg.optim, self.global_batch)
        trained = {"backbone": self.backbone, "partial_fc": self.pfc}
        if len(self.task.aux_losses):
            trained["auxiliary"] = self.task.aux_losses
        self.optimizer = build_optimizer(cfg.optim, trained, self.base_lr)
        self.amp_dtype = _amp_dtype(cfg.run.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if cfg.optim.name == "sgd" and cfg.optim.momentum > 0 and not self.scaler.is_enabled():
            # The class centres' update without a (C_local, D) gradient (same SGD result).
            self.pfc.fold_sgd_updates(self.optimizer)

        # Information-plane recording at every evaluation (rank 0); None unless info.record.
        self.infoplane = self._build_infoplane()

        self.step = 0
        self.position = DataPosition()
        self.nonfinite_steps = 0
        self.resumed_from: Path | None = None
        self._val_bins: list | None = None
        if resume is not None:
            self._resume(resume)
        self._write_run_info()

    # ------------------------------------------------------------------ setup

    def _configure_backends(self) -> None:
        # Set both ways: these are process-wide switches that an earlier run in the same
        # process (a notebook, a test) may have left on.
        deterministic = self.cfg.run.deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(deterministic)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not deterministic
            torch.backends.cuda.matmul.allow_tf32 = not deterministic
            torch.backends.cudnn.allow_tf32 = not deterministic

    def _check_labels(self) -> None:
        """Labels in [0, num_classes), checked once here rather than (with a host
        synchronisation) in every step; datasets without a ``labels`` array are checked by
        the Partial FC per step (exactly on CPU, by an asynchronous assert on CUDA)."""
        labels = getattr(self.dataset, "labels", None)
        if labels is None or len(labels) == 0:
            return
        labels = np.asarray(labels)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{self.cfg.data.rec}: sample {index} has label {int(labels[index])}, outside "
                f"[0, {self.num_classes}) ({int(bad.sum())} such samples; check property / train.idx)"
            )

    def _configured_aux_losses(self) -> dict[str, nn.Module]:
        """Auxiliary losses the config asks for: IFM (``ifm.weight > 0``) on its layer pairs.

        The critics are sized by one forward of zeros and initialised from their own seed
        stream; they train in the optimizer's ``auxiliary`` group and are saved with the
        task's auxiliary state, never in the backbone or its export.
        """
        ifm_cfg = self.cfg.ifm
        if ifm_cfg.weight == 0:
            return {}
        from facevib.info.ifm import IFMRegularizer, IFMTaskLoss

        size = self.backbone.config.input_size
        torch.manual_seed(derive_seed(self.seed, Stream.INIT, 2))
        example = torch.zeros(2, 3, size, size, device=self.device)
        ifm = IFMRegularizer.for_model(self.backbone, ifm_cfg.pairs, example, ifm_cfg.weight, ifm_cfg.locations)
        return {"ifm": IFMTaskLoss(ifm.to(self.device))}

    def _build_backbone(self) -> nn.Module:
        cfg = self.cfg.model
        # Same initial weights on every rank and in every run with this seed.
        torch.manual_seed(derive_seed(self.seed, Stream.INIT, 0))
        backbone = create_model(cfg.name, **cfg.kwargs)
        if cfg.init_backbone:
            self._initialise_from(backbone, Path(cfg.init_backbone))
        backbone.to(self.device)
        if self.cfg.run.channels_last:
            backbone.to(memory_format=torch.channels_last)
        return backbone

    def _initialise_from(self, backbone: nn.Module, path: Path) -> None:
        """Load an arcface_torch ``backbone.pth`` (or a facevib checkpoint, file or folder) into ``backbone``.

        Mean branches and the head take the checkpoint's weights; VIB sigma branches, which
        arcface_torch models do not have, keep their fresh initialisation.
        """
        if path.is_dir():  # a checkpoint folder: its replicated state holds the backbone
            path = path / STATE_FILE
        payload = read_torch_file(path, what="model.init_backbone")
        state = payload.get("backbone", payload) if isinstance(payload, dict) else payload
        if not isinstance(state, dict):
            raise ValueError(f"model.init_backbone: {path} holds a {type(state).__name__}, not a state_dict")
        try:
            report = load_arcface_state_dict(backbone, state)
        except ValueError as exc:
            raise ValueError(f"model.init_backbone: {path}: {exc}") from exc
        self.logger.info(
            f"initialised from {path}: {len(state)} tensors loaded, "
            f"{len(report.missing_keys)} VIB tensors left at their initialisation"
        )

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
            "versions": {"facevib": __version__, "torch": torch.__version__},
        }
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "config.json").write_text(json.dumps(info, indent=2) + "\n")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The replicated part of a checkpoint (the Partial FC shard is saved by DCP)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "arch": self.backbone.arch,
            "backbone": {k: v.cpu() for k, v in self.backbone.state_dict().items()},
            "auxiliary": {k: v.cpu() for k, v in self.task.aux_losses.state_dict().items()},
            "optimizer": named_state(self.optimizer, skip=(self.pfc.weight,)),
            "partial_fc": {"num_classes": self.num_classes, "embedding_dim": self.backbone.embedding_dim},
            "scheduler": {"base_lr": self.base_lr, "total_steps": self.total_steps, "step": self.step},
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.position.epoch,
            "data_position": {"epoch": self.position.epoch, "batch": self.position.batch},
            "global_batch": self.global_batch,
            "world_size": self.env.world_size,
            # No generator state is needed: every draw derives from (seed, stream, step, rank).
            "rng": {"seed": self.seed, "scheme": "derived per (seed, stream, step, rank)"},
            "nonfinite_steps": self.nonfinite_steps,
            "config": config_to_dict(self.cfg),
        }

    def save(self) -> Path:
        """Write ``checkpoint_<step>/`` (all ranks call: each writes its Partial FC rows)."""
        path = save_checkpoint(
            self.state_dict(),
            self.pfc.sharded_state_dict(self.optimizer),
            self.output,
            self.step,
            self.cfg.run.keep_checkpoints,
        )
        self.logger.info(f"step {self.step}: saved {path}")
        return path

    def _resume(self, resume: str) -> None:
        if resume == "latest":
            path = latest_checkpoint(self.output)
            if path is None:
                self.logger.info(f"--resume latest: no checkpoint in {self.output}; starting from step 0")
                return
        else:
            path = Path(resume)
        state = load_checkpoint(path)
        if state["arch"] != self.backbone.arch:
            raise ValueError(
                f"{path}: checkpoint architecture {state['arch']} differs from the configured {self.backbone.arch}"
            )
        self.backbone.load_state_dict(state["backbone"])
        if state.get("version", 1) >= 2:
            self._load_partial_fc(path)
            self.task.aux_losses.load_state_dict(state["auxiliary"])
            load_named_state(self.optimizer, state["optimizer"], str(path))
        else:
            self._load_single_file(path, state)
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        saved = DataPosition(**state["data_position"])
        self.position = saved.remap(int(state["global_batch"]), self.global_batch)
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.resumed_from = path
        note = (
            ""
            if state["world_size"] == self.env.world_size
            else (f" (saved with {state['world_size']} ranks, now {self.env.world_size}: Partial FC re-sharded)")
        )
        self.logger.info(f"resumed from {path} at step {self.step}, epoch {saved.epoch} batch {saved.batch}{note}")

    def _check_pfc_shape(self, path: Path, shape: tuple[int, ...]) -> None:
        if tuple(shape) != (self.num_classes, self.backbone.embedding_dim):
            raise ValueError(
                f"{path}: Partial FC weight of shape {tuple(shape)} does not match "
                f"{self.num_classes} classes x {self.backbone.embedding_dim} dims of {self.cfg.data.rec}"
            )

    def _load_partial_fc(self, path: Path) -> None:
        """This rank's rows of the weight and optimizer state, in place (any saved world size)."""
        entries = sharded_entries(path)
        if "weight" not in entries:
            raise ValueError(f"{path}: the sharded checkpoint has no Partial FC weight")
        self._check_pfc_shape(path, entries["weight"][0])
        load_sharded(path, self.pfc.sharded_state_dict(self.optimizer, entries))

    def _load_single_file(self, path: Path, state: dict[str, Any]) -> None:
        """Version 1: full Partial FC matrices in the file, optimizer groups by position
        (0: the backbone's trainable parameters in order, 1: the Partial FC weight)."""
        weight = state["partial_fc"]["weight"]
        self._check_pfc_shape(path, weight.shape)
        start, stop = self.pfc.class_start, self.pfc.class_stop
        with torch.no_grad():
            self.pfc.weight.copy_(weight[start:stop])
        saved = state["optimizer"]
        names = [f"backbone.{n}" for n, p in self.backbone.named_parameters() if p.requires_grad]
        backbone_ids, pfc_ids = (g["params"] for g in saved["param_groups"])
        named = {names[i]: saved["state"][pid] for i, pid in enumerate(backbone_ids) if pid in saved["state"]}
        load_named_state(self.optimizer, named, str(path))
        for pid in pfc_ids:
            for key, value in saved["state"].get(pid, {}).items():
                if torch.is_tensor(value) and value.shape == weight.shape:
                    value = value[start:stop]
                self.pfc.optimizer_state(self.optimizer)[key] = value.to(self.device).clone()

    # ------------------------------------------------------------------ steps

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """One optimisation step on this rank's share of a global batch; returns metrics."""
        cfg, env = self.cfg, self.env
        self.task.train()
        seed_step(self.seed, self.step, env.rank)
        lr = self.base_lr * lr_factor(cfg.schedule, self.step, self.total_steps)
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
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            loss, task_metrics = self.task(images, labels, sampling)

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

        # The step's only host synchronisation: the metrics, for the non-finite check and logs.
        values = _to_host(task_metrics)
        total = values["loss"]
        if not math.isfinite(total):
            self._on_nonfinite(total, values)
            return {"loss": total, "skipped": True, "lr": lr}

        if cfg.optim.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            # Backbone only: its gradients are identical on every rank after DDP, whereas
            # the Partial FC shards differ per rank.
            nn.utils.clip_grad_norm_(self.backbone.parameters(), cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {**values, "lr": lr}

    def _on_nonfinite(self, total: float, values: dict[str, Any]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        detail = f"margin loss {values['margin_loss']}, weighted KL {values['kl_loss']}"
        if self.nonfinite_steps > self.cfg.run.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"non-finite loss {total} at step {self.step} ({detail}); "
                f"{self.nonfinite_steps} such step(s) so far, run.max_nonfinite_steps={self.cfg.run.max_nonfinite_steps}. "
                f"Lower optim.lr, enable optim.clip_grad_norm, or use run.amp=bf16 instead of fp16."
            )
        self.logger.info(
            f"step {self.step}: non-finite loss {total} ({detail}); update skipped "
            f"({self.nonfinite_steps}/{self.cfg.run.max_nonfinite_steps} allowed)"
        )

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
                len(self.dataset),
                cfg.data.batch_size,
                env.rank,
                env.world_size,
                self.seed,
                epoch=self.position.epoch,
                start_batch=self.position.batch,
            )
            yield from build_loader(self.dataset, sampler, cfg.data.num_workers, pin_memory=self.device.type == "cuda")

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps``; return the last logged metrics (and validation results)."""
        cfg = self.cfg
        self.logger.info(
            f"training {self.backbone.arch['name']} on {len(self.dataset)} images / {self.num_classes} identities: "
            f"{self.env.world_size} rank(s) x batch {cfg.data.batch_size}, {self.total_steps} steps "
            f"({self.steps_per_epoch} per epoch), lr {self.base_lr:g}, amp {self.amp_dtype}, device {self.device}"
        )
        last: dict[str, Any] = {}
        tic, tic_step, start_step = time.perf_counter(), self.step, self.step
        batches = self._batches()
        while self.step < self.total_steps:
            images, labels = next(batches)
            metrics = self.train_step(images, labels)
            self.step += 1
            self.position = DataPosition(self.position.epoch, self.position.batch + 1)
            if self.step % cfg.run.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - tic
                rate = (self.step - tic_step) * self.global_batch / max(elapsed, 1e-9)
                eta = (self.total_steps - self.step) * self.global_batch / max(rate, 1e-9)
                last = {**metrics, "samples_per_s": rate, "epoch": self.position.epoch}
                self.logger.log(self.step, last)
                self._print_progress(last, eta)
                tic, tic_step = time.perf_counter(), self.step
            if cfg.run.eval_every and self.step % cfg.run.eval_every == 0:
                last["val"] = self.evaluate()
            if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                self.save()
        batches.close()
        if not (cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0) and self.step > start_step:
            self.save()
        if cfg.data.val_targets and not (cfg.run.eval_every and self.step % cfg.run.eval_every == 0):
            last["val"] = self.evaluate()
        self._export_backbone()
        self.logger.close()
        # Leave together: a rank tearing down gloo while a peer still talks to it can abort.
        self.env.barrier()
        return last

    def _print_progress(self, m: dict[str, Any], eta: float) -> None:
        if "margin_loss" not in m:
            self.logger.info(f"step {self.step}/{self.total_steps} loss {m['loss']} (update skipped)")
            return
        self.logger.info(
            f"step {self.step}/{self.total_steps}  loss {m['loss']:.4f} (margin {m['margin_loss']:.4f} "
            f"+ beta*KL {m['kl_loss']:.4g})  lr {m['lr']:.4g}  {m['samples_per_s']:.1f} samples/s  "
            f"eta {format_duration(eta)}"
        )

    def evaluate(self) -> dict[str, Any]:
        """Verification accuracy on ``data.val_targets`` (rank 0 computes, others wait)."""
        from facevib.eval.verification import evaluate_bins, load_bins

        results: dict[str, Any] = {}
        if self.env.is_main:
            if self._val_bins is None:  # decoded once, reused at every evaluation
                self._val_bins = load_bins(self.cfg.data.val_dir, self.cfg.data.val_targets)
            results = evaluate_bins(
                self.backbone, self._val_bins, batch_size=self.cfg.data.batch_size, device=self.device
            )
            flat = {
                f"{name}/{key}": value
                for name, res in results.items()
                for key, value in res.items()
                if isinstance(value, (int, float))
            }
            self.logger.log(self.step, flat, kind="val")
            summary = ", ".join(f"{name} {res['accuracy'] * 100:.2f}%" for name, res in results.items())
            self.logger.info(f"step {self.step}: verification {summary}")
            if self.infoplane is not None:
                self._record_infoplane()
        self.env.barrier()
        return results

    # ------------------------------------------------------------------ information plane

    def _build_infoplane(self):
        """An :class:`~facevib.info.recorder.InfoPlaneRecorder` on a probe set from ``data.rec``."""
        info = self.cfg.info
        if not (info.record and self.env.is_main):
            return None
        from facevib.info.recorder import recorder_for_recordio

        return recorder_for_recordio(self.backbone, self.cfg.data.rec, info.max_classes, info.per_class, info.bin_size)

    def _record_infoplane(self) -> None:
        """Measure the backbone's layers now; write the history and log the scalars (bits)."""
        self.infoplane.record(self.step)
        self.infoplane.write(self.output)
        self.logger.log(self.step, self.infoplane.scalars(), kind="info")

    def _export_backbone(self) -> None:
        """Write ``backbone.pt``: the embedding model alone, for evaluation and export."""
        if not self.env.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "arch": self.backbone.arch,
            "backbone": {k: v.cpu() for k, v in self.backbone.state_dict().items()},
            "config": config_to_dict(self.cfg),
            "step": self.step,
        }
        tmp = self.output / ".backbone.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.output / "backbone.pt")
        self.logger.info(f"wrote {self.output / 'backbone.pt'}")
