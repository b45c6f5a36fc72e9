"""MoE-Mamba: load-balancing loss, one-expert special case, capacity drops, ablation."""

from __future__ import annotations

import os

import pytest
import torch

from ssmlens.models import registry
from ssmlens.models.mamba import MambaBlock, MambaConfig
from ssmlens.models.mlp import MLP
from ssmlens.models.moe import (ablate_expert, budget, capacity, dispatch_mask, dispatch_mask_reference,
                                load_balancing_loss)
from ssmlens.models.moe_mamba import MoEMamba, MoEMambaConfig

SMALL = dict(vocab_size=50, d_model=16, n_layers=2, d_state=4, n_experts=4, scan_backend="torch")


def moe_mamba(seed=0, **kw) -> MoEMamba:
    torch.manual_seed(seed)
    m = MoEMamba(MoEMambaConfig(**{**SMALL, **kw}))
    for block in m.blocks:  # a router that actually spreads tokens over experts
        torch.nn.init.normal_(block.moe.router.weight, std=1.0)
    return m.eval()


def tokens(b=2, L=20, seed=1):
    return torch.randint(0, 50, (b, L), generator=torch.Generator().manual_seed(seed))


def close(a, b, rtol=1e-5):
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.detach().abs().max()))


def test_load_balancing_loss_hand_computed():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    expert = torch.tensor([0, 0, 1, 0])
    # f = (3/4, 1/4), P = (0.65, 0.35): 0.01 · 2 · (0.4875 + 0.0875)
    assert float(load_balancing_loss(probs, expert)) == pytest.approx(0.0115, rel=1e-6)
    assert float(load_balancing_loss(probs, expert, alpha=1.0)) == pytest.approx(1.15, rel=1e-6)
    # a token routed to no expert (−1) counts in no f_i
    assert float(load_balancing_loss(probs, torch.tensor([0, 0, 1, -1]))) == pytest.approx(
        0.02 * (0.5 * 0.65 + 0.25 * 0.35), rel=1e-6)


def test_model_exposes_the_load_balancing_loss():
    model = moe_mamba(n_experts=2, load_balance_coef=0.01)
    assert MoEMambaConfig().load_balance_coef == 0.01
    fixed = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.5, 0.0]]).repeat(1, 5, 1)  # 1 20 2
    hooks = [(f"blocks.{l}.moe.hook_router_logits", lambda x, hook: fixed.expand_as(x).clone()) for l in range(2)]
    with model.hooks(fwd_hooks=hooks):
        model(tokens(b=1))
    p = fixed[0, :4].softmax(-1)
    f = torch.tensor([0.75, 0.25])
    expected = 0.01 * 2 * (f * p.mean(0)).sum()
    aux = model.auxiliary_losses()
    assert set(aux) == {"load_balance"}
    assert float(aux["load_balance"]) == pytest.approx(float(expected), rel=1e-5)
    model(tokens(b=1))  # without the fixed logits, the loss trains the router
    model.zero_grad()
    model.auxiliary_losses()["load_balance"].backward()
    assert float(model.blocks[0].moe.router.weight.grad.abs().sum()) > 0  # the router learns from it


def test_one_expert_is_mamba_followed_by_that_feed_forward_layer():
    model = moe_mamba(n_experts=1, capacity_factor=1.0)
    cfg = model.cfg
    mcfg = MambaConfig(vocab_size=50, d_model=16, n_layers=2, d_state=4, scan_backend="torch")
    x = tokens()
    with torch.no_grad():
        resid = model.embed(x)
        for block in model.blocks:
            mb, mlp = MambaBlock(mcfg), MLP(cfg.d_model, cfg.d_ff)
            mb.norm.load_state_dict(block.norm.state_dict())
            mb.mixer.load_state_dict(block.mixer.state_dict())
            mlp.W_in.weight.copy_(block.moe.W_in[0].T)
            mlp.W_in.bias.copy_(block.moe.b_in[0])
            mlp.W_out.weight.copy_(block.moe.W_out[0].T)
            mlp.W_out.bias.copy_(block.moe.b_out[0])
            resid = mb(resid)
            resid = resid + mlp(block.moe_norm(resid))
        close(model(x), model.unembed_resid(resid))
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_drop"))
    assert all(float(v.abs().max()) == 0 for v in cache.values())  # nothing dropped at capacity L


def test_capacity_drops_later_tokens_to_the_residual():
    model = moe_mamba(n_experts=2, capacity_factor=0.5, n_layers=1)  # budget C_t = ceil(0.5·(t+1)/2)
    assert capacity(0.5, 8, 2) == 2 and budget(0.5, 8, 2).tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    route = torch.tensor([0, 0, 0, 1, 0, 1, 1, 1])
    logits = torch.nn.functional.one_hot(route, 2).float()[None].repeat(2, 1, 1) * 5

    with model.hooks(fwd_hooks=[("blocks.0.moe.hook_router_logits", lambda x, hook: logits.clone())]):
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens(L=8))
    # expert 0 takes t=0 (budget 1), refuses t=1, 2 (full), takes t=4 (budget 2);
    # expert 1 takes t=3 and t=5, refuses t=6, 7
    drop = torch.tensor([0, 1, 1, 0, 0, 0, 1, 1.0])
    assert torch.equal(cache["blocks.0.moe.hook_expert"][0], route)
    assert torch.equal(cache["blocks.0.moe.hook_drop"], drop.expand(2, 8))
    out = cache["blocks.0.moe.hook_expert_out"]
    assert float(out[:, drop.bool()].abs().max()) == 0 and bool((out[:, ~drop.bool()].abs().sum(-1) > 0).all())
    mid, post = cache["blocks.0.hook_resid_mid"], cache["blocks.0.hook_resid_post"]
    assert torch.equal(post[:, drop.bool()], mid[:, drop.bool()])  # passed through the residual
    moe = model.blocks[0].moe
    with torch.no_grad():  # kept tokens: out = p_i(x) · FFN_i(x), the Switch gate
        xin = model.blocks[0].moe_norm(mid)
        gate = logits.softmax(-1).gather(-1, route.expand(2, 8)[..., None])
        for t in (~drop.bool()).nonzero().flatten().tolist():
            close(out[:, t], gate[:, t] * moe.expert_ffn(int(route[t]), xin[:, t]))


def test_ablating_an_expert_removes_exactly_its_tokens():
    model = moe_mamba(n_experts=4, capacity_factor=4.0)
    x = tokens(L=24)
    with torch.no_grad():
        _, base = model.run_with_cache(x)
        expert = base["blocks.0.moe.hook_expert"]
        e = int(expert.flatten().mode().values)
        mine = expert == e
        assert 0 < int(mine.sum()) < mine.numel()
        with model.hooks(fwd_hooks=[("blocks.0.moe.hook_expert", ablate_expert(e))]):  # the one-line hook
            _, cache = model.run_with_cache(x)
    out, ref = cache["blocks.0.moe.hook_expert_out"], base["blocks.0.moe.hook_expert_out"]
    assert float(out[mine].abs().max()) == 0 and float(ref[mine].abs().min()) > 0
    assert torch.equal(out[~mine], ref[~mine])
    assert torch.equal(cache["blocks.0.moe.hook_drop"], torch.maximum(base["blocks.0.moe.hook_drop"], mine.float()))
    assert torch.equal(cache["blocks.0.hook_resid_post"][mine], cache["blocks.0.hook_resid_mid"][mine])


def test_perturbing_token_t_changes_nothing_before_t():
    model = moe_mamba(seed=2, capacity_factor=1.0)  # tight capacity: drops happen
    x = tokens(L=24, seed=5)
    watch = [n for n in model.hook_dict if n.endswith(("hook_expert", "hook_drop"))]
    with torch.no_grad():
        base, base_cache = model.run_with_cache(x, names_filter=watch)
        assert float(base_cache["blocks.0.moe.hook_drop"].sum()) > 0
        for t in (1, 9, 23):
            y = x.clone()
            y[:, t] = (y[:, t] + 7) % 50
            out, cache = model.run_with_cache(y, names_filter=watch)
            close(out[:, :t], base[:, :t], rtol=1e-6)
            for n in watch:
                assert torch.equal(cache[n][:, :t], base_cache[n][:, :t]), (n, t)
            assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
def test_runs_with_every_scan_backend(backend):
    if backend == "triton":
        pytest.importorskip("ssmlens.kernels.triton_scan")
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("triton on the CPU needs TRITON_INTERPRET=1")
    model = moe_mamba()
    x = tokens()
    with torch.no_grad():
        ref = model(x)
        for block in model.blocks:
            block.mixer.cfg.scan_backend = backend
        close(model(x), ref, rtol=1e-4)


def test_save_load_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "moe_mamba", "ssmlens.models.moe_mamba:MoEMamba")
    model = moe_mamba()
    model.save(tmp_path / "ckpt")
    loaded = MoEMamba.load(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("field, value", [("capacity_factor", 0.0), ("capacity_factor", -1.0),
                                          ("n_experts", 0), ("load_balance_coef", -0.1), ("d_ff", 0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MoEMambaConfig(**{**SMALL, field: value})


def test_bad_expert_edit_is_refused():
    model = moe_mamba()
    with pytest.raises(ValueError, match="hook_expert"):
        model.run_with_hooks(tokens(), fwd_hooks=[("blocks.0.moe.hook_expert", lambda e, hook: e + 10)])


# -- issue 12, item 4: capacity per prefix ------------------------------------------

@pytest.mark.parametrize("n_experts, capacity_factor", [(1, 1.0), (2, 0.5), (3, 1.25), (4, 1.0), (4, 2.5), (8, 0.3)])
def test_dispatch_mask_equals_the_first_come_loop(n_experts, capacity_factor):
    g = torch.Generator().manual_seed(n_experts)
    # skewed routing (one expert overflows) with some tokens routed to no expert (−1)
    expert = torch.multinomial(torch.tensor([1.0, 6.0] + [1.0] * (n_experts - 1)), 5 * 37, True, generator=g).view(5, 37) - 1
    expert[:, 3] = -1
    got = dispatch_mask(expert, n_experts, capacity_factor)
    want = dispatch_mask_reference(expert, n_experts, capacity_factor)
    assert torch.equal(got, want)
    assert bool(want.any()) and (capacity_factor >= n_experts or bool((~want & (expert >= 0)).any()))
    for t in range(37):  # no expert holds more than its budget of any prefix
        for i in range(n_experts):
            assert int((got[:, : t + 1] & (expert[:, : t + 1] == i)).sum(1).max()) <= capacity(
                capacity_factor, t + 1, n_experts)


def test_prefix_logits_do_not_depend_on_the_sequence_length():
    """The issue's case: with capacity ceil(cf·L/E) over the whole sequence, logits of
    tokens[:, :k] differed from the first k logits of the full run (up to 2.1 at k = 2)."""
    model = moe_mamba(seed=2, capacity_factor=1.0)
    x = tokens(L=24, seed=5)
    with torch.no_grad():
        full, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_drop"))
        assert float(cache["blocks.0.moe.hook_drop"].sum()) > 0, "the test needs tokens over capacity"
        for k in range(1, 24):
            close(model(x[:, :k]), full[:, :k], rtol=1e-5)
