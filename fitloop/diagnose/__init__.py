"""Diagnostics that drive a Trainer (or its one training step) from outside the loop: the LR finder, the
guards against silent bugs and the sanity check. Model selection (the capacity search, `fl.size_search`)
is in `fitloop.tune`."""

from ..data.checks import GuardWarning, check_leakage
from .guards import GuardCallback
from .lr_find import LRFinderResult, lr_find, suggest_lr
from .sanity import SanityResult, sanity_check

__all__ = ["LRFinderResult", "lr_find", "suggest_lr", "GuardCallback", "GuardWarning", "check_leakage",
           "SanityResult", "sanity_check"]
