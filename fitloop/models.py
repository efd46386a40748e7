"""Models: an MLP built from a dataclass spec, and a wrapper for plain functions with parameters."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .mlp_checks import ACTIVATION_CLASSES, check_mlp
from .tabm import TabM, TabMSpec

__all__ = ["MLPSpec", "build_mlp", "build_model", "spec_from_dict", "SkipMLP", "EnsembleSpec", "Ensemble",
           "ENSEMBLE_AVERAGES", "fit_linear_path",
           "gcv_ridge", "fit_logistic_path", "FunctionModel", "ACTIVATIONS", "as_module", "trainable_parameters"]

# the names are `mlp_checks.ACTIVATION_CLASSES` (checked there without importing torch)
ACTIVATIONS: dict[str, type[nn.Module]] = {name: getattr(nn, cls) for name, cls in ACTIVATION_CLASSES.items()}


@dataclass
class MLPSpec:
    """Everything needed to rebuild an MLP; stored next to its weights.

    Args:
        in_features: number of input features.
        hidden: sizes of the hidden layers, e.g. `[64, 32]`; empty for a linear model.
        out_features: number of outputs (1 for regression or binary, the class count otherwise).
        activation: one of `ACTIVATIONS` (`relu`, `gelu`, `silu`, `tanh`, `sigmoid`, ...).
        dropout: dropout probability after each hidden activation (0 for none).
        skip: add a linear path from the inputs to the outputs beside the hidden layers
            (`SkipMLP`: `output = mlp(x) + linear(x)`), so linear structure is learnt as easily as
            by a linear model. Off by default (what specs saved before it existed rebuild to);
            `fitloop train` turns it on (BENCHMARKS.md, "Tables").

    Example:
        >>> model = fl.build_mlp(fl.MLPSpec(64, hidden=[128], out_features=10))
        >>> model = fl.build_mlp(fl.MLPSpec(13, hidden=[64, 32], out_features=3, skip=True))
    """

    in_features: int
    hidden: list[int] = field(default_factory=list)
    out_features: int = 1
    activation: str = "relu"
    dropout: float = 0.0
    skip: bool = False

    def __post_init__(self) -> None:
        self.hidden = [int(h) for h in self.hidden]
        check_mlp(self.hidden, self.activation, self.dropout, in_features=self.in_features,
                  out_features=self.out_features)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "mlp", **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MLPSpec:
        return cls(**{k: v for k, v in d.items() if k != "kind"})


def build_mlp(spec: MLPSpec) -> nn.Module:
    """Build an MLP from `spec`; the spec is attached as `model.spec`.

    Without `spec.skip` it is an `nn.Sequential` whose layer names are the usual indices, so the state
    dict is what users expect; with it, a `SkipMLP` (`mlp.0.weight`, ..., `skip.weight`).
    """
    model = _sequential(spec) if not spec.skip or not spec.hidden else SkipMLP(spec)
    # torch types Module.__setattr__'s value as Tensor | Module; a plain attribute is fine at run time.
    model.spec = spec  # type: ignore[assignment]
    return model


def _sequential(spec: MLPSpec) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = spec.in_features
    for h in spec.hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[spec.activation]()]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = h
    layers.append(nn.Linear(width, spec.out_features))
    return nn.Sequential(*layers)


class SkipMLP(nn.Module):
    """An MLP with a linear path beside it: `forward(x) = mlp(x) + skip(x)`.

    `skip` is a bias-free `nn.Linear(in_features, out_features)` (the MLP's last layer has the bias).
    Built by `build_mlp` for `MLPSpec(..., skip=True)`; a spec without hidden layers is already
    linear and builds a plain `nn.Sequential`.
    """

    def __init__(self, spec: MLPSpec) -> None:
        super().__init__()
        self.mlp = _sequential(spec)
        self.skip = nn.Linear(spec.in_features, spec.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.skip(x)

    def start_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start the output at the linear map `x @ weight.T + bias`: the skip path gets `weight`, the MLP's
        last layer zero weights and the bias, so the hidden layers learn what the linear map misses."""
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            self.skip.weight.copy_(weight)
            last.weight.zero_()
            last.bias.copy_(bias)


def build_model(spec: MLPSpec | TabMSpec) -> nn.Module:
    """The module a model spec describes, with fresh weights: `build_mlp` or a `fitloop.tabm.TabM`."""
    return TabM(spec) if isinstance(spec, TabMSpec) else build_mlp(spec)


def spec_from_dict(d: Mapping[str, Any]) -> MLPSpec | TabMSpec:
    """An `MLPSpec` or `TabMSpec` from its `to_dict()` (its ``"kind"``: ``"mlp"`` or ``"tabm"``)."""
    if d.get("kind") == "mlp":
        return MLPSpec.from_dict(d)
    if d.get("kind") == "tabm":
        return TabMSpec.from_dict(d)
    raise ValueError(f"unknown model spec kind {d.get('kind')!r}; expected \"mlp\" or \"tabm\".")


ENSEMBLE_AVERAGES = ("probabilities", "outputs")  # classification / regression


@dataclass
class EnsembleSpec:
    """A weighted average of MLPs or TabMs (`Ensemble`), rebuilt from JSON like `MLPSpec`; stored next to its weights.

    Args:
        members: the members' specs; they share `in_features` and `out_features`.
        weights: one positive weight per member, normalised to sum to 1 (greedy ensemble selection gives
            each member its share of the picks).
        average: ``"probabilities"`` (classification: the members' softmax probabilities are averaged and
            the module returns their log, so softmax and argmax downstream read it as logits) or
            ``"outputs"`` (regression: the members' outputs are averaged).

    Example:
        >>> from fitloop.models import Ensemble, EnsembleSpec, MLPSpec
        >>> spec = EnsembleSpec([MLPSpec(13, [64], 3), MLPSpec(13, [32], 3)], weights=[2, 1])
        >>> model = Ensemble(spec)   # spec.weights == [2/3, 1/3]
    """

    members: list[MLPSpec | TabMSpec]
    weights: list[float]
    average: str = "probabilities"

    def __post_init__(self) -> None:
        self.members = list(self.members)
        self.weights = [float(w) for w in self.weights]
        if not self.members or not all(isinstance(m, (MLPSpec, TabMSpec)) for m in self.members):
            raise ValueError("EnsembleSpec: members must be a non-empty list of MLPSpec or TabMSpec.")
        if len(self.weights) != len(self.members):
            raise ValueError(f"EnsembleSpec: {len(self.weights)} weights for {len(self.members)} members; "
                             f"give one weight per member.")
        if not all(math.isfinite(w) and w > 0 for w in self.weights):
            raise ValueError(f"EnsembleSpec: weights must be finite and positive, got {self.weights}.")
        if self.average not in ENSEMBLE_AVERAGES:
            raise ValueError(f"EnsembleSpec: average={self.average!r}; choose one of {ENSEMBLE_AVERAGES}.")
        shapes = {(m.in_features, m.out_features) for m in self.members}
        if len(shapes) > 1:
            raise ValueError(f"EnsembleSpec: the members' (in_features, out_features) differ: {sorted(shapes)}.")
        total = sum(self.weights)
        self.weights = [w / total for w in self.weights]

    @property
    def in_features(self) -> int:
        return self.members[0].in_features

    @property
    def out_features(self) -> int:
        return self.members[0].out_features

    def to_dict(self) -> dict[str, Any]:
        # in/out_features are derived, but readers of fitloop.json (the report's summary) look for them
        return {"kind": "ensemble", "average": self.average, "weights": list(self.weights),
                "in_features": self.in_features, "out_features": self.out_features,
                "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnsembleSpec:
        members = []
        for member in d["members"]:
            if member.get("kind") not in ("mlp", "tabm"):
                raise ValueError(f"EnsembleSpec: a member of kind {member.get('kind')!r}; members are MLPs or "
                                 f"TabMs.")
            members.append(spec_from_dict(member))
        return cls(members, list(d["weights"]), d.get("average", "probabilities"))


class Ensemble(nn.Module):
    """The weighted average of its members (`EnsembleSpec`), as one module that saves, loads and exports
    like an MLP: the state dict is each member's under ``members.<i>.``.

    Classification (``average="probabilities"``) returns ``log(sum_i w_i softmax(member_i(x)))``: the log of
    the averaged probabilities, so `softmax` gives them back exactly and `argmax` picks the class they favour.
    Regression (``average="outputs"``) returns ``sum_i w_i member_i(x)``.
    """

    weights: torch.Tensor

    def __init__(self, spec: EnsembleSpec) -> None:
        super().__init__()
        self.members = nn.ModuleList(build_model(m) for m in spec.members)
        # derived from the spec, which the bundle stores: not part of the state dict
        self.register_buffer("weights", torch.tensor(spec.weights, dtype=torch.float32), persistent=False)
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([member(x) for member in self.members])  # (members, batch, out)
        weights = self.weights.to(outputs.dtype).reshape(-1, *([1] * (outputs.dim() - 1)))
        if self.spec.average == "outputs":
            return (weights * outputs).sum(0)
        probabilities = (weights * torch.softmax(outputs, -1)).sum(0)
        # the smallest normal float keeps log finite where every member gives a class probability 0
        return torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))


def fit_linear_path(model: SkipMLP | TabM, X: torch.Tensor, targets: torch.Tensor, ridge: float | None = 1e-2) -> float:
    """Start a `SkipMLP` or a `fitloop.tabm.TabM` at the ridge-regression fit of `targets` on `X`
    (`model.start_linear`): the skip path gets the weights, the output layer the intercept and zero weights,
    so the model's output is the linear fit until training moves it (and the hidden layers learn what the
    linear fit misses).

    Args:
        model: the model to initialise (in place).
        X: the training inputs, `(n, in_features)`.
        targets: what the outputs should fit, `(n, out_features)` (e.g. standardized values, or
            one-hot classes scaled to logits).
        ridge: the L2 penalty, relative to the mean squared input (keeps the solve well-posed);
            `None` picks it by generalized cross-validation on these rows (`gcv_ridge`).

    Returns:
        The relative penalty used.
    """
    with torch.no_grad():
        X64, t64 = X.double(), targets.double().reshape(len(X), -1)
        _check_finite(X64, t64)
        x_mean, t_mean = X64.mean(0), t64.mean(0)
        Xc, tc = X64 - x_mean, t64 - t_mean
        scale = float((Xc * Xc).sum(0).mean().clamp_min(1e-12))  # the mean diagonal of Xc'Xc
        if ridge is None:  # one SVD of the centred inputs scores every penalty of the grid
            U, S, _ = torch.linalg.svd(Xc, full_matrices=False)
            ridge = gcv_ridge(S, U.T @ tc, tc, scale)
        rel = float(ridge)
        gram = Xc.T @ Xc
        lam = rel * float(gram.diagonal().mean().clamp_min(1e-12))
        w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), Xc.T @ tc)  # (d, out)
        model.start_linear(w.T.float(), (t_mean - x_mean @ w).float())
    return rel


def _check_finite(X: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise a `ValueError` naming the first input column (or the targets) that holds inf or NaN: the
    linear start's SVD and solve cannot use them (torch's own error names neither)."""
    bad_columns = (~torch.isfinite(X)).any(0).nonzero().flatten().tolist()
    if bad_columns:
        raise ValueError(f"the linear start needs finite inputs, but input column {bad_columns[0]} (0-based) holds "
                         f"inf or NaN (values beyond float32's range, 3.4e38?); rescale or drop that column.")
    if not bool(torch.isfinite(targets).all()):
        raise ValueError("the linear start needs finite targets, but they hold inf or NaN; rescale the target.")


# `fit_logistic_path` solves by Newton's method with a dense Hessian up to this many weights (else: ridge)
LOGISTIC_MAX_WEIGHTS = 2000


def fit_logistic_path(model: SkipMLP | TabM, X: torch.Tensor, labels: torch.Tensor, c: float = 1.0,
                      iterations: int = 25) -> bool:
    """Start a `SkipMLP` or a `fitloop.tabm.TabM` at the L2-regularized multinomial logistic-regression fit of
    `labels` on `X` (`model.start_linear`): the skip path gets the weights, the output layer the intercepts
    and zero weights, so the model's logits are the logistic fit's until training moves them.

    The objective is scikit-learn's `LogisticRegression(C=c)`: `c * sum of cross-entropies + ||W||^2 / 2`
    (intercepts not penalized), minimised by Newton's method with step halving (it is strictly
    convex, so a few iterations converge), in float64.

    Args:
        model: the model to initialise (in place); its `out_features` is the class count.
        X: the training inputs, `(n, in_features)`.
        labels: class indices, `(n,)`.
        c: the inverse L2 strength (scikit-learn's `C`).
        iterations: the most Newton steps.

    Returns:
        False (the model untouched) when the problem has more than `LOGISTIC_MAX_WEIGHTS` weights, so the
        caller can start elsewhere.
    """
    assert model.skip is not None
    k = model.skip.out_features
    n, d = X.shape
    if (d + 1) * k > LOGISTIC_MAX_WEIGHTS:
        return False
    if k == 2:  # two softmax rows share the penalty that scikit-learn's one binary weight vector has alone
        c = c / 2
    with torch.no_grad():
        Xa = torch.cat([X.double(), torch.ones(n, 1, dtype=torch.float64)], 1)  # the last column: intercepts
        Y = torch.nn.functional.one_hot(labels.long(), k).double()
        pen = torch.ones(d + 1, dtype=torch.float64)
        pen[-1] = 0.0
        pen_flat = pen.repeat(k)  # W is (k, d+1), flattened row by row
        W = torch.zeros(k, d + 1, dtype=torch.float64)

        def objective(W: torch.Tensor) -> float:
            logits = Xa @ W.T
            ce = float((torch.logsumexp(logits, 1) - (logits * Y).sum(1)).sum())
            return c * ce + 0.5 * float((W * W * pen).sum())

        f = objective(W)
        for _ in range(iterations):
            P = torch.softmax(Xa @ W.T, 1)  # (n, k)
            grad = (c * (P - Y).T @ Xa + W * pen).reshape(-1)
            M = (P[:, :, None] * Xa[:, None, :]).reshape(n, -1)  # (n, k(d+1)): p_ia x_i
            H = -(M.T @ M)  # - sum_i (p_i x_i)(p_i x_i)'
            blocks = torch.einsum("ia,ij,il->ajl", P, Xa, Xa)  # + diag(p_i) (x) x_i x_i'
            for a in range(k):
                s = slice(a * (d + 1), (a + 1) * (d + 1))
                H[s, s] += blocks[a]
            H = c * H + torch.diag(pen_flat) + 1e-10 * torch.eye(H.shape[0], dtype=H.dtype)
            step = torch.linalg.solve(H, grad).reshape(k, d + 1)
            t = 1.0
            while t > 1e-4:
                f_new = objective(W - t * step)
                if f_new <= f:
                    break
                t /= 2
            if t <= 1e-4:
                break
            W, gain, f = W - t * step, f - f_new, f_new
            if gain <= 1e-8 * max(1.0, abs(f)):
                break
        model.start_linear(W[:, :-1].float(), W[:, -1].float())
    return True


# the penalties `gcv_ridge` chooses from, relative to the mean squared input (1e-2 was the fixed default)
RIDGE_GRID = tuple(10.0 ** (k / 4) for k in range(-20, 13))  # 1e-5 .. 1e3


def gcv_ridge(S: torch.Tensor, Ut: torch.Tensor, tc: torch.Tensor, scale: float) -> float:
    """The ridge penalty (relative to `scale`) of `RIDGE_GRID` with the lowest generalized cross-validation
    error `n * RSS / (n - df - 1)^2` (Golub, Heath & Wahba 1979; the 1 is the intercept), from the SVD of
    the centred inputs (singular values `S`, `Ut = U' tc`) and the centred targets `tc`: no refits.
    Pure noise gets a large penalty (predictions near the mean), clean linear data a small one."""
    n = tc.shape[0]
    total = float((tc * tc).sum())
    outside = total - float((Ut * Ut).sum())  # the part of the targets no linear fit reaches
    best, best_rel = math.inf, RIDGE_GRID[-1]
    s2 = S * S
    for rel in RIDGE_GRID:
        shrink = (rel * scale) / (s2 + rel * scale)  # 1 - the fit's share of each direction
        rss = outside + float(((shrink[:, None] * Ut) ** 2).sum())
        dof = float((1 - shrink).sum()) + 1.0
        if n - dof <= 0.5:
            continue
        g = n * rss / (n - dof) ** 2
        if g < best:
            best, best_rel = g, rel
    return best_rel


class FunctionModel(nn.Module):
    """A plain function with parameter tensors, as in the autograd-style tutorial.

    `fn(x, *params)` is called on each batch. A single parameter tensor is unpacked along its
    first dimension, so `params = torch.tensor([1.0, 0.0], requires_grad=True)` with
    `fn = lambda x, w, b: w * x + b` works as written in the tutorial. The user's tensors are
    updated in place, so they show the trained values afterwards.

    Example:
        >>> params = torch.tensor([1.0, 0.0], requires_grad=True)
        >>> model = fl.FunctionModel(lambda t_u, w, b: w * t_u + b, params)
    """

    def __init__(self, fn: Callable[..., torch.Tensor], params: torch.Tensor | Sequence[torch.Tensor]) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"FunctionModel: fn must be callable, got {type(fn).__name__}.")
        self.fn = fn
        tensors = [params] if isinstance(params, torch.Tensor) else list(params)
        if not tensors or not all(isinstance(p, torch.Tensor) for p in tensors):
            raise TypeError("FunctionModel: params must be a tensor or a list of tensors, "
                            f"got {type(params).__name__}.")
        self.unpack = isinstance(params, torch.Tensor)
        # nn.Parameter shares storage with the user's tensor: optimizer updates show up there too.
        self.params = nn.ParameterList([p if isinstance(p, nn.Parameter)
                                        else nn.Parameter(p, requires_grad=p.requires_grad)
                                        for p in tensors])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unpack:
            return self.fn(x, *self.params[0])
        return self.fn(x, *self.params)

    def extra_repr(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"fn={name}, params={[tuple(p.shape) for p in self.params]}"


def as_module(model: nn.Module | Callable[..., torch.Tensor], params: Sequence[torch.Tensor] | None = None
              ) -> nn.Module:
    """`model` itself, or a plain function `fn(x, *params)` with its `params` as a `FunctionModel`."""
    if isinstance(model, nn.Module):
        return model
    if params is None or not callable(model):
        raise TypeError(f"model: expected an nn.Module, or a function together with params=[...], "
                        f"got {type(model).__name__}.")
    return FunctionModel(model, params)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that require grad; a clear error when there are none."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        n = sum(1 for _ in model.parameters())
        raise ValueError(f"model: none of the {n} parameters of {type(model).__name__} requires grad, "
                         "so there is nothing to train. Create them with requires_grad=True "
                         "(or call p.requires_grad_() on each).")
    return params
