"""Reports that put trained models side by side: results with intervals, training curves,
per-cell KL, ROC curves, the served model and an HTTP transcript (``eval/report.py``)."""
