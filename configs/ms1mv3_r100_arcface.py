"""Baseline iResNet-100 + ArcFace on MS1MV3, trained with the cellVIB paper's recipe.

Identical to ``ms1mv3_r100_cellvib.py`` except for the backbone, so the two runs differ
only in the VIB cells.
"""

import copy

from ms1mv3_r100_cellvib import config as paper

from facevib.config import ModelConfig

config = copy.deepcopy(paper)
config.model = ModelConfig(name="r100", kwargs={"dropout": 0.4})
config.run.output = "runs/ms1mv3_r100_arcface"
