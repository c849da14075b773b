"""cellVIB paper: PACS domain generalisation with beta 1e-3, leave-one-domain-out.

The paper uses a ResNet-18; this config uses the cellVIB Inception network on 224x224
crops (7 classes), training on three domains and testing on ``data.pacs_target``. Needs
the PACS folders ``<root>/{art_painting,cartoon,photo,sketch}/<class>/*.jpg``:

    python train/classic.py configs/classic/pacs_cellvib.py --set data.root=/data/PACS \
        --set data.pacs_target=photo --set run.device=cuda

A GPU run.
"""

from facevib.config import ModelConfig
from facevib.experiments import ClassicConfig, OptimSettings
from facevib.experiments.config import ClassicData, ClassicRun

config = ClassicConfig(
    data=ClassicData(name="pacs", batch_size=64, augment=True, image_size=224, pacs_target="sketch"),
    model=ModelConfig(
        name="cellvib_inception",
        kwargs={"num_classes": 7, "pool_after": [0, 1, 3], "beta": "constant", "beta_max": 1e-3},
    ),
    optim=OptimSettings(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, milestones=[24], milestone_gamma=0.1),
    run=ClassicRun(epochs=30, device="cuda", output="runs/pacs_cellvib"),
)
