"""The synthetic face renderer: the project's embedded default data set, written in the real formats.

Modules, from the bottom up:

* :mod:`facevib.synth.params`: identities (persistent appearance) and photo conditions;
* :mod:`facevib.synth.geometry`: the head as ellipsoids under a weak-perspective camera;
* :mod:`facevib.synth.features`: eyes, brows, mouth, nostrils, glasses painted on the surface;
* :mod:`facevib.synth.render`: one loose-crop photo and its exact 5 landmarks;
* :mod:`facevib.synth.jobs`: one identity's photos per job and their seeds; :mod:`facevib.synth.worker` runs them in a process;
* :mod:`facevib.synth.ijb`: the IJB-C-style folder (loose crops, meta files, 1:1 and 1:N lists);
* :mod:`facevib.synth.dataset`: :func:`write_synthetic_dataset`, what ``python -m facevib.synth`` runs.
"""

from facevib.synth.dataset import SynthOptions, verification_pairs, write_synthetic_dataset

__all__ = ["SynthOptions", "write_synthetic_dataset", "verification_pairs"]
