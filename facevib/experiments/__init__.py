"""The cellVIB paper's classification experiments (MNIST MLP, CIFAR-10 label noise and
CIFAR-10-C, PACS) and the IFM paper's shifted digits, as a small single-process loop.

``python train/classic.py configs/classic/<experiment>.py --set data.root=...`` runs one;
:func:`fit_classifier` and :func:`accuracy` are the pieces the benchmarks reuse.
"""

from facevib.experiments.classify import ArrayDataset, OptimSettings, accuracy, fit_classifier, lr_at
from facevib.experiments.config import ClassicConfig, load_classic_config, validate_classic
from facevib.experiments.run import run_experiment

__all__ = [
    "ArrayDataset",
    "ClassicConfig",
    "OptimSettings",
    "accuracy",
    "fit_classifier",
    "load_classic_config",
    "lr_at",
    "run_experiment",
    "validate_classic",
]
