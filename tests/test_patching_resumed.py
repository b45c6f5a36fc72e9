"""The patching sweep on resumed forwards (probes.resumed, models.resume) equals one
full forward per patch for every model type and hook kind; anchors (100% / 0%),
roles, the fallbacks (hooks outside the blocks, models that cannot resume, non-causal
sweeps) and hook hygiene on errors."""

import numpy as np
import pytest
import torch

from ssmlens.interp.tasks import corrupt, make_task
from ssmlens.models import BMojo, Mamba, Mamba2, MoEMamba, Transformer
from ssmlens.probes.batched import run_interventions
from ssmlens.probes.metrics import answer_spec
from ssmlens.probes.patching import patching_sweep, patching_sweep_reference
from ssmlens.probes.positions import expand_hooks, resolve_positions

from patching_helpers import TASK, max_diff, no_hooks_left, requery, sharpen


@pytest.fixture(scope="module")
def batches():
    task = make_task("ar", **TASK)
    clean = task.sample(6, 0)
    return clean, requery(clean)


def _bmojo(vocab):
    model = BMojo(vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, window=3, memory_size=2, threshold=1.0,
                  d_state=4)
    with torch.no_grad():  # some tokens written, some not
        for block in model.blocks:
            block.memory.W_p.normal_(0, 0.4)
    return model


def _moe(vocab):
    model = MoEMamba(vocab_size=vocab, d_model=16, n_layers=2, n_experts=4, capacity_factor=1.0, d_state=4)
    with torch.no_grad():  # sharp routing: experts overflow their capacity
        for block in model.blocks:
            block.moe.router.weight.normal_(0, 2.0)
    return model


CASES = {
    "mamba": (lambda v: Mamba(vocab_size=v, d_model=16, n_layers=2, d_state=4), "resid_pre,ssm_state,mixer.hook_x"),
    "mamba2": (lambda v: Mamba2(vocab_size=v, d_model=16, n_layers=2, d_state=4, d_head=8, n_groups=2),
               "resid_pre,ssm_state,mixer.hook_x,mixer.hook_B"),
    "transformer": (lambda v: Transformer(vocab_size=v, d_model=16, n_layers=2, n_heads=2, n_ctx=32),
                    "resid_pre,attn.hook_out,attn.hook_pattern,attn.hook_k"),
    "transformer_rotary": (lambda v: Transformer(vocab_size=v, d_model=16, n_layers=2, n_heads=2,
                                                 positional="rotary"), "resid_pre,attn.hook_z,attn.hook_v"),
    "bmojo": (_bmojo, "resid_pre,ssm_state,memory.hook_write,attn.hook_pattern,attn.hook_k"),
    "moe_mamba": (_moe, "resid_pre,ssm_state,moe.hook_expert_out,moe.hook_expert"),
}


def build(kind, vocab):
    torch.manual_seed(0)
    return sharpen(CASES[kind][0](vocab))


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_resumed_sweep_equals_one_forward_per_patch(kind, direction, batches):
    clean, corr = batches
    model = build(kind, clean.vocab_size)
    hooks = CASES[kind][1]
    ref = patching_sweep_reference(model, clean, corr, hooks, "all", direction=direction)
    fast = patching_sweep(model, clean, corr, hooks, "all", direction=direction, chunk_rows=13, progress=False)
    assert fast.attrs["engine_rows_resumed"] == fast.attrs["engine_rows"] > 0  # every row resumed
    assert np.nanmax(np.abs(fast.sel(metric="restored").values)) > 0.05  # something to compare
    assert max_diff(fast, ref) < 1e-5
    assert no_hooks_left(model)


@pytest.mark.parametrize("kind", list(CASES))
def test_roles_and_multi_position_units(kind, batches):
    """Units by role, several positions at once ("key": an SSM state edited at many
    positions goes through the hook, not the closed form), and "*"."""
    clean, corr = batches
    model = build(kind, clean.vocab_size)
    units = ["queried_key", "queried_value", "query", "last", "key", "value[1]", "*", (3, 7)]
    hooks = CASES[kind][1]
    ref = patching_sweep_reference(model, clean, corr, hooks, units)
    fast = patching_sweep(model, clean, corr, hooks, units, chunk_rows=7, progress=False)
    assert fast.dims == ("metric", "hook", "layer", "role")
    assert max_diff(fast, ref) < 1e-5


@pytest.mark.parametrize("kind", list(CASES))
def test_self_patch_restores_everything_and_nothing_restores_nothing(kind, batches):
    clean, corr = batches
    model = build(kind, clean.vocab_size)
    res = patching_sweep(model, clean, corr, "resid_pre", "*", progress=False)
    assert res.attrs["engine_rows_resumed"] > 0
    assert np.allclose(res.sel(metric="restored").values, 1.0, atol=1e-5)
    assert np.allclose(res.sel(metric="kl").values, 0.0, atol=1e-6)
    noised = patching_sweep(model, clean, corr, "resid_pre", "*", direction="noise", progress=False)
    assert np.allclose(noised.sel(metric="restored").values, 0.0, atol=1e-5)
    none = patching_sweep(model, clean, corr, "resid_pre", [(), 0, 1], progress=False)
    assert np.array_equal(none.sel(metric="restored").values, np.zeros((1, 2, 3)))


def test_hooks_outside_the_blocks_fall_back(batches):
    """hook_embed (no block to resume at) runs the full forward; the rest resumes."""
    clean, corr = batches
    model = build("transformer", clean.vocab_size)
    hooks = "hook_embed,hook_pos_embed,resid_pre"
    ref = patching_sweep_reference(model, clean, corr, hooks, "all")
    fast = patching_sweep(model, clean, corr, hooks, "all", progress=False)
    assert 0 < fast.attrs["engine_rows_resumed"] < fast.attrs["engine_rows"]
    assert max_diff(fast, ref) < 1e-5


def test_models_that_cannot_resume_fall_back(batches):
    """A model with a forward of its own is run whole (blocks resumed only when it is a
    standard LanguageModel); a non-causal sweep never resumes at a position."""
    clean, corr = batches

    class Doubled(Mamba):
        def forward(self, tokens, **kw):
            return super().forward(tokens, **kw) * 2

    torch.manual_seed(0)
    model = sharpen(Doubled(vocab_size=clean.vocab_size, d_model=16, n_layers=2, d_state=4))
    ref = patching_sweep_reference(model, clean, corr, "resid_pre,ssm_state", "all")
    fast = patching_sweep(model, clean, corr, "resid_pre,ssm_state", "all", progress=False)
    assert fast.attrs["engine_rows_resumed"] == 0 and max_diff(fast, ref) < 1e-5
    plain = build("mamba", clean.vocab_size)
    res = patching_sweep(plain, clean, corr, "resid_pre", "all", causal=False, progress=False)
    assert res.attrs["engine_rows_resumed"] == 0
    assert max_diff(res, patching_sweep_reference(plain, clean, corr, "resid_pre", "all")) < 1e-5


def test_hooks_detached_after_an_error_in_a_resumed_forward(batches):
    clean, corr = batches
    model = build("bmojo", clean.vocab_size)
    spec = answer_spec(clean, corr)
    sites = expand_hooks(model, "attn.hook_z")
    units = resolve_positions("all", corr)
    inside = []

    def boom(site, base, source):
        inside.append(not no_hooks_left(model))
        if inside[-1]:  # called by a patch hook: inside a resumed forward
            raise RuntimeError("boom")
        return source

    with pytest.raises(RuntimeError, match="boom"):
        run_interventions(model, corr.tokens, clean.tokens, spec, sites, units, units,
                          lambda logits, ex: {"x": logits[:, 0, 0]}, combine=boom, progress=False)
    assert inside[-1] and not any(inside[:-1])
    assert no_hooks_left(model)


def test_source_read_after_the_last_query(batches):
    """Interchange-style units (base position 3 <- source position 12, after the query
    at 10): the resumed source run must reach position 12."""
    clean, corr = batches
    model = build("mamba", clean.vocab_size)
    spec = answer_spec(clean, corr)
    sites = expand_hooks(model, "resid_pre,ssm_state")
    base_units, source_units = resolve_positions([3, 5], corr), resolve_positions([12, 11], corr)
    reduce = lambda logits, ex: {"logit": logits[:, 0].gather(-1, spec.answer[ex, :1])[:, 0]}  # noqa: E731
    got = [run_interventions(model, corr.tokens, clean.tokens, spec, sites, base_units, source_units, reduce,
                             resume=resume, progress=False) for resume in (True, False)]
    assert got[0].stats["rows_resumed"] > 0 and got[1].stats["rows_resumed"] == 0
    assert torch.allclose(got[0].rows["logit"], got[1].rows["logit"], atol=1e-5)


def test_a_model_with_hooks_attached_runs_whole_sequences(batches):
    """A hook the user left on the model (an ablation applied to every run) would see
    resumed windows: the sweep falls back, and still equals the reference."""
    clean, corr = batches
    model = build("mamba", clean.vocab_size)

    def ablate(delta, hook):
        delta = delta.clone()
        delta[:, 3] = 0
        return delta

    model.add_hook("blocks.0.mixer.hook_delta", ablate)
    try:
        ref = patching_sweep_reference(model, clean, corr, "resid_pre,ssm_state", "all")
        model.add_hook("blocks.0.mixer.hook_delta", ablate)  # the reference's context reset it
        fast = patching_sweep(model, clean, corr, "resid_pre,ssm_state", "all", progress=False)
        assert fast.attrs["engine_rows_resumed"] == 0
        assert max_diff(fast, ref) < 1e-5
    finally:
        model.reset_hooks()


@pytest.mark.parametrize("kind", list(CASES))
def test_a_patch_making_the_block_input_the_source_copies_the_source_run(kind):
    """Value corruption changes one token: patching the first block's input there makes
    the rest of the forward the source run, whose metrics are copied (no forward)."""
    task = make_task("ar", **TASK)
    clean = task.sample(6, 0)
    corr = corrupt(clean, "value", 1)
    model = build(kind, clean.vocab_size)
    hooks = CASES[kind][1]
    ref = patching_sweep_reference(model, clean, corr, hooks, "all")
    fast = patching_sweep(model, clean, corr, hooks, "all", progress=False)
    assert fast.attrs["engine_rows_source"] >= 6  # layer 0, the corrupted position, each example
    assert max_diff(fast, ref) < 1e-5


def test_last_mamba_block_is_read_in_closed_form(batches, monkeypatch):
    """Patches of the last Mamba block's input run windows of d_conv positions (read
    past them in closed form), single and multi-position units alike."""
    from ssmlens.models.mamba_mixer import MambaMixer

    clean, corr = batches
    model = build("mamba", clean.vocab_size)
    calls = []
    decayed = MambaMixer._decayed_read
    monkeypatch.setattr(MambaMixer, "_decayed_read", lambda self, *a: calls.append(1) or decayed(self, *a))
    units = ["queried_key", "key", "*", (3, 7), 5, 9]
    ref = patching_sweep_reference(model, clean, corr, "resid_pre,mixer.hook_x", units)
    # small chunks: a chunk's window is its longest row's
    fast = patching_sweep(model, clean, corr, "resid_pre,mixer.hook_x", units, chunk_rows=2, progress=False)
    assert calls and max_diff(fast, ref) < 1e-5


@pytest.mark.parametrize("kind", ["mamba", "transformer", "bmojo"])
def test_small_memory_budgets_give_even_chunks(kind, batches):
    """Without chunk_rows the budget sets the chunks (evened out); many small chunks
    still equal the reference."""
    clean, corr = batches
    model = build(kind, clean.vocab_size)
    hooks = CASES[kind][1]
    ref = patching_sweep_reference(model, clean, corr, hooks, "all")
    fast = patching_sweep(model, clean, corr, hooks, "all", memory_mb=0.05, progress=False)
    assert fast.attrs["engine_forwards"] > 10
    assert max_diff(fast, ref) < 1e-5


def test_chunks_are_as_few_as_the_budget_allows_and_even():
    from ssmlens.probes.resumed import _greedy, _split

    lengths = torch.tensor([1] * 10 + [3] * 7 + [8] * 5 + [13])
    row_bytes = 100.0
    cap = 2**20 * 0.004 / row_bytes  # ~42 row-positions
    chunks = _split(lengths, row_bytes, 0.004, None)
    cost = [(hi - lo) * int(lengths[hi - 1]) for lo, hi in chunks]
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert len(chunks) == len(_greedy(lengths.tolist(), cap)) and max(cost) <= cap
    assert min(hi - lo for lo, hi in chunks) > 1  # no one-row tail
    assert _split(lengths, row_bytes, 0.004, 5) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]


def test_position_differences_are_exact():
    from ssmlens.probes.batched import _position_differs

    base = torch.tensor([[[0.0, 1.0], [float("nan"), 2.0], [-0.0, 3.0], [1.0, 1e-45]]])
    source = torch.tensor([[[0.0, 1.0], [float("nan"), 2.0], [0.0, 3.0], [1.0, 0.0]]])
    want = (base != source).any(-1)  # NaN differs from itself; -0 equals 0; a subnormal step counts
    assert torch.equal(_position_differs(base, source), want)
    inf = torch.full((1, 1, 2), float("inf"))
    assert bool(_position_differs(inf, inf).all())  # counted as a change: the row runs, still exact
    ints = torch.tensor([[[1, 2], [3, 4]]])
    moved = ints.clone()
    moved[0, 1, 0] += 1
    assert torch.equal(_position_differs(ints, moved), torch.tensor([[False, True]]))


@pytest.mark.parametrize("kind", ["transformer", "transformer_rotary"])
def test_last_transformer_block_reads_only_the_queries(kind, batches, monkeypatch):
    """A last Transformer block computes new keys and values and the query rows only
    (``TransformerBlock.forward_read``), patches of its position-local hooks run from
    the first query they cover, and hooks in it fall back to whole windows: the sweep
    still equals one forward per patch, single and multi-position units alike."""
    from ssmlens.models.attention import Attention

    clean, corr = batches
    model = build(kind, clean.vocab_size)
    calls = []
    read = Attention.forward_read
    monkeypatch.setattr(Attention, "forward_read", lambda self, *a: calls.append(1) or read(self, *a))
    hooks = "resid_pre,attn.hook_out,hook_resid_mid,mlp.hook_post,attn.hook_q,attn.hook_pattern"
    units = ["queried_key", "key", "*", (3, 7), 5, 9]
    ref = patching_sweep_reference(model, clean, corr, hooks, units)
    fast = patching_sweep(model, clean, corr, hooks, units, chunk_rows=3, progress=False)
    assert calls and max_diff(fast, ref) < 1e-5
    assert no_hooks_left(model)
