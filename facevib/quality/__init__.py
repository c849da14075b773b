"""Per-face quality: candidate scores, the heads trained after the backbone, the error-versus-discard
protocol that chooses between them, and the served [0, 1] quality.

* :mod:`facevib.quality.features`: one backbone pass, the raw embedding and every cell's sigma;
* :mod:`facevib.quality.scores`: the candidate scores (random, uncertainty, beta-weighted sigma, norm, heads);
* :mod:`facevib.quality.heads`: the PFE and CR-FIQA heads and their objectives;
* :mod:`facevib.quality.curves`: FNMR versus discarded fraction at a threshold fixed first, areas, bootstrap;
* :mod:`facevib.quality.testset`: held-out synthetic faces with one controlled nuisance each;
* :mod:`facevib.quality.scale`: the empirical-CDF [0, 1] scale as a graph op;
* :mod:`facevib.quality.served`: a candidate and its scale as the module the export puts into the graph.

``benchmarks/quality.py`` runs the comparison; ``docs/quality.md`` has the results.
"""
