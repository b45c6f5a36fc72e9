"""What the dashboard shows of Based, H3 and Hyena, read from a run store only.

- Based: its kv-state S_t (``mixer.hook_kv_state``) stands in for Mamba's hidden state
  on the States page (norm ‖S_t‖ over positions, PCA trajectory); its sliding-window
  pattern (``mixer.hook_window_pattern``) stands in for an attention pattern on the
  Attention page. H3's diagonal-SSM states have Mamba's name and layout and need nothing.
- Hyena: its implicit long filters (``mixer.hook_filter`` ``[order, d, lag]``, no batch
  axis) on the Gating page, in place of Δ: one heatmap per order over channel × lag,
  the mean |h| per lag (how far back each order reaches), and a histogram of each
  channel's reach (the lag by which 90% of its |h| mass is in).

The pages call ``state_suffix`` / ``pattern_suffix`` / ``filter_layers`` to find what a
run has, and ``hyena_gating`` for the figures.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ssmlens.dashboards import figures
from ssmlens.dashboards.reader import Reader, RunAccessError

SSM_STATE, KV_STATE = "mixer.hook_ssm_state", "mixer.hook_kv_state"
ATTN_PATTERN, WINDOW_PATTERN = "attn.hook_pattern", "mixer.hook_window_pattern"
FILTER = "mixer.hook_filter"


def state_suffix(reader: Reader, run: str) -> str:
    """The run's state hook: Mamba's / H3's ``hook_ssm_state``, else Based's ``hook_kv_state``."""
    return KV_STATE if not reader.has(run, SSM_STATE) and reader.has(run, KV_STATE) else SSM_STATE


def state_label(suffix: str) -> tuple[str, str]:
    """(what the state is called, its symbol) for titles."""
    return ("kv-state", "S_t") if suffix == KV_STATE else ("State", "h_t")


def pattern_suffix(reader: Reader, run: str) -> str:
    """The run's attention pattern: a Transformer's / B'MOJO's, else Based's sliding window."""
    return WINDOW_PATTERN if not reader.has(run, ATTN_PATTERN) and reader.has(run, WINDOW_PATTERN) else ATTN_PATTERN


def window_note(reader: Reader, run: str, suffix: str) -> str | None:
    """A note for Based's window pattern (its width, from the model config)."""
    if suffix != WINDOW_PATTERN:
        return None
    from ssmlens.dashboards import catalog

    w = catalog.model_config(reader, run).get("window")
    return f"Based sliding-window attention (window {w}: keys t−{w} < r ≤ t)" if isinstance(w, int) else \
        "Based sliding-window attention"


def filter_layers(reader: Reader, run: str) -> list[int]:
    return reader.layers_with(run, FILTER)


def read_filters(reader: Reader, run: str, layer: int) -> np.ndarray:
    """Hyena's filters ``[order, d, lag]`` of one layer. The array has no batch axis, so the
    reader's per-example slices (axis 0) are its orders."""
    name = f"blocks.{int(layer)}.{FILTER}"
    index = reader.hooks(run)
    if name not in index:
        raise RunAccessError(f"run {run!r} did not cache {name}")
    return np.stack([reader.hook(run, name, i) for i in range(index[name][0][0])])


def filter_reach(h: np.ndarray, mass: float = 0.9) -> np.ndarray:
    """Per order and channel, the smallest lag by which ``mass`` of Σ_l |h[l]| is reached:
    ``h [order, d, lag]`` -> ``[order, d]`` (lags, ≥ 0)."""
    a = np.abs(np.asarray(h, dtype=np.float64))
    c = np.cumsum(a, axis=-1)
    total = c[..., -1:]
    reached = c >= mass * np.where(total > 0, total, np.inf)
    return np.where(total[..., 0] > 0, reached.argmax(axis=-1), 0)


def filter_heatmaps(h: np.ndarray, layer: int) -> go.Figure:
    """One panel per order: h^n over channel × lag (diverging, one colour scale)."""
    lags, channels = np.arange(h.shape[-1]), np.arange(h.shape[1])
    panels = [(f"h{n + 1}", h[n], lags, channels) for n in range(h.shape[0])]
    return figures.heatmap_panels(panels, title=f"Hyena long filters, layer {layer} (channel × lag)",
                                  xlabel="lag", ylabel="channel", height=460,
                                  note="y_t = Σ_l h[l]·z_{t−l}; lag 0 excludes the skip β")


def filter_profile(h: np.ndarray, layer: int) -> go.Figure:
    """Mean |h^n[l]| over channels, per lag (log scale): how far back each order reaches."""
    series = {f"h{n + 1}": np.abs(h[n]).mean(axis=0) for n in range(h.shape[0])}
    return figures.lines(series, title=f"Filter magnitude by lag, layer {layer} (mean |h| over channels)",
                         xlabel="lag", ylabel="mean |h|", log_y=True)


def reach_histogram(h: np.ndarray, layer: int) -> go.Figure:
    reach = filter_reach(h)
    fig = go.Figure([go.Histogram(x=reach[n], name=f"h{n + 1}", opacity=0.7, nbinsx=min(40, h.shape[-1]))
                     for n in range(h.shape[0])])
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="lags holding 90% of Σ|h|")
    fig.update_yaxes(title_text="channels")
    return figures.style(fig, f"Filter reach per channel, layer {layer}",
                         note=f"median reach {float(np.median(reach)):.3g} lags of {h.shape[-1]}")


def hyena_gating(reader: Reader, run: str, layer) -> tuple[go.Figure, go.Figure, go.Figure]:
    """(filter heatmaps, magnitude by lag, reach histogram) of a Hyena run's layer (the
    filters do not depend on the example)."""
    layers = filter_layers(reader, run)
    layer = layer if layer in layers else layers[0]
    h = read_filters(reader, run, layer)
    return filter_heatmaps(h, layer), filter_profile(h, layer), reach_histogram(h, layer)
