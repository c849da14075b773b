"""One classification experiment from a validated config: train, evaluate, write metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import torch

import facevib.experiments.models  # noqa: F401  (registers the research families)
from facevib.config import config_to_dict
from facevib.experiments.classify import accuracy, fit_classifier
from facevib.experiments.config import ClassicConfig
from facevib.experiments.data import build_datasets
from facevib.info.ifm import IFMRegularizer
from facevib.models import create_model

__all__ = ["run_experiment"]


def _severity_means(results: dict[str, float]) -> dict[str, float]:
    """CIFAR-10-C accuracy averaged over corruptions per severity (cellVIB Table 2)."""
    by_level: dict[str, list[float]] = {}
    for name, value in results.items():
        if "/s" in name:
            by_level.setdefault(name.rsplit("/", 1)[1], []).append(value)
    return {f"cifar10c_mean/{level}": sum(v) / len(v) for level, v in sorted(by_level.items())}


def run_experiment(cfg: ClassicConfig, stream: TextIO | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` and return (and write) the results.

    Writes ``<run.output>/metrics.json`` (config, per-epoch history, accuracies) and
    ``backbone.pt`` (arch + state_dict; the IFM critics are saved apart, as ``ifm.pt``).
    """
    torch.manual_seed(cfg.run.seed)
    device = torch.device(cfg.run.device)
    train_set, eval_sets = build_datasets(cfg.data, cfg.run.seed)
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    ifm = None
    if cfg.ifm.weight > 0:
        example = torch.stack([train_set[i][0] for i in range(2)])
        ifm = IFMRegularizer.for_model(model, cfg.ifm.pairs, example, cfg.ifm.weight, cfg.ifm.locations)

    def log(epoch: int, record: dict[str, Any]) -> None:
        if stream is not None:
            print(
                f"epoch {epoch}/{cfg.run.epochs}  ce {record['ce']:.4f}  beta*KL {record['kl_loss']:.4g}", file=stream
            )

    history = fit_classifier(
        model,
        train_set,
        cfg.optim,
        epochs=cfg.run.epochs,
        batch_size=cfg.data.batch_size,
        seed=cfg.run.seed,
        device=device,
        ifm=ifm,
        on_epoch=log,
    )
    results = {name: accuracy(model, dataset, device=device) for name, dataset in eval_sets.items()}
    results.update(_severity_means(results))
    output = Path(cfg.run.output)
    output.mkdir(parents=True, exist_ok=True)
    report = {"config": config_to_dict(cfg), "history": history, "accuracy": results}
    (output / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    torch.save({"arch": model.arch, "backbone": model.cpu().state_dict()}, output / "backbone.pt")
    if ifm is not None:
        ifm.detach()
        torch.save({"pairs": [list(p) for p in ifm.pairs], "state_dict": ifm.cpu().state_dict()}, output / "ifm.pt")
    if stream is not None:
        print("accuracy: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in results.items()), file=stream)
    return report
