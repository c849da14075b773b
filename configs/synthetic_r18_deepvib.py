"""Deep VIB counterpart of ``synthetic_r18_cellvib.py`` (one VIB at the embedding)."""

import copy

from synthetic_r18_cellvib import config as cellvib

from facevib.config import ModelConfig

config = copy.deepcopy(cellvib)
config.model = ModelConfig(
    name="deepvib_r18", kwargs={"widths": (16, 32, 64, 128), "embedding_dim": 128, "beta": "constant", "beta_max": 1e-3}
)
config.run.output = "runs/synthetic_r18_deepvib"
