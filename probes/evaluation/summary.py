"""The suite's summary tables, from the cells' summary rows (``suite_run.cell_table``).

``mechanism_table``: one row per architecture × width, the best cell over the
learning-rate sweep and seeds (highest accuracy, as Arora et al. report the best
learning rate), with

- ``accuracy`` (held-out answer accuracy) and ``recalls`` (≥ ``recall_threshold``);
- ``association``: where the key–value association is formed (``interventions``),
  shown only for models whose accuracy is at least halfway from chance to 1 (the
  restored fractions of a model that does not recall measure noise), with the
  restored fraction at the value / key / query at the last block's input;
- ``value_iia_last``: IIA of the value position's residual stream at the last block's
  input (does the last block still read the answer from the value's position?);
- ``conv_dependence``: (acc − acc without short conv) / (acc − chance), clipped to
  [0, 1]; "—" without a short conv (``conv_ablation`` names the ablation: ``no_conv``, or
  ``no_shift`` for H3, whose short-range mixing is its shift SSM); ``conv_binds_value``: restored fraction when the
  clean short-conv output at the value position is patched into the key-corrupted run
  (the conv binds the key into the value's position: induction through the conv);
- ``memory_share``: B'MOJO's share of recall through its eidetic memory (``memory``);
- ``median_horizon``, ``delta_input_share``: diagnostics of SSM layers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ssmlens.probes.evaluation.suite import AnalysisConfig


def recall_fraction(acc: float, chance: float) -> float:
    """(acc − chance) / (1 − chance): 0 at chance, 1 at perfect recall."""
    if not np.isfinite(chance):
        return float(acc)
    return float((acc - chance) / (1 - chance)) if chance < 1 else float("nan")


def conv_dependence(acc: float, acc_no_conv: float, chance: float) -> float:
    if not (np.isfinite(acc_no_conv) and np.isfinite(chance)) or acc <= chance:
        return float("nan")
    return float(np.clip((acc - acc_no_conv) / (acc - chance), 0.0, 1.0))


def _get(row, key, default=float("nan")):
    v = row.get(key, default)
    return default if v is None or (isinstance(v, float) and np.isnan(v)) else v


def best_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The best finished cell (highest accuracy) per (label, width), in suite order."""
    done = cells[cells["status"] == "done"] if "status" in cells else cells
    if done.empty or "acc" not in done:
        return done.iloc[0:0]
    order = {k: i for i, k in enumerate(dict.fromkeys(zip(cells["label"], cells["width"])))}
    best = done.sort_values("acc", ascending=False, kind="stable").groupby(["label", "width"], sort=False).head(1)
    return best.assign(_o=[order[(l, w)] for l, w in zip(best["label"], best["width"])]).sort_values("_o") \
        .drop(columns="_o").reset_index(drop=True)


def mechanism_table(cells: pd.DataFrame, analysis: AnalysisConfig) -> pd.DataFrame:
    """The mechanism table (module docstring); one row per architecture × width."""
    rows = []
    counts = cells.groupby(["label", "width"]).size() if not cells.empty else {}
    for _, r in best_cells(cells).iterrows():
        r = r.to_dict()
        acc, chance = float(_get(r, "acc")), float(_get(r, "chance"))
        enough = recall_fraction(acc, chance) >= 0.5
        locus = str(_get(r, "locus", "n/a"))
        rows.append({
            "architecture": r["label"], "family": r["family"], "width": int(r["width"]), "lr": float(r["lr"]),
            "cells": int(counts[(r["label"], r["width"])]) if len(counts) else 1,
            "accuracy": acc, "chance": chance, "recalls": bool(acc >= analysis.recall_threshold),
            "association": locus if enough else "— (no recall)",
            "assoc_value": float(_get(r, "assoc_queried_value")), "assoc_key": float(_get(r, "assoc_queried_key")),
            "assoc_query": float(_get(r, "assoc_query")),
            "value_iia_last": float(_get(r, f"iia_value_L{int(_get(r, 'locus_layer', 0))}")),
            "acc_no_conv": float(_get(r, "acc_no_conv")), "conv_ablation": str(_get(r, "conv_ablation", "")),
            "conv_dependence": conv_dependence(acc, float(_get(r, "acc_no_conv")), chance),
            "conv_binds_value": float(_get(r, "assoc_conv_value")) if enough else float("nan"),
            "memory_share": float(_get(r, "memory_share")),
            "median_horizon": float(_get(r, "diag_median_horizon")),
            "delta_input_share": float(_get(r, "diag_input_share")),
        })
    return pd.DataFrame(rows, columns=[
        "architecture", "family", "width", "lr", "cells", "accuracy", "chance", "recalls", "association",
        "assoc_value", "assoc_key", "assoc_query", "value_iia_last", "acc_no_conv", "conv_ablation", "conv_dependence",
        "conv_binds_value", "memory_share", "median_horizon", "delta_input_share"])


def accuracy_array(cells: pd.DataFrame) -> xr.DataArray:
    """Best accuracy over the sweep ``(architecture, width)`` (NaN where no cell finished)."""
    labels = list(dict.fromkeys(cells["label"])) if not cells.empty else []
    widths = sorted(set(int(w) for w in cells["width"])) if not cells.empty else []
    out = np.full((len(labels), len(widths)), np.nan)
    best = best_cells(cells)
    for _, r in best.iterrows():
        out[labels.index(r["label"]), widths.index(int(r["width"]))] = float(r["acc"])
    return xr.DataArray(out, dims=["architecture", "width"], coords={"architecture": labels, "width": widths},
                        attrs={"metric": "acc", "over": "best learning rate and seed"})


def _fmt(v, pct=False) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    return f"{100 * v:.1f}%" if pct else (f"{v:.2f}" if isinstance(v, float) else str(v))


def mechanism_rows(mech: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the mechanism table as display strings (HTML and markdown)."""
    header = ["architecture", "width", "best lr", "accuracy", "association formed at (restored: value / key / "
              "query)", "value IIA, last block", "acc without short conv (dependence; binds at value)",
              "recall via eidetic memory",
              "median horizon (tokens)", "Δ input share"]
    rows = []
    for _, r in mech.iterrows():
        assoc = r["association"]
        if not assoc.startswith("—"):
            assoc += f" ({_fmt(r['assoc_value'])} / {_fmt(r['assoc_key'])} / {_fmt(r['assoc_query'])})"
        conv = "—" if not np.isfinite(r["acc_no_conv"]) else \
            f"{_fmt(r['acc_no_conv'], True)} ({_fmt(r['conv_dependence'])}; {_fmt(r['conv_binds_value'])})"
        if conv != "—" and r.get("conv_ablation") not in (None, "", "no_conv"):
            conv += f" [{r['conv_ablation']}]"  # H3: its shift SSM is the short conv
        rows.append([r["architecture"], str(r["width"]), f"{r['lr']:g}", _fmt(r["accuracy"], True), assoc,
                     _fmt(r["value_iia_last"]), conv, _fmt(r["memory_share"], True),
                     _fmt(r["median_horizon"]) if np.isfinite(r["median_horizon"]) else "—",
                     _fmt(r["delta_input_share"])])
    return header, rows
