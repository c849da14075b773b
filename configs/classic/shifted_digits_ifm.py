"""IFM paper §4: its CNN on shifted digits (offline stand-in for shiftedMNIST), with IFM.

Mutual information is maximised for (conv1, conv2), (conv2, conv3), (conv3, conv4) with
lambda 1 and lr 0.01 (IFM paper §4.2); the baseline is ``--set ifm.weight=0``. Runs on a
CPU in a few minutes:

    python train/classic.py configs/classic/shifted_digits_ifm.py

"test" is digit accuracy on random backgrounds, "test_texture" the accuracy at naming the
background texture (the paper's acc(digit) / acc(texture)).
"""

from facevib.config import IFMConfig, ModelConfig
from facevib.experiments import ClassicConfig, OptimSettings
from facevib.experiments.config import ClassicData, ClassicRun

config = ClassicConfig(
    data=ClassicData(name="shifted_digits", batch_size=64, test_fraction=0.3),
    model=ModelConfig(name="ifm_cnn", kwargs={"in_channels": 1, "input_size": 32}),
    optim=OptimSettings(name="adam", lr=0.01, betas=(0.9, 0.999)),
    ifm=IFMConfig(pairs=["conv1:conv2", "conv2:conv3", "conv3:conv4"], weight=1.0, locations=16),
    run=ClassicRun(epochs=10, output="runs/shifted_digits_ifm"),
)
