"""Margin losses for face recognition: ArcFace, CosFace and their combined form."""

from facevib.losses.margin import CombinedMarginLoss, margin_logits, target_margin

__all__ = ["CombinedMarginLoss", "margin_logits", "target_margin"]
