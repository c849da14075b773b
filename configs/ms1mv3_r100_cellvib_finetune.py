"""cellVIB fine-tuning from a trained arcface_torch iResNet-100 (``backbone.pth``).

Mean branches start from the checkpoint, sigma branches fresh (softplus bias -5, so the
network starts almost deterministic); a short schedule at a lower lr. The gradient clip is
the paper recipe's (see the comment there: the KL does not swamp it).
"""

import copy

from ms1mv3_r100_cellvib import config as paper

from facevib.config import RunConfig, ScheduleConfig

config = copy.deepcopy(paper)
config.model.init_backbone = "pretrained/ms1mv3_arcface_r100/backbone.pth"
config.optim.lr = 0.01
config.schedule = ScheduleConfig(kind="poly", warmup_steps=1_000, power=2.0)
config.run = RunConfig(
    output="runs/ms1mv3_r100_cellvib_finetune",
    total_steps=40_000,
    amp="auto",
    channels_last=True,  # as the training recipe (ms1mv3_r100_cellvib.py)
    compile=True,
    log_every=100,
    eval_every=5_000,
    checkpoint_every=5_000,
)
