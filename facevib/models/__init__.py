"""facevib's model library: iResNet backbones, cellVIB and Deep VIB variants, VIB cells.

Typical training use::

    model = create_model("cellvib_r100")          # training mode; beta 1e-3 -> 0 over 49 cells
    embedding, kl = model(images, return_kl=True)  # kl: (num_cells,) batch-mean KL per cell, nats
    loss = classification_loss + model.kl_loss(kl)
    model.eval()(images)                           # deterministic mean embedding (B, 512)
"""

from facevib.models.arcface import (
    LoadReport,
    convert_arcface_state_dict,
    is_vib_key,
    load_arcface_state_dict,
    strip_wrapper_prefixes,
)
from facevib.models.beta import beta_schedule
from facevib.models.iresnet import IBasicBlock, IResNet, IResNetConfig, resolve_cells
from facevib.models.loading import load_backbone
from facevib.models.registry import create_model, list_models, register_model
from facevib.models.vib import VIBCell, gaussian_kl, reparameterize, softplus_sigma

__all__ = [
    "IBasicBlock",
    "IResNet",
    "IResNetConfig",
    "LoadReport",
    "VIBCell",
    "beta_schedule",
    "convert_arcface_state_dict",
    "create_model",
    "gaussian_kl",
    "is_vib_key",
    "list_models",
    "load_arcface_state_dict",
    "load_backbone",
    "register_model",
    "reparameterize",
    "resolve_cells",
    "softplus_sigma",
    "strip_wrapper_prefixes",
]
