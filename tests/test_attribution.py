"""Attribution patching: exact on a model linear after every site, sane on Mamba."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from ssmlens.interp.hooks import HookedModel, HookPoint
from ssmlens.interp.tasks import corrupt, make_task
from ssmlens.models import Mamba
from ssmlens.probes.attribution import attribution_patching
from ssmlens.probes.patching import patching_sweep

TASK = dict(n_keys=12, n_values=12, n_pairs=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_out = HookPoint()


class _LinearBlock(nn.Module):
    """resid + (causal running mean of resid) @ W: linear, and causal."""

    def __init__(self, d: int):
        super().__init__()
        self.W = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.mixer = _Mixer()
        self.hook_resid_pre = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x):
        x = self.hook_resid_pre(x)
        mean = x.cumsum(1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]
        return self.hook_resid_post(x + self.mixer.hook_out(mean @ self.W))


class LinearToy(HookedModel):
    """Embedding -> linear causal blocks -> unembedding: logits are linear in every
    hooked activation, so first-order attribution is exact for a linear metric."""

    def __init__(self, vocab: int, d: int = 8, n_layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([_LinearBlock(d) for _ in range(n_layers)])
        self.unembed = nn.Linear(d, vocab, bias=False)
        self.setup()

    def forward(self, tokens):
        x = self.hook_embed(self.embed(tokens))
        for block in self.blocks:
            x = block(x)
        return self.unembed(x)


@pytest.fixture(scope="module")
def batches():
    task = make_task("ar", **TASK)
    clean = task.sample(8, 0)
    return task, clean, corrupt(clean, "value", 1)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_is_exact_on_a_linear_model(batches, direction):
    task, clean, corr = batches
    torch.manual_seed(0)
    toy = LinearToy(task.vocab_size)
    hooks = "hook_embed,resid_pre,mixer.hook_out,resid_post"
    # Value corruption: the contrast token is the substituted value, fixed -> a linear metric.
    patched = patching_sweep(toy, clean, corr, hooks, "all", direction=direction, progress=False)
    attr = attribution_patching(toy, clean, corr, hooks, "all", direction=direction, metric="logit_diff")
    base = patched.attrs["corrupted_logit_diff" if direction == "denoise" else "clean_logit_diff"]
    real = (patched.sel(metric="logit_diff") - base).values
    est = attr.sel(metric="delta").values
    assert attr.dims == patched.dims and np.array_equal(np.isnan(real), np.isnan(est))
    ok = ~np.isnan(real)
    assert np.abs(real[ok]).max() > 1e-2  # there is something to attribute
    assert np.allclose(est[ok], real[ok], rtol=1e-4, atol=1e-5)
    # Sign and ordering agree wherever the effect is not ~0.
    big = ok & (np.abs(real) > 1e-4)
    assert (np.sign(est[big]) == np.sign(real[big])).all()
    r, e = real[big], est[big]
    ordered = (r[:, None] - r[None, :]) > 1e-4  # pairs patching clearly orders (ties: same tensor twice)
    assert ordered.sum() > 100 and ((e[:, None] - e[None, :])[ordered] > 0).all()
    assert np.allclose(attr.sel(metric="restored").values[ok],
                       patched.sel(metric="restored_logit_diff").values[ok], rtol=1e-4, atol=1e-5)


def test_attribution_by_role_sums_positions(batches):
    task, clean, corr = batches
    torch.manual_seed(1)
    toy = LinearToy(task.vocab_size)
    by_pos = attribution_patching(toy, clean, corr, "resid_pre", "all", per_example=True)
    by_role = attribution_patching(toy, clean, corr, "resid_pre", ["value", "*"], per_example=True)
    value_pos = clean.role("value")  # [B, n_pairs]
    d_pos = torch.from_numpy(by_pos.sel(metric="delta").values)  # hook, layer, pos, batch
    want = d_pos[..., :, :].gather(2, value_pos.T[None, None].expand(1, 2, -1, -1)).sum(2)
    got = torch.from_numpy(by_role.sel(metric="delta", role="value").values)
    assert torch.allclose(got, want, atol=1e-9)
    assert torch.allclose(torch.from_numpy(by_role.sel(metric="delta", role="*").values), d_pos.sum(2), atol=1e-9)


def test_attribution_on_mamba_states(batches):
    task, clean, corr = batches
    torch.manual_seed(0)
    model = Mamba(vocab_size=task.vocab_size, d_model=16, n_layers=2, d_state=4).eval()
    attr = attribution_patching(model, clean, corr, "resid_pre,ssm_state", "all", metric="p_answer",
                                per_example=True)
    delta = attr.sel(metric="delta")
    assert np.isfinite(delta.values).all()
    # Layer 0's input differs only at the corrupted value: zero attribution elsewhere.
    d0 = delta.sel(hook="hook_resid_pre", layer=0).values  # pos, batch
    qv = clean.role("queried_value")[:, 0].numpy()
    mask = np.zeros_like(d0, dtype=bool)
    mask[qv, np.arange(len(qv))] = True
    assert (d0[~mask] == 0).all() and (d0[mask] != 0).any()
    # States before the corrupted value are equal in both runs, so attribute nothing;
    # the gradient reaches the states (the edit propagates), so later ones do.
    s0 = delta.sel(hook="mixer.hook_ssm_state", layer=0).values
    before = np.arange(s0.shape[0])[:, None] < qv[None]
    assert (s0[before] == 0).all() and (s0[~before] != 0).any()
    assert all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="metric"):
        attribution_patching(model, clean, corr, "resid_pre", metric="kl")
