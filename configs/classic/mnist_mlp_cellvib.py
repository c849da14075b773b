"""cellVIB paper §4.1: MLP 784-1024-1024-256 on MNIST, every layer a VIB cell (cellVIB-v2).

Adam lr 1e-4, betas (0.5, 0.999), lr x0.97 every 2 epochs, batch 100, 200 epochs, inputs
in [-1, 1]. The paper sweeps beta (Fig. 5): ``--set model.kwargs.beta_max=1e-4`` etc.
Variants: ``--set model.name=mlp`` (deterministic), ``deepvib_mlp`` (Deep VIB),
``--set "model.kwargs.cells=(1, 2)"`` (cellVIB-v1). Needs the four MNIST IDX files:

    python train/classic.py configs/classic/mnist_mlp_cellvib.py --set data.root=/data/mnist

200 epochs of this MLP take minutes on a GPU (``--set run.device=cuda``), hours on a CPU.
"""

from facevib.config import ModelConfig
from facevib.experiments import ClassicConfig, OptimSettings
from facevib.experiments.config import ClassicData, ClassicRun

config = ClassicConfig(
    data=ClassicData(name="mnist", batch_size=100),
    model=ModelConfig(name="cellvib_mlp", kwargs={"bottleneck": 256, "beta": "constant", "beta_max": 1e-3}),
    optim=OptimSettings(name="adam", lr=1e-4, betas=(0.5, 0.999), decay_every=2, decay_gamma=0.97),
    run=ClassicRun(epochs=200, output="runs/mnist_mlp_cellvib"),
)
