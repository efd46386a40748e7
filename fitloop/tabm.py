"""TabM: an MLP that is an ensemble of k members sharing most of their weights, with numeric embeddings.

The table trainer's default model (`fitloop train`, `fitloop.tabular.train`). It follows TabM-mini
(Gorishniy, Kotelnikov and Babenko, "TabM: Advancing Tabular Deep Learning with Parameter-Efficient
Ensembling", ICLR 2025) and the numeric embeddings of Gorishniy, Rubachev and Babenko, "On Embeddings for
Numerical Features in Tabular Deep Learning" (NeurIPS 2022):

    x ─┬─ numeric columns ── embeddings (piecewise-linear or periodic) ─┐
       ├─ other columns (one-hot, missing flags) ─────────────────────────┴─ concat ─ × r_i ─ MLP ─ head_i ─┬─ member i
       └─ skip: a linear path on x, shared by every member ──────────────────────────────────────────────────┘

Member i multiplies the embedded input by its own vector `r_i` (random signs at first) and has its own
output layer `head_i`; the hidden layers are shared, so k members cost about one MLP's parameters and one
MLP's matrix products on a k-times-larger batch.

* Training (`model.train()`): the output is every member's, `(batch, k, out)`, and each member is trained
  on its own loss: wrap the loss in `fitloop.optim.MembersLoss` (the table trainer does).
* Evaluation (`model.eval()`): the output is the ensemble's, `(batch, out)`: the members' mean
  (regression), or the log of their mean probabilities (classification: softmax and argmax downstream
  read it as logits). Prediction, export (ONNX, torch.export) and serving see this module like an MLP.

Example:
    >>> from fitloop.tabm import TabM, TabMSpec
    >>> from fitloop.optim import MembersLoss
    >>> model = TabM(TabMSpec(10, out_features=3, numeric=[0, 1, 2], average="probabilities"))
    >>> trainer = fl.Trainer(model, loss=MembersLoss("cross_entropy"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .mlp_checks import ACTIVATION_CLASSES, check_mlp

__all__ = ["TabMSpec", "TabM", "PiecewiseLinearEmbeddings", "PeriodicEmbeddings", "combine_members", "EMBEDDINGS",
           "fit_bins"]

EMBEDDINGS = ("piecewise", "periodic", "none")
AVERAGES = ("probabilities", "outputs")


@dataclass
class TabMSpec:
    """Everything needed to rebuild a `TabM`; stored next to its weights (JSON).

    Args:
        in_features: number of input features.
        out_features: number of outputs (1 for regression, the class count for classification).
        k: ensemble members.
        hidden: widths of the shared hidden layers.
        dropout: dropout after each hidden activation.
        activation: the hidden activation (`fitloop.models.ACTIVATIONS`).
        numeric: indices of the input features that get a numeric embedding (standardised numbers; the
            other inputs, such as one-hot columns and missing flags, go in as they are).
        embedding: ``"piecewise"`` (piecewise-linear encoding on quantile bins of the training rows:
            `fit_bins`), ``"periodic"`` (learnt frequencies, cos and sin) or ``"none"``.
        d_embedding: the width of each numeric feature's embedding.
        n_bins: piecewise: the bins per feature; periodic: the frequencies per feature.
        frequency_scale: periodic: the standard deviation of the initial frequencies.
        skip: add a linear path from the inputs to the outputs, shared by the members, which the table
            trainer starts at the ridge or logistic fit (`fitloop.models.fit_linear_path`).
        average: how `eval()` combines the members: ``"probabilities"`` (classification) or ``"outputs"``.
    """

    in_features: int
    out_features: int = 1
    k: int = 8
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.1
    activation: str = "relu"
    numeric: list[int] = field(default_factory=list)
    embedding: str = "piecewise"
    d_embedding: int = 16
    n_bins: int = 16
    frequency_scale: float = 0.1
    skip: bool = True
    average: str = "outputs"

    def __post_init__(self) -> None:
        self.hidden = [int(h) for h in self.hidden]
        self.numeric = sorted(int(i) for i in self.numeric)
        check_mlp(self.hidden, self.activation, self.dropout, in_features=self.in_features,
                  out_features=self.out_features, names={"hidden": "TabMSpec", "activation": "TabMSpec",
                                                          "dropout": "TabMSpec"})
        if not self.hidden:
            raise ValueError("TabMSpec: hidden must name at least one layer, e.g. [256, 256].")
        if self.k < 1:
            raise ValueError(f"TabMSpec: k must be >= 1 members, got {self.k}.")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"TabMSpec: embedding must be one of {', '.join(EMBEDDINGS)}, got {self.embedding!r}.")
        if self.average not in AVERAGES:
            raise ValueError(f"TabMSpec: average must be one of {', '.join(AVERAGES)}, got {self.average!r}.")
        if any(not 0 <= i < self.in_features for i in self.numeric) or len(set(self.numeric)) < len(self.numeric):
            raise ValueError(f"TabMSpec: numeric must be distinct indices below in_features={self.in_features}.")
        if self.d_embedding < 1 or self.n_bins < 1:
            raise ValueError("TabMSpec: d_embedding and n_bins must be >= 1.")

    @property
    def embedded(self) -> bool:
        return self.embedding != "none" and bool(self.numeric)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tabm", **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TabMSpec:
        return cls(**{k: v for k, v in d.items() if k != "kind"})


class PiecewiseLinearEmbeddings(nn.Module):
    """Piecewise-linear encoding of each numeric feature on its bins, then a linear layer per feature and
    a ReLU. The bins are a buffer: `fit_bins` sets them from the training rows (quantiles), and they are
    saved with the weights. Component t of a value x is `(x - left_t) / width_t`, clipped to [0, 1] (the first
    bin open to the left and the last one open to the right, so values beyond the training range extrapolate)."""

    left: torch.Tensor
    width: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor

    def __init__(self, n_features: int, n_bins: int, d_embedding: int) -> None:
        super().__init__()
        edges = torch.linspace(-2.0, 2.0, n_bins + 1).expand(n_features, -1)  # replaced by `fit_bins`
        self.register_buffer("left", edges[:, :-1].contiguous())
        self.register_buffer("width", (edges[:, 1:] - edges[:, :-1]).contiguous())
        lower = torch.zeros(n_bins)
        upper = torch.ones(n_bins)
        lower[0] = -torch.inf
        upper[-1] = torch.inf
        self.register_buffer("lower", lower, persistent=False)
        self.register_buffer("upper", upper, persistent=False)
        bound = 1 / math.sqrt(n_bins)
        self.weight = nn.Parameter(torch.empty(n_features, n_bins, d_embedding).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_features, d_embedding).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, n) -> (batch, n, d)
        raw = (x.unsqueeze(-1) - self.left) / self.width
        encoded = torch.minimum(torch.maximum(raw, self.lower), self.upper)
        return torch.relu(torch.einsum("bnt,ntd->bnd", encoded, self.weight) + self.bias)


class PeriodicEmbeddings(nn.Module):
    """Periodic embeddings (PLR): `relu(linear_j([cos(2 pi c_j x), sin(2 pi c_j x)]))` for feature j, with
    learnt frequencies `c_j` (initially normal with standard deviation `scale`)."""

    def __init__(self, n_features: int, n_frequencies: int, d_embedding: int, scale: float) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_features, n_frequencies) * scale)
        bound = 1 / math.sqrt(2 * n_frequencies)
        self.weight = nn.Parameter(torch.empty(n_features, 2 * n_frequencies, d_embedding).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_features, d_embedding).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, n) -> (batch, n, d)
        angles = 2 * math.pi * x.unsqueeze(-1) * self.frequencies
        features = torch.cat([torch.cos(angles), torch.sin(angles)], -1)
        return torch.relu(torch.einsum("bnf,nfd->bnd", features, self.weight) + self.bias)


class TabM(nn.Module):
    """The ensemble MLP a `TabMSpec` describes (see the module's docstring); the spec is `model.spec`.

    State dict: `embedding.*` (numeric embeddings, bins included), `r` (each member's input scaling, `(k,
    width)`), `mlp.*` (the shared hidden layers), `head_weight` `(k, hidden, out)` and `head_bias` `(k, out)`,
    and `skip.weight` (the linear path).
    """

    other: torch.Tensor
    numeric: torch.Tensor

    def __init__(self, spec: TabMSpec) -> None:
        super().__init__()
        self.spec = spec
        n_numeric = len(spec.numeric) if spec.embedded else 0
        numeric = spec.numeric if n_numeric else []
        others = [i for i in range(spec.in_features) if i not in set(numeric)]
        self.register_buffer("numeric", torch.tensor(numeric, dtype=torch.long), persistent=False)
        self.register_buffer("other", torch.tensor(others, dtype=torch.long), persistent=False)
        self.embedding: nn.Module | None = None
        if spec.embedded and spec.embedding == "piecewise":
            self.embedding = PiecewiseLinearEmbeddings(n_numeric, spec.n_bins, spec.d_embedding)
        elif spec.embedded:
            self.embedding = PeriodicEmbeddings(n_numeric, spec.n_bins, spec.d_embedding, spec.frequency_scale)
        width = len(others) + n_numeric * spec.d_embedding
        # TabM's initialisation: each member scales the input by its own random signs
        self.r = nn.Parameter(torch.randint(0, 2, (spec.k, width)).float() * 2 - 1)
        layers: list[nn.Module] = []
        for h in spec.hidden:
            layers += [nn.Linear(width, h), getattr(nn, ACTIVATION_CLASSES[spec.activation])()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = h
        self.mlp = nn.Sequential(*layers)
        bound = 1 / math.sqrt(width)
        self.head_weight = nn.Parameter(torch.empty(spec.k, width, spec.out_features).uniform_(-bound, bound))
        self.head_bias = nn.Parameter(torch.empty(spec.k, spec.out_features).uniform_(-bound, bound))
        self.skip = nn.Linear(spec.in_features, spec.out_features, bias=False) if spec.skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)

    def members(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output, `(batch, k, out)`, in either mode."""
        inputs = x[:, self.other] if self.embedding is not None else x
        if self.embedding is not None:
            embedded = self.embedding(x[:, self.numeric]).flatten(1)
            inputs = torch.cat([inputs, embedded], 1)
        hidden = self.mlp(inputs.unsqueeze(1) * self.r)  # (batch, k, width)
        out = torch.einsum("bkw,kwo->bko", hidden, self.head_weight) + self.head_bias
        if self.skip is not None:
            out = out + self.skip(x).unsqueeze(1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members(x)
        return out if self.training else combine_members(out, self.spec.average)

    def start_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start the model's output at the linear map `x @ weight.T + bias` (each member's head at zero and
        its bias at `bias`), as `fitloop.models.fit_linear_path` does for a `SkipMLP`."""
        if self.skip is None:
            raise ValueError("TabM.start_linear needs the linear path: build it with TabMSpec(skip=True).")
        with torch.no_grad():
            self.skip.weight.copy_(weight)
            self.head_weight.zero_()
            self.head_bias.copy_(bias.to(self.head_bias.dtype).expand_as(self.head_bias))


def combine_members(out: torch.Tensor, average: str) -> torch.Tensor:
    """The ensemble's output from the members' `(batch, k, out)`: their mean (``"outputs"``), or the log of
    their mean probabilities (``"probabilities"``: softmax over classes, or a sigmoid for one output)."""
    if average == "outputs":
        return out.mean(1)
    if out.shape[-1] == 1:  # one logit: average the sigmoid probabilities, and return their logit
        p = torch.sigmoid(out).mean(1).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)
    probabilities = torch.softmax(out, -1).mean(1)
    # the smallest normal float keeps log finite where every member gives a class probability 0
    return torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))


def fit_bins(model: nn.Module, X: torch.Tensor) -> None:
    """Set a piecewise-linear `TabM`'s bins to quantiles of the training inputs `X` `(n, in_features)`
    (its numeric columns): equal-frequency bins, the encoding of Gorishniy et al. (2022). A column with few
    distinct values gets repeated edges; their bins are a step at that value. Nothing to do for other models."""
    embedding = getattr(model, "embedding", None)
    if not isinstance(embedding, PiecewiseLinearEmbeddings):
        return
    with torch.no_grad():
        values = X[:, model.numeric].double()  # type: ignore[index]  # a TabM: its embedding says so
        n_bins = embedding.left.shape[1]
        if len(values) > 200_000:  # quantiles of a seeded sample: the same bins, without sorting every row
            rows = torch.randperm(len(values), generator=torch.Generator().manual_seed(0))[:200_000]
            values = values[rows]
        edges = torch.quantile(values, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64), dim=0).T
        width = (edges[:, 1:] - edges[:, :-1]).clamp_min(1e-6)
        embedding.left.copy_(edges[:, :-1].float())
        embedding.width.copy_(width.float())
