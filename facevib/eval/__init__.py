"""Evaluation: verification sets and IJB-B/C, on checkpoints or exported ONNX models.

Modules (each importable on its own; none parses arguments or touches a GPU at import):

* :mod:`facevib.eval.verification` -- the 10-fold protocol of LFW-style ``.bin`` sets,
  ``evaluate_verification`` (metric core) and ``evaluate_bins`` (for the training loop);
* :mod:`facevib.eval.roc` -- exact and nearest-ROC-point TPR@FPR, an sklearn-equal ROC curve;
* :mod:`facevib.eval.templates` -- IJB template aggregation and vectorised pair scoring;
* :mod:`facevib.eval.identification` -- 1:N TPIR@FPIR and CMC ranks;
* :mod:`facevib.eval.ijb` -- the IJB pipeline: embedding, feature cache, evaluation;
* :mod:`facevib.eval.embed` -- ``Embedder`` / ``load_embedder`` (torch or ONNX Runtime);
* :mod:`facevib.eval.report` -- tables, JSON and ROC plots.
"""
