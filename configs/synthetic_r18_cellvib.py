"""cellVIB on the embedded synthetic identity set, sized for a 2-core CPU (``make demo``).

A narrow iResNet-18 (widths 16-32-64-128, 128-d embedding) learns the synthetic faces in a
few minutes on a CPU; everything else (cells in every block, beta falling linearly to 0 over
depth, ArcFace head, Partial FC) is the full method. beta starts at 1e-4, not the paper's
1e-3: over a schedule this short the paper's value leaves the KL term dominating. Weight
decay stays on every parameter (``optim.decay_norms_and_biases=True``, as arcface_torch):
exempting norms and biases made no measurable difference on this set. The measurements are
in ``docs/results.md`` (synthetic cellVIB configuration). Write the data first:

    python -m facevib.synth --out data/synthetic
"""

from facevib.config import DataConfig, HeadConfig, ModelConfig, OptimConfig, RunConfig, ScheduleConfig, TrainConfig

config = TrainConfig(
    model=ModelConfig(
        name="cellvib_r18",
        kwargs={"widths": (16, 32, 64, 128), "embedding_dim": 128, "beta": "linear", "beta_max": 1e-4, "beta_min": 0.0},
    ),
    data=DataConfig(rec="data/synthetic", batch_size=32, num_workers=1, val_dir="data/synthetic", val_targets=["lfw"]),
    # A smaller scale and margin suit a few hundred classes and a short schedule.
    head=HeadConfig(scale=32.0, m2=0.3),
    optim=OptimConfig(name="sgd", lr=0.1, lr_batch_size=64, momentum=0.9, weight_decay=5e-4),
    schedule=ScheduleConfig(kind="poly", warmup_steps=20, power=1.0),
    run=RunConfig(
        output="runs/synthetic_r18_cellvib",
        epochs=4,
        device="cpu",
        log_every=20,
        checkpoint_every=100,
        keep_checkpoints=2,
    ),
)
