"""How much of the clipped gradient is the cross-entropy's, early in cellVIB-r100 training.

The paper's beta (1e-3 at the first cell, falling linearly to 0) gives cellVIB-r100 a
weighted KL of thousands of nats at initialisation against a cross-entropy near 40, and
arcface_torch clips the backbone's gradient norm to 5. This trains the recipe's model
(``configs/ms1mv3_r100_cellvib.py``: model kwargs, head, SGD momentum, weight decay, clip)
for ``--steps`` steps on a fixed set of random 112x112 images (``--images`` of them,
``--classes`` identities, cycled in batches of ``--batch``), and at every step takes the
backbone's gradient of the two terms separately:

* ``ce_norm``, ``kl_norm``, ``total_norm``: |g_CE|, |g_KL|, |g_CE + g_KL|;
* ``ce_share``: the CE's share of the total, <g_CE, g> / |g|^2 (the KL's is 1 - it);
* ``clip_coef``: min(1, clip / |g|), what clipping the sum multiplies both terms by;
* ``ce_norm_after_clip``: |g_CE| after clipping the sum (clip_coef * |g_CE|), and what it
  would be if each term were clipped on its own (min(|g_CE|, clip)).

The run follows the recipe (the sum clipped); each step costs two backward passes.

    python benchmarks/kl_clip.py --steps 200 --out kl_clip.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from facevib.config import load_config
from facevib.losses import CombinedMarginLoss
from facevib.models import create_model
from facevib.partial_fc import PartialFC

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "ms1mv3_r100_cellvib.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=RECIPE, help="training recipe (model, head, optim)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=64, help="distinct random images, cycled")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's lr scaled to --batch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "images", "classes"):
        if getattr(args, name) < 1 or (name == "batch" and args.batch < 2):
            parser.error(f"--{name} must be >= {2 if name == 'batch' else 1}, got {getattr(args, name)}")
    return args


def flat_norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def flat_dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    clip = cfg.optim.clip_grad_norm
    torch.manual_seed(args.seed)
    backbone = create_model(cfg.model.name, **cfg.model.kwargs).train()
    margin = CombinedMarginLoss(s=cfg.head.scale, m1=cfg.head.m1, m2=cfg.head.m2, m3=cfg.head.m3)
    pfc = PartialFC(margin, backbone.embedding_dim, args.classes, seed=1)
    lr = args.lr if args.lr is not None else cfg.optim.lr * args.batch / cfg.optim.lr_batch_size
    params = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        [{"params": params}, {"params": [pfc.weight]}],
        lr=lr,
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
    data = torch.Generator().manual_seed(args.seed + 1)
    images = torch.rand(args.images, 3, 112, 112, generator=data) * 2 - 1
    labels = torch.arange(args.images) % args.classes

    rows = []
    for step in range(args.steps):
        start = time.perf_counter()
        pick = torch.arange(step * args.batch, (step + 1) * args.batch) % args.images
        embedding, kl = backbone(images[pick], return_kl=True)
        ce = pfc(embedding, labels[pick])
        weighted_kl = backbone.kl_loss(kl)
        optimizer.zero_grad(set_to_none=True)
        g_kl = torch.autograd.grad(weighted_kl, params, retain_graph=True, allow_unused=True)
        g_kl = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_kl, strict=True)]
        ce.backward()  # CE gradients of backbone and centres land in .grad
        g_ce = [p.grad.clone() for p in params]
        for p, g in zip(params, g_kl, strict=True):
            p.grad.add_(g)
        g_total = [p.grad for p in params]
        ce_norm, kl_norm, total_norm = flat_norm(g_ce), flat_norm(g_kl), flat_norm(g_total)
        coef = 1.0 if clip is None else min(1.0, clip / (total_norm + 1e-6))
        row = {
            "step": step,
            "ce": float(ce.detach()),
            "weighted_kl": float(weighted_kl.detach()),
            "ce_norm": ce_norm,
            "kl_norm": kl_norm,
            "total_norm": total_norm,
            "ce_share": flat_dot(g_ce, g_total) / total_norm**2,
            "clip_coef": coef,
            "ce_norm_after_clip": coef * ce_norm,
            "ce_norm_after_separate_clip": ce_norm if clip is None else min(ce_norm, clip),
            "seconds": 0.0,
        }
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)  # the recipe: the sum, backbone only
        optimizer.step()
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(
            f"step {step:4d}  ce {row['ce']:8.3f}  beta*KL {row['weighted_kl']:10.1f}  |g_ce| {ce_norm:9.3f}  "
            f"|g_kl| {kl_norm:9.3f}  ce share {row['ce_share']:6.3f}  clip x{coef:.4f}  "
            f"|g_ce| clipped {row['ce_norm_after_clip']:7.3f}  ({row['seconds']:.1f} s)",
            flush=True,
        )
        if args.out is not None:  # rewritten every step: a stopped run keeps what it measured
            write(args, cfg, lr, rows)
    summary = summarise(rows)
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        write(args, cfg, lr, rows)
    return {"summary": summary, "steps": rows}


def summarise(rows: list[dict]) -> dict:
    """Medians over the first, middle and last third of the steps."""
    third = max(1, len(rows) // 3)
    parts = {"first": rows[:third], "middle": rows[third : 2 * third], "last": rows[2 * third :]}
    keys = ("ce", "weighted_kl", "ce_norm", "kl_norm", "ce_share", "clip_coef", "ce_norm_after_clip")
    return {
        name: {key: statistics.median(r[key] for r in part) for key in keys}
        | {"steps": [part[0]["step"], part[-1]["step"]]}
        for name, part in parts.items()
        if part
    }


def write(args: argparse.Namespace, cfg, lr: float, rows: list[dict]) -> None:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {
        "settings": settings | {"lr": lr, "clip_grad_norm": cfg.optim.clip_grad_norm, "model": cfg.model.name},
        "model_kwargs": cfg.model.kwargs,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "summary": summarise(rows),
        "steps": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
