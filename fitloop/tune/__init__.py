"""Model selection: searches that train whole Trainers and pick a model from what they measure.

    fitloop.tune.tuner          tune: the hyperparameter search on Optuna (TPE, ASHA/Hyperband pruning,
                                parallel workers, safe to kill); TuneResult, FitTrials
    fitloop.tune.space          search spaces as data (a dict or a TOML file), the default table space
    fitloop.tune.study          the study in a journal file: the lock, the budget, the trials a kill left
    fitloop.tune.workers        the trial loop of each worker process (and of each torchrun rank)
    fitloop.tune.pruning        TrialCallback: each epoch's val_loss to the pruner; a pruned trial stops
    fitloop.tune.size_search    the capacity search (`fl.size_search`): grow the MLP until it fits, shrink
                                it until it stops overfitting
    fitloop.tune.size_inputs    its arguments checked, the data as tensors, the trivial baseline's loss

The names below are imported on first use (PEP 562): each search imports torch and the Trainer, and the
hyperparameter search imports Optuna (`pip install 'fitloop[tune]'`) only when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "tune": "tuner", "TuneResult": "tuner", "FitTrials": "tuner",
    "TrialRunner": "workers", "TrialCallback": "pruning",
    "DEFAULT_TABLE_SPACE": "space", "load_space": "space", "check_space": "space", "SpaceError": "space",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs
    from .pruning import TrialCallback  # noqa: F401
    from .space import DEFAULT_TABLE_SPACE, SpaceError, check_space, load_space  # noqa: F401
    from .tuner import FitTrials, TuneResult, tune  # noqa: F401
    from .workers import TrialRunner  # noqa: F401
