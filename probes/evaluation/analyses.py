"""Every measurement of one trained model, as labelled arrays and one row of numbers.

``analyse(model, task, task_config, analysis)`` runs, with a progress bar over the steps:

==========================  ===========================================================
result                      what (module that computes it)
==========================  ===========================================================
``accuracy``                answer accuracy and loss on ``eval_size`` held-out examples
``interchange/<component>`` IIA ``(metric, layer, role)`` of value interchanges by role
                            (``interventions.interchange_by_role``)
``association/<component>`` restored fraction ``(metric, layer, role)`` under key
                            corruption (``interventions.association_test``)
``ablation/acc``            accuracy ``(ablation,)``: none, no_conv, no_conv@l (when the
                            model has a short conv; H3: no_shift, ``SHORT_CONV_ABLATIONS``)
``memory/*``                B'MOJO only (``memory``): ``recall_vs_size``, ``writes``,
                            ``write_ablation``, ``attention``, ``write_patching``,
                            ``write_change``
``mixing/L<l>``             the token-mixing matrix ``(group, q, k)`` of example 0
                            (``ssmlens.probes.mixing``), float32
``diagnostics/*``           SSM, H3 and Hyena layers (``ssmlens.probes.diagnostics``):
                            ``decay_quantiles (layer, quantile)``, ``radius (layer, pos)``,
                            ``horizon (layer, channel | head | filter)``,
                            ``scalars (layer, stat)``
==========================  ===========================================================

and ``metrics``, the numbers the suite's mechanism table is made of (``summary_row``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from ssmlens.interp.tasks import make_task
from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.probes.ablation import NotApplicable, parse_ablation
from ssmlens.probes.evaluation import interventions, memory
from ssmlens.probes.evaluation.accuracy import answer_accuracy
from ssmlens.probes.evaluation.components import has_hook
from ssmlens.probes.evaluation.suite import AnalysisConfig


@dataclass
class CellAnalysis:
    batch: TaskBatch  # the clean intervention batch
    results: dict[str, xr.DataArray] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def chance_level(task: str, task_config: dict) -> float:
    """Accuracy of a model that knows the answer is one of the context's values but not
    which (1 / pairs for AR); NaN for tasks without that notion."""
    if task in ("ar", "mqar"):
        n = task_config.get("n_pairs", make_task(task).config.n_pairs)
        return 1.0 / float(n)
    return float("nan")


def _accuracy(model, batch: TaskBatch, batch_size: int, ablation: str = "none") -> dict[str, float]:
    return answer_accuracy(model, batch, batch_size, ablation)


# The short convolution of each family and the ablation that removes it (the first that
# applies): ``no_conv`` reduces a depthwise short conv to its current tap (Mamba, Mamba-2
# with its x/B/C conv, MoE-Mamba, B'MOJO's SSM, Based's BaseConv, Hyena's short filter on
# its gates and value); H3 has no such conv, its short-range mixing is the shift SSM on k
# (a FIR of d_state taps), which ``no_shift`` removes (k̃ := k).
SHORT_CONV_ABLATIONS = (("no_conv", "mixer.hook_conv"), ("no_shift", "mixer.hook_shift_out"))


def short_conv_ablation(model) -> tuple[str, str] | None:
    """(ablation name, hook kind) of ``model``'s short convolution, or None without one."""
    for name, kind in SHORT_CONV_ABLATIONS:
        try:
            parse_ablation(name).bind(model).fwd_hooks()
        except NotApplicable:
            continue
        return name, kind
    return None


def conv_ablation(model, batch: TaskBatch, batch_size: int, baseline: float | None = None) -> xr.DataArray | None:
    """Accuracy without the short conv (``SHORT_CONV_ABLATIONS``: ``no_conv``, the kernel
    reduced to the current tap, or H3's ``no_shift``), in every layer and in each alone;
    None for a model without one. ``baseline``: the unablated accuracy on this batch
    when already known."""
    found = short_conv_ablation(model)
    if found is None:
        return None
    name, kind = found
    layers = sorted({int(n.split(".")[1]) for n in model.hook_dict if n.endswith(kind)})
    specs = ["none", name] + [f"{name}@{l}" for l in layers]
    accs = [baseline if s == "none" and baseline is not None else _accuracy(model, batch, batch_size, s)["acc"]
            for s in specs]
    return xr.DataArray(np.array(accs), dims=["ablation"], coords={"ablation": specs},
                        attrs={"metric": "acc", "ablation": name, "hook": kind})


def mixing_results(model, tokens: torch.Tensor) -> dict[str, xr.DataArray]:
    from ssmlens.probes.mixing import token_mixing

    out = {}
    tokens = tokens[:1].to(next(model.parameters()).device)
    for layer in range(len(model.blocks)):
        res = token_mixing(model, tokens, layer)
        m = res.matrix[0].float().cpu().numpy()
        coords = {"k": res.labels(), **({res.group: res.group_labels} if res.group_labels else {})}
        out[f"mixing/L{layer}"] = xr.DataArray(
            m, dims=[res.group, "q", "k"], coords=coords,
            attrs={"kind": res.kind, "group": res.group, "hook": res.hook,
                   "reduce": "abs_mean" if res.signed else "mean",
                   "reproduce_rel_err": float((res.reproduce() - res.output.double()).norm()
                                              / res.output.double().norm().clamp_min(1e-300))})
    return out


def _nanmax(values) -> float:
    finite = [float(v) for v in values if np.isfinite(v)]
    return max(finite) if finite else float("nan")


def diagnostics_results(model, tokens: torch.Tensor) -> tuple[dict[str, xr.DataArray], dict]:
    from ssmlens.probes.diagnostics import QUANTILES, model_diagnostics

    diags = model_diagnostics(model, tokens.to(next(model.parameters()).device))
    if not diags:
        return {}, {}
    layers = [d.layer for d in diags]
    stats = list(diags[0].scalars())
    out = {
        "diagnostics/decay_quantiles": xr.DataArray(np.stack([d.decay_quantiles for d in diags]),
                                                    dims=["layer", "quantile"],
                                                    coords={"layer": layers, "quantile": list(QUANTILES)}),
        "diagnostics/radius": xr.DataArray(np.stack([d.radius for d in diags]), dims=["layer", "pos"],
                                           coords={"layer": layers}),
        "diagnostics/horizon": xr.DataArray(np.stack([d.horizon for d in diags]), dims=["layer", diags[0].group],
                                            coords={"layer": layers}, attrs={"kind": diags[0].kind}),
        "diagnostics/scalars": xr.DataArray(np.array([[d.scalars()[s] for s in stats] for d in diags]),
                                            dims=["layer", "stat"], coords={"layer": layers, "stat": stats}),
    }
    summary = {
        "diag_median_horizon": float(np.median(np.concatenate([d.horizon for d in diags]))),
        "diag_max_horizon": float(max(d.horizon.max() for d in diags)),
        "diag_abscissa": _nanmax([d.abscissa for d in diags]),
        "diag_input_share": float(np.mean([d.input_share for d in diags])),
        "diag_median_decay_rate": float(np.median([d.decay_quantiles[len(QUANTILES) // 2] for d in diags])),
        "diag_kind": diags[0].kind,
    }
    return out, summary


def analyse(model, task: str, task_config: dict, cfg: AnalysisConfig, progress: bool = True,
            desc: str = "analyses") -> CellAnalysis:
    """Run every analysis of the module docstring on ``model`` (in eval mode)."""
    model.eval()
    spec = make_task(task, **task_config)
    clean = spec.sample(cfg.n_examples, cfg.seed)
    held_out = spec.sample(cfg.eval_size, cfg.seed + 100)
    out = CellAnalysis(batch=clean)
    m = out.metrics
    timings: dict[str, float] = {}
    steps = ["accuracy", "interchange", "association", "conv", "memory", "mixing", "diagnostics"]
    bar = tqdm(steps, desc=desc, disable=not progress, leave=False)
    for step in bar:
        bar.set_postfix_str(step, refresh=True)
        t0 = time.perf_counter()
        if step == "accuracy":
            acc = _accuracy(model, held_out, cfg.batch_size)
            m.update(acc=acc["acc"], loss=acc["loss"], chance=chance_level(task, task_config))
            out.results["accuracy"] = xr.DataArray(np.array([acc["acc"], acc["loss"]]), dims=["metric"],
                                                   coords={"metric": ["acc", "loss"]},
                                                   attrs={"n_examples": cfg.eval_size})
        elif step == "interchange":
            found = interventions.interchange_by_role(model, clean, cfg.roles, cfg.components, cfg.seed + 1)
            out.results.update({f"interchange/{k}": v for k, v in found.items()})
            m.update(interventions.value_carried(found))
            m["components"] = sorted(found)
        elif step == "association":
            assoc = interventions.association_test(model, clean, cfg.roles, cfg.components, cfg.seed + 2)
            out.results.update({f"association/{k}": v for k, v in assoc.items()})
            m.update(interventions.association_locus(assoc.get("resid"), cfg.threshold))
            m.update(interventions.conv_binding(assoc))
        elif step == "conv":
            conv = conv_ablation(model, held_out, cfg.batch_size, baseline=m["acc"])
            if conv is not None:
                out.results["ablation/acc"] = conv
                m["acc_no_conv"] = float(conv.sel(ablation=conv.attrs["ablation"]))
                m["conv_ablation"] = conv.attrs["ablation"]
        elif step == "memory" and memory.has_memory(model):
            _memory(model, clean, held_out, cfg, out)
        elif step == "mixing":
            out.results.update(mixing_results(model, clean.tokens))
        elif step == "diagnostics":
            found, summary = diagnostics_results(model, clean.tokens)
            out.results.update(found)
            m.update(summary)
        timings[f"{step}_s"] = round(time.perf_counter() - t0, 3)
    bar.close()
    m.update(timings)
    return out


def _memory(model, clean: TaskBatch, held_out: TaskBatch, cfg: AnalysisConfig, out: CellAnalysis) -> None:
    m = out.metrics
    curve = memory.recall_vs_memory_size(model, held_out, cfg.memory_sizes, cfg.batch_size)
    out.results["memory/recall_vs_size"] = curve
    m["acc_memory_0"] = float(curve.sel(memory_size=0))
    m["memory_share"] = memory.memory_share(m["acc"], m["acc_memory_0"], m["chance"])
    if has_hook(model, "memory.hook_fading"):
        m["acc_no_fading"] = _accuracy(model, held_out, cfg.batch_size, "no_fading")["acc"]
    out.results["memory/writes"] = memory.writes_by_role(model, clean)
    ablated = memory.write_ablation(model, held_out, ["queried_key", "queried_value"], cfg.batch_size)
    if ablated is not None:
        out.results["memory/write_ablation"] = ablated
    attention = memory.attention_split(model, clean)
    out.results["memory/attention"] = attention
    last = int(attention["layer"].values.max())
    m["memory_attention"] = float(attention.sel(layer=last, part="memory"))
    m["fading_attention"] = float(attention.sel(layer=last, part="fading"))
    if clean.role("key").shape[1] >= 2:
        patched, change = memory.write_patching(model, clean, cfg.roles, cfg.seed + 3)
        out.results["memory/write_patching"] = patched
        out.results["memory/write_change"] = change
