"""Baseline counterpart of ``synthetic_r18_cellvib.py`` (same data, head and schedule)."""

import copy

from synthetic_r18_cellvib import config as cellvib

from facevib.config import ModelConfig

config = copy.deepcopy(cellvib)
config.model = ModelConfig(name="r18", kwargs={"widths": (16, 32, 64, 128), "embedding_dim": 128})
config.run.output = "runs/synthetic_r18_arcface"
