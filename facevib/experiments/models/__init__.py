"""The classification families of the cellVIB paper's other experiments and of the IFM paper.

Importing this package registers them in :func:`facevib.models.create_model`: the MLP of
MNIST (cellVIB §4.1: ``mlp``, ``deepvib_mlp``, ``cellvib_mlp``), the Inception network
(§3.4: ``inception``, ``cellvib_inception``), the ViT of the supplement (``vit_tiny``,
``cellvib_vit_tiny``) and ``ifm_cnn``, the CNN of the information-flow-maximisation paper.
The face core never imports them; the experiments, the information-plane tools and their
tests do.
"""

from facevib.experiments.models import convnet, inception, mlp, vit  # noqa: F401  (each registers its family)
