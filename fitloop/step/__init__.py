"""The one training step, and its pieces.

* `functions`: the step's pieces as functions of tensors (loss with input noise and penalty, clipping by
  norm and by value, the NaN/inf check, the update); every path below composes them.
* `eager`: `TrainingStep`, the step the Trainer, the LR finder and the sanity check run (eager, closure
  optimizers such as LBFGS, accumulation, AMP, several processes); `NonFiniteError`.
* `compiled`: `compile="step"`, the same step as one torch.compile graph (`CompiledStep`).
* `batches`: what the step and evaluation need of a batch source, as Protocols.

The names below are imported on first use (PEP 562): `fitloop._fastpath` composes `functions`, and
`eager` uses `fitloop._fastpath`, so importing `fitloop.step.functions` must not import `eager`.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {"TrainingStep": "eager", "NonFiniteError": "eager", "add_input_noise": "functions",
            "penalty": "functions"}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs
    from .eager import NonFiniteError, TrainingStep  # noqa: F401
    from .functions import add_input_noise, penalty  # noqa: F401
