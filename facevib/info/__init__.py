"""Information measurement for facevib models: MI estimators checked against closed forms.

All estimators return nats; :func:`to_bits` converts for plots.

- :func:`vib_kl_bound`: per-cell upper bound on I(Z_i; Z_{i-1}) from the VIB KL
  (cellVIB, arXiv:2403.15082, withdrawn).
- :func:`label_mi_lower_bound`, :func:`probe_label_mi`: I(Z; Y) >= H(Y) - CE on held-out
  data, from a model's logits or from a probe on an intermediate cell's features.
- :func:`binning_mi`: whole-layer binning estimator of Li and Liu ("Information Bottleneck
  Methods on Convolutional Neural Networks"), with saturation at log N flagged.
- :func:`kernel_mi_bounds`: pairwise-distance upper / lower bounds of Kolchinsky and
  Tracey ("Estimating Mixture Entropy with Pairwise Distances", Entropy 2017).
- :func:`jsd_mi`: Jensen-Shannon bound between adjacent layers from a trained critic
  (IFM, Shen, Li, Liu); :class:`Critic`, :func:`jsd_objective` and :func:`sample_pairs` are
  the same pieces a training-time regulariser uses.

Whole models: :mod:`facevib.info.plane` (``measure_plane``: every layer's KL bound, probe
I(Z;Y), binning and optional JSD), :mod:`facevib.info.recorder` (``InfoPlaneRecorder``:
the same over training), :mod:`facevib.info.analysis` (what ``eval/infoplane.py`` runs);
:mod:`facevib.info.ifm` is the IFM training regulariser.
"""

from facevib.info.binning import DEFAULT_BIN_SIZE, BinningAccumulator, BinningResult, binning_mi, unique_rows
from facevib.info.entropy import LN2, entropy_from_counts, label_entropy, to_bits
from facevib.info.jsd import (
    CRITIC_HIDDEN,
    Critic,
    JSDEstimate,
    feature_vectors,
    jsd_from_objective,
    jsd_mi,
    jsd_objective,
    sample_pairs,
)
from facevib.info.kernel import KernelMIBounds, kernel_mi_bounds
from facevib.info.vib_bounds import LabelProbe, label_mi_lower_bound, probe_label_mi, vib_kl_bound

__all__ = [
    "CRITIC_HIDDEN",
    "DEFAULT_BIN_SIZE",
    "LN2",
    "BinningAccumulator",
    "BinningResult",
    "Critic",
    "JSDEstimate",
    "KernelMIBounds",
    "LabelProbe",
    "binning_mi",
    "entropy_from_counts",
    "feature_vectors",
    "jsd_from_objective",
    "jsd_mi",
    "jsd_objective",
    "kernel_mi_bounds",
    "label_entropy",
    "label_mi_lower_bound",
    "probe_label_mi",
    "sample_pairs",
    "to_bits",
    "unique_rows",
    "vib_kl_bound",
]
