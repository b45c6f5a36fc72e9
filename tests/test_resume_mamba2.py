"""Resumed forwards of Mamba-2 (models.resume): windows from several blocks and starts
(0 and before d_conv included) equal the full forward, through either scan (SSD, or
selective_scan when states are listened to); hooks fire on the window only; a
StateEdit refuses hooks on the mixer's inputs (tests/test_resume.py holds it to the hook
edit); a patching sweep takes the resumed path and gives the
generic path's and the reference's numbers."""

import numpy as np
import pytest
import torch

from ssmlens.interp.tasks import make_task
from ssmlens.models import Mamba2
from ssmlens.models.resume import StateEdit, resumable, resume_blocks, resume_hook_names
from ssmlens.probes.patching import patching_sweep, patching_sweep_reference

from helpers import rel_err
from patching_helpers import TASK, max_diff, no_hooks_left, requery, sharpen

V, L = 24, 17


def build(n_layers=3, vocab=V, **kw):
    torch.manual_seed(0)
    cfg = dict(d_model=16, d_state=4, d_head=8, n_groups=2, ssd_chunk=4)  # 4 heads in 2 groups
    return Mamba2(vocab_size=vocab, n_layers=n_layers, **{**cfg, **kw}).eval()


def tokens(n=4, seed=1):
    return torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(seed))


def windows(seed, rows, length, n_layers, n_ex):
    """Random rows (example, start, entry sorted): starts 0 and 1 (< d_conv) among them."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, L - length + 1, (rows,), generator=g)
    start[:2] = torch.tensor([0, 1]).clamp(max=L - length)
    entry = torch.sort(torch.randint(0, n_layers, (rows,), generator=g)).values
    entry[0] = 0  # every block runs
    return torch.randint(0, n_ex, (rows,), generator=g), start, entry


def full_at(cache, name, ex, start, length):
    return cache[name][ex[:, None], start[:, None] + torch.arange(length)]


def test_mamba2_is_resumable():
    assert resumable(build())
    assert "blocks.1.mixer.hook_ssm_state" in resume_hook_names(build())


@pytest.mark.parametrize("length", [1, 3, 8, L])
@pytest.mark.parametrize("d_conv", [4, 2, 1])
@pytest.mark.parametrize("listen", [False, True])
def test_resumed_windows_equal_the_full_forward(length, d_conv, listen):
    """Fresh random inputs each case; ``listen``: a reader on every state makes the
    mixers scan with selective_scan (from the cached state) rather than SSD."""
    model = build(d_conv=d_conv, conv_bias=True, bias=True)  # in_proj's bias: the conv padding is of xBC
    toks = tokens(seed=length + 10 * d_conv)
    last = "blocks.2.hook_resid_post"
    ex, start, entry = windows(length + d_conv, 7, length, 3, toks.shape[0])
    states = [n for n in model.hook_dict if n.endswith("hook_ssm_state")] if listen else []
    shapes = []
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=resume_hook_names(model) + [last])
        with model.hooks(fwd_hooks=[(n, lambda h, hook: shapes.append(h.shape) or h) for n in states]):
            out = resume_blocks(model, cache.cache_dict, ex, start, length, entry)
    if listen:
        assert [s[:2] for s in shapes] == [(int((entry <= l).sum()), length) for l in range(3)]
    assert rel_err(out, full_at(cache, last, ex, start, length)) < 1e-5


def test_hooks_fire_on_the_window_and_edits_propagate():
    """The block's norm, the mixer's x, B and the states see ``[rows, window, ...]``
    (the past rebuilt for the conv fires nothing); an edit of x at window slot k equals
    the same edit at position start + k of a full forward."""
    model = build(n_layers=2)
    toks = tokens()
    ex, start, entry = torch.tensor([0, 2, 3]), torch.tensor([0, 2, 9]), torch.tensor([1, 1, 1])
    names = ["blocks.1.norm.hook_scale", "blocks.1.mixer.hook_B", "blocks.1.mixer.hook_ssm_state"]
    bump = torch.randn(32)
    seen = []

    def edit_window(x, hook):
        seen.append(x.shape)
        x = x.clone()
        x[:, 1] += bump
        return x

    last = "blocks.1.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=resume_hook_names(model))
        hooks = [(n, lambda a, hook: seen.append(a.shape) or a) for n in names]
        with model.hooks(fwd_hooks=hooks + [("blocks.1.mixer.hook_x", edit_window)]):
            out = resume_blocks(model, cache.cache_dict, ex, start, 5, entry)
        refs = []
        for e, s in zip(ex.tolist(), start.tolist()):
            def edit_full(x, hook, p=s + 1):
                x = x.clone()
                x[:, p] += bump
                return x
            with model.hooks(fwd_hooks=[("blocks.1.mixer.hook_x", edit_full)]):
                _, c = model.run_with_cache(toks[e : e + 1], names_filter=last)
            refs.append(c[last][0, s : s + 5])
    assert [tuple(s[:2]) for s in seen] == [(3, 5)] * 4
    assert rel_err(out, torch.stack(refs)) < 1e-5


def test_state_edit_refuses_a_hook_on_the_mixer_inputs():
    model = build(n_layers=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(), names_filter=resume_hook_names(model, edits=True))
        with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_delta", lambda d, hook: d)]), \
                pytest.raises(ValueError, match="StateEdit"):
            resume_blocks(model, cache.cache_dict, torch.tensor([0]), torch.tensor([2]), 3, torch.tensor([0]),
                          edit=StateEdit("blocks.0.mixer.", torch.tensor([2]), torch.zeros(1, 4, 8, 4)))
    assert no_hooks_left(model)


@pytest.fixture(scope="module")
def batches():
    task = make_task("ar", **TASK)
    clean = task.sample(6, 0)
    return clean, requery(clean)


@pytest.mark.parametrize("units", ["all", ["queried_key", "query", "key", (3, 7)]])
def test_patching_takes_the_resumed_path_with_the_generic_paths_numbers(units, batches):
    """Default sweep (resumed at block and position, state patches in closed form) ==
    ``resume=False`` (the generic path: stacked full forwards) == one forward per patch."""
    clean, corr = batches
    model = sharpen(build(n_layers=2, vocab=clean.vocab_size))
    hooks = "resid_pre,ssm_state,mixer.hook_x,mixer.hook_B"
    fast = patching_sweep(model, clean, corr, hooks, units, chunk_rows=11, progress=False)
    generic = patching_sweep(model, clean, corr, hooks, units, resume=False, progress=False)
    ref = patching_sweep_reference(model, clean, corr, hooks, units)
    assert fast.attrs["engine_rows_resumed"] == fast.attrs["engine_rows"] > 0
    assert generic.attrs["engine_rows_resumed"] == 0
    assert np.nanmax(np.abs(fast.sel(metric="restored").values)) > 0.05  # something to compare
    assert max_diff(fast, generic) < 1e-5 and max_diff(fast, ref) < 1e-5
    assert no_hooks_left(model)
