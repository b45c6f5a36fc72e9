"""Interchange interventions: identity rotation = plain patching, empty subspace = no-op,
per-example source locations, and DAS recovering a planted direction."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from ssmlens.interp.hooks import HookedModel, HookPoint
from ssmlens.interp.tasks import corrupt, make_task
from ssmlens.models import Mamba
from ssmlens.probes.interchange import Rotation, interchange_sweep, swap_in_subspace, train_das
from ssmlens.probes.metrics import query_logits
from ssmlens.probes.patching import patching_sweep

TASK = dict(n_keys=12, n_values=12, n_pairs=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup():
    task = make_task("ar", **TASK)
    clean = task.sample(8, 0)
    torch.manual_seed(0)
    model = Mamba(vocab_size=task.vocab_size, d_model=16, n_layers=2, d_state=4).eval()
    with torch.no_grad():
        model.embed.weight.normal_(0, 0.3)
    # Value corruption plus a query for the next pair: even an untrained model's answer moves.
    corr = corrupt(clean, "value", 1)
    rows, q = torch.arange(len(clean)), clean.role("query")[:, 0]
    other = (clean.role("queried_key")[:, 0] + 1) % (2 * TASK["n_pairs"]) + 1  # the next pair's key
    corr.tokens[rows, q] = clean.tokens[rows, other]
    return task, clean, corr, model


def test_identity_rotation_equals_plain_patching(setup):
    _, clean, corr, model = setup
    units = ["queried_value", "query", "*", 5]
    patched = patching_sweep(model, clean, corr, "resid_pre,ssm_state", units, progress=False)
    whole = interchange_sweep(model, corr, clean, "resid_pre,ssm_state", units, progress=False)
    rotated = interchange_sweep(model, corr, clean, "resid_pre", units, subspace=(Rotation(16, "identity"), 16),
                                progress=False)
    assert whole.dims == patched.dims
    for ic in (whole, rotated.reindex_like(whole)):
        sel = ic.sel(hook=rotated["hook"].values) if ic is not whole else ic
        want = patched.sel(hook=sel["hook"].values)
        assert np.allclose(sel.sel(metric="p_label"), want.sel(metric="p_answer"), atol=1e-6)
        assert np.array_equal(sel.sel(metric="iia"), want.sel(metric="accuracy"))
    assert np.abs(whole.sel(metric="p_label").values - whole.attrs["base_p_label"]).max() > 1e-3


def test_empty_subspace_changes_nothing(setup):
    _, clean, corr, model = setup
    res = interchange_sweep(model, corr, clean, "resid_pre", ["queried_value", "*"], subspace=torch.zeros(16, 0),
                            progress=False)
    assert res.attrs["engine_rows"] == 0  # every row is a no-op
    assert np.array_equal(res.sel(metric="p_label").values, np.full((1, 2, 2), res.attrs["base_p_label"]))
    r = Rotation(16, seed=3)
    assert torch.allclose(r.matrix @ r.matrix.T, torch.eye(16), atol=1e-5)
    q = r.basis(4).detach()
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    mixed = swap_in_subspace(a, b, q)
    assert torch.allclose(mixed @ q, b @ q, atol=1e-5)  # inside: the source
    assert torch.allclose(mixed - mixed @ q @ q.T, a - a @ q @ q.T, atol=1e-5)  # outside: the base


def test_source_locations_per_example(setup):
    task, clean, _, model = setup
    source = task.sample(8, 7)  # other examples: queried values sit elsewhere
    assert not torch.equal(source.role("queried_value"), clean.role("queried_value"))
    res = interchange_sweep(model, clean, source, "blocks.1.hook_resid_pre", "queried_value", progress=False)
    # By hand: one forward with the source's value activation written into the base's slot.
    _, cache = model.run_with_cache(source.tokens, names_filter=["blocks.1.hook_resid_pre"])
    src = cache["blocks.1.hook_resid_pre"]
    rows = torch.arange(len(clean))
    bpos, spos = clean.role("queried_value")[:, 0], source.role("queried_value")[:, 0]

    def hook(act, hook):
        act = act.clone()
        act[rows, bpos] = src[rows, spos]
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(clean.tokens, fwd_hooks=[("blocks.1.hook_resid_pre", hook)])
    probs = query_logits(logits, clean.role("query")).softmax(-1)[:, 0]
    labels = source.answer_tokens()[:, 0]
    want = probs[rows, labels].mean()
    assert abs(float(res.sel(metric="p_label").values.ravel()[0]) - float(want)) < 1e-6


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()


class PlantedDirection(HookedModel):
    """Logits at t depend only on s_t = Σ_{r≤t} x_r·u (binned): the direction u of the
    residual stream carries everything a position contributes."""

    def __init__(self, vocab: int, d: int = 6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, d, generator=g))
        u = torch.randn(d, generator=g)
        self.register_buffer("u", u / u.norm())
        self.register_buffer("centers", torch.linspace(-6, 6, vocab))
        self.blocks = nn.ModuleList([_Block()])
        self.setup()

    def forward(self, tokens):
        x = self.blocks[0].hook_resid_pre(self.embed(tokens))
        s = (x @ self.u).cumsum(1)
        return -((s[..., None] - self.centers) ** 2) * 2.0


def test_das_recovers_a_planted_direction():
    task = make_task("ar", **TASK)
    base, source = task.sample(48, 0), task.sample(48, 1)
    toy = PlantedDirection(task.vocab_size).eval()
    u = toy.u[:, None]
    bpos, spos = base.role("queried_value")[:, 0], source.role("queried_value")[:, 0]
    rows = torch.arange(len(base))
    src = toy.embed(source.tokens).detach()

    def ideal(act, hook):  # the counterfactual: swap the u-component only
        act = act.clone()
        act[rows, bpos] = swap_in_subspace(act[rows, bpos], src[rows, spos], u)
        return act

    with torch.no_grad():
        labels = query_logits(toy.run_with_hooks(base.tokens, fwd_hooks=[("blocks.0.hook_resid_pre", ideal)]),
                              base.role("query")).argmax(-1)
    random_iia = interchange_sweep(toy, base, source, "resid_pre", "queried_value", labels=labels,
                                   subspace=Rotation(6, seed=5).basis(1).detach(), progress=False)
    result = train_das(toy, base, source, "resid_pre", "queried_value", k=1, labels=labels, steps=150, lr=0.05,
                       seed=5, progress=False)
    assert result.losses[-1] < result.losses[0]
    assert result.iia >= 0.9 > float(random_iia.sel(metric="iia").values.ravel()[0])
    assert abs(float(result.basis[:, 0] @ toy.u)) > 0.95
    assert all(p.requires_grad for p in toy.parameters())  # the model's weights are given back
