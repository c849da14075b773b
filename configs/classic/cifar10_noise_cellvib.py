"""cellVIB paper §4.2: CIFAR-10 with symmetric label noise (Table 3) and CIFAR-10-C (Table 2).

The paper trains WRN-16-4; the factory has no WRN, so this config uses the cellVIB
Inception network (every block a VIB cell) with the paper's WRN schedule: SGD momentum
0.9, lr 0.1 divided by 5 at epochs 60/120/160, batch 128, 200 epochs, pad-4 crop + flip.
Noise rates of Table 3: ``--set data.label_noise=0.1`` (0.3, 0.5, 0.7); the baseline is
``--set model.name=inception``. Needs ``cifar-10-batches-py`` (and, for Table 2, the
extracted CIFAR-10-C folder):

    python train/classic.py configs/classic/cifar10_noise_cellvib.py --set data.root=/data/cifar10 \
        --set data.cifar10c_root=/data/CIFAR-10-C --set run.device=cuda

A GPU run; hours per setting.
"""

from facevib.config import ModelConfig
from facevib.experiments import ClassicConfig, OptimSettings
from facevib.experiments.config import ClassicData, ClassicRun

config = ClassicConfig(
    data=ClassicData(name="cifar10", batch_size=128, augment=True, label_noise=0.3),
    model=ModelConfig(name="cellvib_inception", kwargs={"num_classes": 10, "beta": "constant", "beta_max": 1e-5}),
    optim=OptimSettings(
        name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, milestones=[60, 120, 160], milestone_gamma=0.2
    ),
    run=ClassicRun(epochs=200, device="cuda", output="runs/cifar10_noise_cellvib"),
)
