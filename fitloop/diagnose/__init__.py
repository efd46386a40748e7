"""Diagnostics that drive a Trainer (or its one training step) from outside the loop: the LR finder."""

from .lr_find import LRFinderResult, lr_find, suggest_lr

__all__ = ["LRFinderResult", "lr_find", "suggest_lr"]
