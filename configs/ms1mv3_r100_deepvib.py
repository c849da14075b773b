"""Deep VIB iResNet-100 on MS1MV3, paper recipe: one VIB at the embedding (Alemi et al.,
"Deep Variational Information Bottleneck", arXiv:1612.00410).

The comparison model of the cellVIB paper's Table 5; beta 1e-3 on its single cell.
"""

import copy

from ms1mv3_r100_cellvib import config as paper

from facevib.config import ModelConfig

config = copy.deepcopy(paper)
config.model = ModelConfig(name="deepvib_r100", kwargs={"dropout": 0.4, "beta": "constant", "beta_max": 1e-3})
config.run.output = "runs/ms1mv3_r100_deepvib"
