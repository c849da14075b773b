"""Information plane of facevib models, per layer and across runs (cellVIB Figs. 5-6).

    python eval/infoplane.py --model runs/digits_cellvib/backbone.pt --data digits --out results/infoplane
    python eval/infoplane.py --model b1e-4/backbone.pt b1e-3/backbone.pt b1e-2/backbone.pt --data digits --out res/
    python eval/infoplane.py --model run/backbone.pt --data /data/faces_emore --out res/ --max-classes 50
    python eval/infoplane.py --model run/backbone.pt --data /data/lfw.bin --out res/

For every representation layer: the VIB cell's KL (upper bound on I(Z_i; Z_{i-1})), a
lower bound on I(Z_i; Y) = H(Y) - cross-entropy of a probe (fitted on one half of the
samples, scored on the other; a classifier's output uses its own logits), and the binning
estimate with its saturation flag; with --kernel-noise-var, the Kolchinsky-Tracey bounds on
the layer plus Gaussian noise; with --jsd-steps, a JSD critic's bound between adjacent
layers (the IFM paper's estimator). --data is `digits` (scikit-learn's load_digits, the
classification experiments' split), a RecordIO folder (identities split across the two
halves) or a verification .bin (label = same identity). Writes OUT/infoplane.json,
OUT/infoplane_depth.png and, with several --model (runs at different beta),
OUT/infoplane_beta.png; prints a table in bits.
"""

from __future__ import annotations

import sys

from facevib.info.__main__ import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
