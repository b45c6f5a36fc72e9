"""Fitting and scoring one linear probe, with its train/test split and control task.

A probe reads one activation per example (``[n, ...]``, flattened to ``[n, features]``,
so an SSM state ``[d_inner, d_state]`` becomes ``d_inner·d_state`` features) and
predicts a class label. Two fitters:

- ``fit_ridge``: closed-form least-squares classifier on one-hot targets (ridge
  regularized; primal or dual solve, whichever matrix is smaller);
- ``fit_logistic``: multinomial logistic regression trained by L-BFGS with an L2
  penalty (deterministic, full batch).

Features are standardized with train statistics. ``fit_probe`` adds the split and
the control task of Hewitt & Liang (2019): every token *type* (the input token at the
probed position) gets a random label drawn from the empirical label distribution,
the same probe is fitted on those labels, and selectivity = test acc − control acc.
Where the control labels of the training split take a single value (the probed
position's token never varies, e.g. ``<bos>``), the control probe predicts a constant
and scores 1.0 whatever the activations hold: such a cell is *uninformative*
(``control_informative`` 0, selectivity NaN, an ``UninformativeControl`` warning), and
the figures mark it rather than draw a number.

The sweep of probes over hooks × layers × positions is ``ssmlens.probes.linear_sweep``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

METRICS = ("train_acc", "test_acc", "control_acc", "selectivity", "chance", "majority", "control_informative")


METHODS = ("ridge", "logistic")


class UninformativeControl(UserWarning):
    """A control task with one label on the training split (the probed token never
    varies): its accuracy and the selectivity say nothing about the probe."""


# ---- the probe -----------------------------------------------------------------------


@dataclass
class LinearProbe:
    """A fitted linear classifier: logits = ((x − mean) / scale) @ weight + bias.

    ``classes`` ``[C]`` holds the original label of each output column.
    """

    weight: Float[Tensor, "features classes"]
    bias: Float[Tensor, "classes"]
    mean: Float[Tensor, "features"]
    scale: Float[Tensor, "features"]
    classes: Int[Tensor, "classes"]

    def logits(self, x: Tensor) -> Float[Tensor, "n classes"]:
        x = flatten_features(x).to(self.weight.dtype)
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, x: Tensor) -> Int[Tensor, "n"]:
        return self.classes[self.logits(x).argmax(-1)]

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        if len(y) == 0:
            return float("nan")
        return float((self.predict(x) == y.to(self.classes.device)).float().mean())


def flatten_features(x: Tensor) -> Float[Tensor, "n features"]:
    """``[n, ...]`` -> ``[n, features]`` float (states ``[n, d_inner, d_state]`` included)."""
    x = torch.as_tensor(x)
    if x.ndim == 0:
        raise ValueError("activations must have a leading example axis, got a scalar")
    x = x.reshape(x.shape[0], -1)
    return x if x.is_floating_point() else x.float()


def _prepare(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """float64 standardized features, class indices, and the statistics to undo them."""
    x = flatten_features(x).double()
    y = torch.as_tensor(y).long().reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} activations but {y.shape[0]} labels")
    if x.shape[0] < 2:
        raise ValueError(f"a probe needs at least 2 training examples, got {x.shape[0]}")
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 1e-8 * scale.max().clamp_min(1e-30), scale, torch.ones_like(scale))
    classes, idx = torch.unique(y, return_inverse=True)
    return (x - mean) / scale, idx, classes, mean, scale


def fit_ridge(x: Tensor, y: Tensor, alpha: float = 1e-2) -> LinearProbe:
    """Closed-form least-squares classifier: W = argmin ‖X W − Y‖² + λ‖W‖² on one-hot Y.

    λ = ``alpha`` · tr(XᵀX) / features (so ``alpha`` is relative to the feature scale).
    Solved in the primal (features ≤ n) or the dual (W = Xᵀ(XXᵀ + λI)⁻¹Y) form.
    """
    xs, idx, classes, mean, scale = _prepare(x, y)
    n, d = xs.shape
    onehot = F.one_hot(idx, len(classes)).double()
    prior = onehot.mean(0)
    Y = onehot - prior  # centered targets: the bias is the class prior
    lam = float(alpha) * float(xs.pow(2).sum()) / d + 1e-10
    if d <= n:
        W = torch.linalg.solve(xs.T @ xs + lam * torch.eye(d, dtype=xs.dtype), xs.T @ Y)
    else:
        W = xs.T @ torch.linalg.solve(xs @ xs.T + lam * torch.eye(n, dtype=xs.dtype), Y)
    return LinearProbe(W.float(), prior.float(), mean.float(), scale.float(), classes)


def fit_logistic(x: Tensor, y: Tensor, weight_decay: float = 1e-3, max_iter: int = 100) -> LinearProbe:
    """Multinomial logistic regression, full-batch L-BFGS, loss CE + weight_decay·‖W‖²."""
    xs, idx, classes, mean, scale = _prepare(x, y)
    xs = xs.float()
    d, C = xs.shape[1], len(classes)
    W = torch.zeros(d, C, requires_grad=True)
    b = torch.zeros(C, requires_grad=True)
    if C > 1:
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=int(max_iter), line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(xs @ W + b, idx) + float(weight_decay) * W.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
    return LinearProbe(W.detach(), b.detach(), mean.float(), scale.float(), classes)


def fit(x: Tensor, y: Tensor, method: str = "ridge", **kw) -> LinearProbe:
    if method == "ridge":
        return fit_ridge(x, y, **kw)
    if method == "logistic":
        return fit_logistic(x, y, **kw)
    raise ValueError(f"unknown probe method {method!r}; valid methods: {', '.join(METHODS)}")


# ---- splits, control task, one probe with its evaluation ------------------------------------


def train_test_split(n: int, test_frac: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random disjoint (train, test) example indices; the same for a given n and seed."""
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    if n < 2:
        raise ValueError(f"need at least 2 examples to split, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    n_test = min(max(1, round(n * test_frac)), n - 1)
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def control_labels(types: Tensor, labels: Tensor, seed: int = 0) -> Int[Tensor, "n"]:
    """Hewitt & Liang control task: each distinct type gets one label, drawn at random
    from the empirical distribution of ``labels``; returns the label of each example."""
    types = torch.as_tensor(types).long().reshape(-1)
    labels = torch.as_tensor(labels).long().reshape(-1)
    g = torch.Generator().manual_seed(int(seed) + 7919)
    uniq, inv = torch.unique(types, return_inverse=True)
    draw = torch.randint(len(labels), (len(uniq),), generator=g)
    return labels[draw][inv]


@dataclass
class ProbeResult:
    """Accuracies of one probe (and of its control), with the fitted probe."""

    train_acc: float
    test_acc: float
    control_acc: float = float("nan")
    chance: float = float("nan")  # 1 / number of training classes
    majority: float = float("nan")  # test accuracy of predicting the most common train class
    n_train: int = 0
    n_test: int = 0
    n_classes: int = 0
    control_informative: bool = True  # False: the control labels were one constant (module docstring)
    probe: LinearProbe | None = field(default=None, repr=False)

    @property
    def selectivity(self) -> float:
        return self.test_acc - self.control_acc if self.control_informative else float("nan")

    def metrics(self) -> dict[str, float]:
        return {m: float(getattr(self, m)) for m in METRICS}


def fit_probe(
    x: Tensor, y: Tensor, *, method: str = "ridge", test_frac: float = 0.25, seed: int = 0,
    control: Tensor | None = None, split: tuple[Tensor, Tensor] | None = None, warn: bool = True, **fit_kw,
) -> ProbeResult:
    """Fit on a train split, score on the held-out split.

    x ``[n, ...]`` activations, y ``[n]`` integer labels. ``control``: token types
    ``[n]`` for the control task (None: no control). ``split``: explicit
    (train, test) indices, else ``train_test_split(n, test_frac, seed)``. A control
    task with a single label on the train split is flagged (``control_informative``
    False, selectivity NaN) and, with ``warn``, an ``UninformativeControl`` warning.
    """
    x = flatten_features(x)
    y = torch.as_tensor(y).long().reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} activations but {y.shape[0]} labels")
    train, test = split if split is not None else train_test_split(len(y), test_frac, seed)
    probe = fit(x[train], y[train], method, **fit_kw)
    counts = torch.bincount(torch.unique(y[train], return_inverse=True)[1])
    top = probe.classes[counts.argmax()]
    res = ProbeResult(
        train_acc=probe.accuracy(x[train], y[train]), test_acc=probe.accuracy(x[test], y[test]),
        chance=1.0 / len(probe.classes), majority=float((y[test] == top).float().mean()) if len(test) else math.nan,
        n_train=len(train), n_test=len(test), n_classes=len(probe.classes), probe=probe,
    )
    if control is not None:
        yc = control_labels(torch.as_tensor(control).reshape(-1), y, seed)
        res.control_acc = fit(x[train], yc[train], method, **fit_kw).accuracy(x[test], yc[test])
        res.control_informative = bool(yc[train].unique().numel() > 1)
        if warn and not res.control_informative:
            warnings.warn(f"control task uninformative: {_why_uninformative(control, train)}; control accuracy "
                          f"{res.control_acc:.2f} and selectivity say nothing here", UninformativeControl,
                          stacklevel=2)
    return res


def _why_uninformative(types, train: Tensor) -> str:
    n_types = torch.as_tensor(types).reshape(-1)[train].unique().numel()
    return ("the probed token never varies (one token type)" if n_types == 1
            else f"its {n_types} token types all drew the same control label")


__all__ = [
    "METHODS", "METRICS", "LinearProbe", "ProbeResult", "UninformativeControl", "control_labels", "fit",
    "fit_logistic", "fit_probe", "fit_ridge", "flatten_features", "train_test_split",
]
