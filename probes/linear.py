"""Linear probes on any cached activation, with train/test splits and control tasks.

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

``probe_sweep(model_or_cache, batch, hooks, target, positions)`` fits one probe per
hook × layer × position and returns an ``xarray.DataArray`` with dims
``(hook, layer, position, metric)``; metric ``control_informative`` is 1 where the
control task means something and 0 where it cannot (see above).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import xarray as xr
from jaxtyping import Float, Int
from torch import Tensor

from ssmlens.interp.hook_names import dims_for, hook_layer, hook_suffix
from ssmlens.interp.tasks.base import TaskBatch

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


# ---- where to read, and what to predict ---------------------------------------------------

_ROLE_RE = re.compile(r"^([A-Za-z_]\w*)(?:\[(-?\d+)\])?$")


def positions_index(batch: TaskBatch | None, positions, length: int) -> tuple[list, Int[Tensor, "batch k"]]:
    """Resolve a position spec to (labels, per-example positions ``[b, k]``, −1 = absent).

    ``positions``: "all" (every position), an int (negative counts from the end), a
    role name of the batch ("query": its first column; "key[3]": column 3), or a list
    of those. A ``[b, k]`` int tensor is taken as it is.
    """
    if isinstance(positions, Tensor):
        return list(range(positions.shape[1])), positions.long()
    b = len(batch) if batch is not None else None
    items = list(range(length)) if positions == "all" else (
        [positions] if isinstance(positions, (int, str)) else list(positions))
    labels, cols = [], []
    for item in items:
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.lstrip("-").isdigit()):
            p = int(item)
            if not -length <= p < length:
                raise ValueError(f"position {p} out of range for sequences of length {length}")
            p %= length
            labels.append(p)
            cols.append(torch.full((b or 1,), p, dtype=torch.long))
            continue
        m = _ROLE_RE.match(str(item))
        if m is None or batch is None:
            raise ValueError(f"position {item!r}: expected an int, 'all' or a role name"
                             + ("" if batch is not None else " (role names need a TaskBatch)"))
        role = batch.role(m.group(1))
        col = int(m.group(2) or 0)
        if not -role.shape[1] <= col < role.shape[1]:
            raise ValueError(f"role {m.group(1)!r} has {role.shape[1]} columns, asked for column {col}")
        labels.append(str(item))
        cols.append(role[:, col])
    n_rows = max((len(c) for c in cols), default=b or 1)
    return labels, torch.stack([c.expand(n_rows) if len(c) == 1 else c for c in cols], 1)


def target_labels(batch: TaskBatch, target) -> Tensor:
    """Labels ``[b]`` (one per example) or ``[b, pos]`` (one per position); −1 = no label.

    ``target``: a role name ("queried_value": the token there; "key[2]"), a callable
    ``batch -> labels``, or a tensor.
    """
    if callable(target) and not isinstance(target, Tensor):
        target = target(batch)
    if isinstance(target, (Tensor, np.ndarray)):
        labels = torch.as_tensor(target).long()
    else:
        m = _ROLE_RE.match(str(target))
        if m is None:
            raise ValueError(f"target {target!r}: expected a role name, a callable or a tensor")
        labels = batch.tokens_at(m.group(1))[:, int(m.group(2) or 0)]
    if labels.shape[0] != len(batch) or labels.ndim not in (1, 2):
        raise ValueError(f"labels must be [batch] or [batch, pos] with batch={len(batch)}, got {tuple(labels.shape)}")
    return labels


# ---- activations at positions ----------------------------------------------------------------


def _pos_axis(name: str, ndim: int) -> int:
    dims = dims_for(name, ndim)
    for d in ("pos", "query_pos", "key_pos"):
        if d in dims:
            return dims.index(d)
    if ndim < 2:
        raise ValueError(f"hook {name!r} has no position axis (shape rank {ndim})")
    return 1


def gather_positions(act: Tensor, name: str, index: Int[Tensor, "batch k"]) -> Float[Tensor, "batch k features"]:
    """The activation of every example at its positions ``index`` (−1 → zeros), flattened."""
    act = torch.as_tensor(act)
    ax = _pos_axis(name, act.ndim)
    act = act.movedim(ax, 1)
    b, L = act.shape[:2]
    flat = act.reshape(b, L, -1)
    idx = index.to(flat.device).clamp(0, L - 1)
    out = flat.gather(1, idx[:, :, None].expand(-1, -1, flat.shape[-1]))
    return out.float().masked_fill((index < 0).to(out.device)[:, :, None], 0.0)


def resolve_hooks(available: Sequence[str], hooks: str | Sequence[str]) -> list[str]:
    """Hook names from a spec: full names, or kinds for every layer ("resid_pre",
    "ssm_state", "mixer.hook_delta", "attn.z"), comma-separated or a list."""
    specs = [h.strip() for h in hooks.split(",")] if isinstance(hooks, str) else list(hooks)
    out: list[str] = []
    for spec in filter(None, specs):
        if spec in available:
            found = [spec]
        else:
            parts = spec.rsplit(".", 1)
            last = parts[-1] if parts[-1].startswith("hook_") else "hook_" + parts[-1]
            want = ".".join(parts[:-1] + [last])
            found = [n for n in available if hook_suffix(n) == want or hook_suffix(n).endswith("." + want)]
        if not found:
            kinds = sorted({hook_suffix(n) for n in available})
            raise ValueError(f"no hook matches {spec!r}; hook kinds of this model: {', '.join(kinds)}")
        out += [n for n in found if n not in out]
    return out


def _collect(source, batch: TaskBatch, names: list[str], index: Tensor, batch_size: int) -> dict[str, Tensor]:
    """{hook: [b, k, features]} from a model (extracting only the probed positions) or a cache."""
    from ssmlens.interp.hooks import HookedModel

    if not isinstance(source, HookedModel):
        return {n: gather_positions(_load(source[n]), n, index) for n in names}
    parts: dict[str, list[Tensor]] = {n: [] for n in names}
    device = next(source.parameters()).device
    for start in range(0, len(batch), batch_size):
        rows = slice(start, start + batch_size)

        def grab(act, hook, rows=rows):
            parts[hook.name].append(gather_positions(act.detach(), hook.name, index[rows]).cpu())

        with torch.no_grad():
            source.run_with_hooks(batch.tokens[rows].to(device), fwd_hooks=[(n, grab) for n in names],
                                  return_type=None)
    return {n: torch.cat(v) for n, v in parts.items()}


def _load(value) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "load"):
        return value.load()
    return torch.as_tensor(np.asarray(value))


def probe_sweep(
    source, batch: TaskBatch, hooks: str | Sequence[str], target, positions="all", *,
    method: str = "ridge", control: bool = True, test_frac: float = 0.25, seed: int = 0,
    batch_size: int = 256, progress: bool = False, **fit_kw,
) -> xr.DataArray:
    """Probe accuracy per hook kind × layer × position.

    ``source``: a HookedModel (run on ``batch.tokens``; only the probed positions are
    kept) or a cache mapping hook names to ``[batch, pos, ...]`` (an
    ``ActivationCache``, a run store's ``run.cache``, a dict). ``hooks``: see
    ``resolve_hooks``; ``target``: see ``target_labels``; ``positions``: see
    ``positions_index``. One train/test split (by example) serves every probe; the
    control task uses the token at the probed position as the token type.

    Returns a DataArray with dims ``(hook, layer, position, metric)``: hook = kind
    (``hook_suffix``), layer = block index (−1 for hooks outside the blocks), position
    = the int positions, or string labels ("query", "5") when roles are among them,
    metric in ``METRICS``; NaN where a hook kind has no such layer or a probe had no data.
    """
    available = list(source.hook_dict) if hasattr(source, "hook_dict") else list(source.keys())
    names = resolve_hooks(available, hooks)
    labels_all = target_labels(batch, target)
    pos_labels, index = positions_index(batch, positions, batch.seq_len)
    index = index.expand(len(batch), -1) if index.shape[0] == 1 else index
    acts = _collect(source, batch, names, index, batch_size)
    split = train_test_split(len(batch), test_frac, seed)
    in_train = torch.zeros(len(batch), dtype=torch.bool)
    in_train[split[0]] = True

    kinds = list(dict.fromkeys(hook_suffix(n) for n in names))
    layers = sorted({-1 if hook_layer(n) is None else hook_layer(n) for n in names})
    data = np.full((len(kinds), len(layers), len(pos_labels), len(METRICS)), np.nan)
    jobs = [(n, j) for n in names for j in range(len(pos_labels))]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="probes")
    uninformative: dict[str, str] = {}  # position label -> why (warned once, after the sweep)
    for name, j in jobs:
        pos = index[:, j]
        y = labels_all if labels_all.ndim == 1 else labels_all.gather(1, pos.clamp(min=0)[:, None])[:, 0]
        ok = (pos >= 0) & (y >= 0)
        tr, te = torch.nonzero(ok & in_train)[:, 0], torch.nonzero(ok & ~in_train)[:, 0]
        if len(tr) < 2 or len(te) < 1:
            continue
        types = batch.tokens.gather(1, pos.clamp(min=0)[:, None])[:, 0] if control else None
        res = fit_probe(acts[name][:, j], y, method=method, control=types, split=(tr, te), seed=seed, warn=False,
                        **fit_kw)
        if control and not res.control_informative:
            uninformative.setdefault(str(pos_labels[j]), _why_uninformative(types, tr))
        layer = -1 if hook_layer(name) is None else hook_layer(name)
        at = (kinds.index(hook_suffix(name)), layers.index(layer), j)
        data[at] = [res.metrics()[m] for m in METRICS]
    if not control:
        data[..., METRICS.index("control_informative")] = np.nan  # no control task: nothing to flag
    if uninformative:
        where = "; ".join(f"position {p}: {why}" for p, why in uninformative.items())
        warnings.warn(f"control task uninformative at {len(uninformative)} position(s) ({where}): those cells "
                      "are marked control_informative = 0 and have no selectivity", UninformativeControl,
                      stacklevel=2)
    return xr.DataArray(
        data, dims=("hook", "layer", "position", "metric"),
        coords={"hook": kinds, "layer": layers, "metric": list(METRICS),
                # ints when every position is absolute, else all labels as strings ("0", "query")
                "position": pos_labels if all(isinstance(p, int) for p in pos_labels) else [str(p) for p in pos_labels]},
        name="probe_accuracy",
        attrs={"target": target if isinstance(target, str) else getattr(target, "__name__", "custom"),
               "method": method, "control": bool(control), "test_frac": float(test_frac), "seed": int(seed),
               "n_examples": len(batch), "n_test": len(split[1]), "task": batch.task},
    )


def sweep_table(da: xr.DataArray):
    """The sweep as a tidy table: columns hook, layer, position, metric, value (NaN rows
    dropped), and ``control_informative`` (bool, per cell: False where the control task
    cannot mean anything, so its control_acc is not to be read)."""
    df = da.to_dataframe(name="value").reset_index()
    df["position"] = df["position"].astype(str)
    flag = "control_informative"
    if flag in df["metric"].values:
        cells = ["hook", "layer", "position"]
        flags = df[df["metric"] == flag].set_index(cells)["value"]
        df = df[df["metric"] != flag]
        df = df.assign(**{flag: [not (f == 0) for f in flags.reindex(pd.MultiIndex.from_frame(df[cells])).to_numpy()]})
    return df.dropna(subset=["value"]).reset_index(drop=True)


__all__ = [
    "METHODS", "METRICS", "LinearProbe", "ProbeResult", "UninformativeControl", "control_labels", "fit",
    "fit_logistic", "fit_probe", "fit_ridge", "flatten_features", "gather_positions", "positions_index", "probe_sweep",
    "resolve_hooks", "sweep_table", "target_labels", "train_test_split",
]
