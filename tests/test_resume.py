"""Resumed forwards (models.resume): a window of positions from a block on, from a
cached run, equals the full forward there — for every model type, with hooks firing
on the window, and with an SSM state edit in closed form equal to the hook edit."""

import pytest
import torch

from ssmlens.models import BMojo, Mamba, Mamba2, MoEMamba, Transformer
from ssmlens.models.lm import LanguageModel
from ssmlens.models.resume import StateEdit, resumable, resume_blocks, resume_hook_names

V, L = 24, 13


def _mixed_writes(model):
    """A trained-looking innovation predictor: some tokens written, some not."""
    with torch.no_grad():
        for block in model.blocks:
            block.memory.W_p.normal_(0, 0.4)
    return model


def _sharp_router(model):
    """Router logits large enough that one expert overflows its capacity."""
    with torch.no_grad():
        for block in model.blocks:
            block.moe.router.weight.normal_(0, 2.0)
    return model


MODELS = {
    "mamba": lambda: Mamba(vocab_size=V, d_model=16, n_layers=2, d_state=4),
    "mamba2": lambda: Mamba2(vocab_size=V, d_model=16, n_layers=2, d_state=4, d_head=8, n_groups=2),
    "transformer": lambda: Transformer(vocab_size=V, d_model=16, n_layers=2, n_heads=2, n_ctx=32),
    "transformer_rotary": lambda: Transformer(vocab_size=V, d_model=16, n_layers=2, n_heads=2, positional="rotary"),
    "bmojo": lambda: _mixed_writes(BMojo(vocab_size=V, d_model=16, n_layers=2, n_heads=2, window=3, memory_size=2,
                                         threshold=1.0, d_state=4)),
    "bmojo_no_ssm": lambda: _mixed_writes(BMojo(vocab_size=V, d_model=16, n_layers=2, n_heads=2, window=3,
                                                memory_size=2, threshold=1.0, use_ssm=False)),
    "moe_mamba": lambda: _sharp_router(MoEMamba(vocab_size=V, d_model=16, n_layers=2, n_experts=4,
                                                capacity_factor=1.0, d_state=4)),
}


def build(kind):
    torch.manual_seed(0)
    return MODELS[kind]().eval()


def tokens(n=3, seed=1):
    return torch.randint(0, V, (n, L), generator=torch.Generator().manual_seed(seed))


# Rows: example, first position, entry block (sorted by entry).
EX = torch.tensor([0, 1, 2, 2, 0, 1])
START = torch.tensor([0, 3, 8, 2, 6, 5])
ENTRY = torch.tensor([0, 0, 0, 1, 1, 1])
LS = 5


def _at_windows(full, ex=EX, start=START, length=LS):
    return full[ex[:, None], start[:, None] + torch.arange(length)]

def _bumped_full_forwards(model, toks, ex, start, width, bump, name, last, read):
    """Reference for a bumped window: for each row r, a full forward of example ex[r]
    with ``bump`` added to hook ``name`` at start[r] … start[r] + width − 1, read at
    hook ``last``, positions read[r]."""
    refs = []
    for r in range(len(ex)):
        def edit_full(act, hook, p=int(start[r])):
            act = act.clone()
            act[:, p : p + width] += bump
            return act
        with model.hooks(fwd_hooks=[(name, edit_full)]):
            _, c = model.run_with_cache(toks[ex[r] : ex[r] + 1], names_filter=last)
        refs.append(c[last][0, read[r]])
    return torch.stack(refs)



@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("explicit", [False, True])
def test_resumed_blocks_equal_the_full_forward(kind, explicit):
    model = build(kind)
    assert resumable(model)
    toks = tokens()
    last = f"blocks.{len(model.blocks) - 1}.hook_resid_post"
    listen = [n for n in model.hook_dict if n.endswith("attn.hook_pattern")] if explicit else []
    shapes = []

    def keep(act, hook):  # a listener: attention takes its explicit path
        shapes.append(tuple(act.shape))
        return act

    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=resume_hook_names(model, edits=True) + [last])
        with model.hooks(fwd_hooks=[(n, keep) for n in listen]):
            out = resume_blocks(model, cache.cache_dict, EX, START, LS, ENTRY)
    if explicit and listen:  # pattern [rows, head, window, every key (+ B'MOJO's fading column)]
        extra = 1 if kind.startswith("bmojo") else 0
        assert shapes == [(3, 2, LS, L + extra), (6, 2, LS, L + extra)]
    if kind.startswith("bmojo"):
        w = cache["blocks.1.memory.hook_write"]
        assert 0 < float(w.mean()) < 1, "the test needs some tokens written and some not"
    if kind == "moe_mamba":
        _, c = model.run_with_cache(toks, names_filter="blocks.0.moe.hook_drop")
        assert float(c["blocks.0.moe.hook_drop"].sum()) > 0, "the test needs tokens over capacity"
    assert torch.allclose(out, _at_windows(cache[last]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mamba", "mamba2", "transformer_rotary", "bmojo", "moe_mamba"])
def test_hooks_fire_on_the_window_and_edits_propagate(kind):
    """A hook on a resumed forward sees [rows, window, ...]; an edit there at window
    slot k equals the same edit at position start + k of a full forward."""
    model = build(kind)
    toks = tokens()
    name, last = "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"
    ex, start, entry = torch.tensor([0, 2]), torch.tensor([4, 7]), torch.tensor([1, 1])
    bump = torch.randn(16)
    seen = []

    def edit_window(act, hook):
        seen.append(tuple(act.shape))
        act = act.clone()
        act[:, 1] += bump  # absolute positions 5 and 8
        return act

    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=resume_hook_names(model))
        with model.hooks(fwd_hooks=[(name, edit_window)]):
            out = resume_blocks(model, cache.cache_dict, ex, start, 4, entry)
        refs = []
        for e, p in ((0, 5), (2, 8)):
            def edit_full(act, hook, p=p):
                act = act.clone()
                act[:, p] += bump
                return act
            with model.hooks(fwd_hooks=[(name, edit_full)]):
                _, c = model.run_with_cache(toks[e : e + 1], names_filter=last)
            refs.append(c[last][0, p - 1 : p + 3])
    assert seen == [(2, 4, 16)]
    assert torch.allclose(out, torch.stack(refs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("layer", [0, 1])
def test_state_edit_equals_the_hook_edit(kind, layer):
    """StateEdit (closed form, no scan) == replacing hook_ssm_state at p in a full forward.
    A window may start before p (nothing changes there) and, in the last block (only
    later positions read), after it."""
    model = build(kind)
    assert model.blocks[-1].local_after_mixer
    toks = tokens()
    site = f"blocks.{layer}.mixer.hook_ssm_state"
    p = torch.tensor([2, 6, 0])
    ex = torch.tensor([0, 1, 2])
    start = p - torch.tensor([0, 2, 0]) if layer == 0 else p + torch.tensor([3, -2, 3])
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=resume_hook_names(model, edits=True))
        value = torch.randn_like(cache[site][:3, 0])  # Mamba [R, d_inner, d_state]; Mamba-2 [R, head, d_head, d_state]
        out = resume_blocks(model, cache.cache_dict, ex, start, 4, torch.full((3,), layer),
                            edit=StateEdit(f"blocks.{layer}.mixer.", p, value))
        refs = []
        for r in range(3):
            def put(h, hook, r=r):
                h = h.clone()
                h[:, int(p[r])] = value[r]
                return h
            with model.hooks(fwd_hooks=[(site, put)]):
                _, c = model.run_with_cache(toks[ex[r] : ex[r] + 1], names_filter="blocks.1.hook_resid_post")
            refs.append(c["blocks.1.hook_resid_post"][0, int(start[r]) : int(start[r]) + 4])
    assert torch.allclose(out, torch.stack(refs), atol=1e-5, rtol=1e-4)


def test_state_edit_refuses_a_hook_on_the_state():
    model = build("mamba")
    toks = tokens()
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=resume_hook_names(model, edits=True))
        with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_ssm_state", lambda h, hook: h)]), \
                pytest.raises(ValueError, match="StateEdit"):
            resume_blocks(model, cache.cache_dict, torch.tensor([0]), torch.tensor([2]), 3, torch.tensor([0]),
                          edit=StateEdit("blocks.0.mixer.", torch.tensor([2]), torch.zeros(1, 32, 4)))
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_windows_and_entries_are_checked():
    model = build("mamba")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(), names_filter=resume_hook_names(model))
        with pytest.raises(ValueError, match="leave"):
            resume_blocks(model, cache.cache_dict, torch.tensor([0]), torch.tensor([10]), 4, torch.tensor([0]))
        with pytest.raises(ValueError, match="sorted"):
            resume_blocks(model, cache.cache_dict, torch.tensor([0, 1]), torch.tensor([0, 0]), 2,
                          torch.tensor([1, 0]))


def test_models_without_resume_support_say_so():
    class Custom(Mamba):
        def forward(self, tokens, **kw):  # a forward of its own: resuming would skip it
            return super().forward(tokens, **kw) * 2

    assert not resumable(Custom(vocab_size=V, d_model=16, n_layers=1, d_state=4))
    assert not resumable(torch.nn.Linear(2, 2))
    assert isinstance(build("mamba"), LanguageModel) and resumable(build("mamba"))


@pytest.mark.parametrize("kind", list(MODELS))
def test_reading_positions_equals_the_full_forward(kind):
    """``read``: the residual after the last block at given positions only (a Mamba last
    block computes just what they need; other blocks run the window and gather)."""
    model = build(kind)
    toks = tokens()
    last = f"blocks.{len(model.blocks) - 1}.hook_resid_post"
    read = torch.stack([START + LS - 1, START + 1], dim=1)  # R 2, inside each window
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=resume_hook_names(model, edits=True) + [last])
        out = resume_blocks(model, cache.cache_dict, EX, START, LS, ENTRY, read=read)
    assert out.shape == (len(EX), 2, 16)
    assert torch.allclose(out, cache[last][EX[:, None], read], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("width", [1, 2])
def test_last_mamba_block_reads_past_a_short_window(width):
    """A patch of the last block's input at ``width`` positions needs a window of
    width + d_conv − 1 positions: later reads follow in closed form, and equal a full
    forward with the same patch."""
    model = build("mamba")
    toks = tokens()
    name, last = "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"
    reach = model.blocks[1].read_reach
    ex, start = torch.tensor([0, 2, 1]), torch.tensor([2, 5, 0])
    read = torch.stack([torch.full((3,), L - 1), start + 1, start + width + reach + 2], dim=1)
    bump = torch.randn(width, 16)

    def edit_window(act, hook):
        act = act.clone()
        act[:, :width] += bump
        return act

    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=resume_hook_names(model, edits=True))
        with model.hooks(fwd_hooks=[(name, edit_window)]):
            out = resume_blocks(model, cache.cache_dict, ex, start, width + reach, torch.ones(3, dtype=torch.long),
                                read=read)
        refs = _bumped_full_forwards(model, toks, ex, start, width, bump, name, last, read)
    assert torch.allclose(out, refs, atol=1e-5, rtol=1e-5)


def test_reads_past_the_window_need_a_quiet_last_block():
    """With a hook on the last mixer, the last block runs its whole window: a read past
    it is refused rather than answered wrongly."""
    model = build("mamba")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(), names_filter=resume_hook_names(model, edits=True))
        args = (model, cache.cache_dict, torch.tensor([0]), torch.tensor([2]), 4, torch.tensor([1]))
        with model.hooks(fwd_hooks=[("blocks.1.mixer.hook_x", lambda x, hook: x)]):
            inside = resume_blocks(*args, read=torch.tensor([[5]]))
            with pytest.raises(ValueError, match="past the window"):
                resume_blocks(*args, read=torch.tensor([[9]]))
        assert torch.allclose(inside, resume_blocks(*args, read=torch.tensor([[5]])), atol=1e-6)


def test_window_scans_equal_the_reference_scan():
    """ssmlens.models.resume_scan == kernels' float64 reference: every state and y of a window
    from an initial state, and the final state and y at a few reads."""
    from ssmlens.kernels import selective_scan
    from ssmlens.models.resume_scan import scan_read_out, scan_window

    g = torch.Generator().manual_seed(3)
    R, T, d, n = 3, 7, 8, 4
    u, C, B = (torch.randn(R, T, k, generator=g) for k in (d, n, n))
    delta = torch.rand(R, T, d, generator=g) * 0.5
    A = -torch.rand(d, n, generator=g) * 4
    D, h0 = torch.randn(d, generator=g), torch.randn(R, d, n, generator=g)
    ref = selective_scan(u, delta, A, B, C, D, delta_softplus=False, initial_state=h0, state_positions="all",
                         return_final_state=True, backend="reference")
    A_log2 = A * torch.log2(torch.tensor(torch.e))
    y, states = scan_window(u, delta, A_log2, B, C, D, h0)
    assert torch.allclose(y, ref.out, atol=1e-5) and torch.allclose(states, ref.states, atol=1e-5)
    read = torch.tensor([[6, 2], [0, 0], [3, 6]])
    final, y_read = scan_read_out(u, delta, A_log2, B, C, D, h0, read)
    assert torch.allclose(final, ref.final_state, atol=1e-5)
    assert torch.allclose(y_read, ref.out[torch.arange(R)[:, None], read], atol=1e-5)


def test_span_sums_are_sums():
    from ssmlens.models.resume import Resume

    values = torch.rand(2, 9, 3)
    res = Resume(torch.tensor([1, 0, 1]), torch.tensor([0, 2, 4]), 3, 9, {"x": values})
    after, upto = torch.tensor([-1, 3, 5]), torch.tensor([[4, 0], [3, 8], [8, 6]])
    got = res.span_sum("x", after, upto)
    for r in range(3):
        for q in range(2):
            want = values[res.ex[r], int(after[r]) + 1 : int(upto[r, q]) + 1].sum(0)
            assert torch.allclose(got[r, q], want, atol=1e-6)


@pytest.mark.parametrize("kind", ["transformer", "transformer_rotary"])
@pytest.mark.parametrize("width", [1, 2])
def test_last_transformer_block_reads_past_a_short_window(kind, width):
    """A patch of a last Transformer block's input needs a window of the patched
    positions only: new keys and values there, the queries read anywhere later; equal
    to a full forward with the same patch."""
    model = build(kind)
    toks = tokens()
    name, last = "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"
    assert model.blocks[1].read_reach == 0
    ex, start = torch.tensor([0, 2, 1]), torch.tensor([2, 5, 0])
    read = torch.stack([torch.full((3,), L - 1), start + width - 1, start + width + 2, start], dim=1)
    bump = torch.randn(width, 16)

    def edit_window(act, hook):
        act = act.clone()
        act[:, :width] += bump
        return act

    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=resume_hook_names(model))
        with model.hooks(fwd_hooks=[(name, edit_window)]):
            out = resume_blocks(model, cache.cache_dict, ex, start, width, torch.ones(3, dtype=torch.long), read=read)
        refs = _bumped_full_forwards(model, toks, ex, start, width, bump, name, last, read)
    assert (out - refs).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["transformer", "transformer_rotary"])
def test_last_transformer_block_computes_only_the_reads(kind, monkeypatch):
    """Entering below the last block, the last block computes keys and values at the
    changed positions and everything else at the reads only (the MLP sees R × q rows)."""
    from ssmlens.models.mlp import MLP

    model = build(kind)
    seen = []
    mlp_forward = MLP.forward
    monkeypatch.setattr(MLP, "forward", lambda self, x: seen.append(x.shape) or mlp_forward(self, x))
    last = "blocks.1.hook_resid_post"
    read = torch.stack([START + LS - 1, START + 1], dim=1)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(), names_filter=resume_hook_names(model) + [last])
        seen.clear()
        out = resume_blocks(model, cache.cache_dict, EX, START, LS, ENTRY, read=read)
    assert seen[-1][:2] == (len(EX), 2)
    assert (out - cache[last][EX[:, None], read]).abs().max() <= 1e-5


def test_hooks_on_a_last_transformer_block_see_whole_windows():
    """A hook inside the last Transformer block makes it run its window as a forward
    (the hook sees every window position); a read past the window is then refused."""
    model = build("transformer")
    shapes = []
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(), names_filter=resume_hook_names(model) + ["blocks.1.hook_resid_post"])
        args = (model, cache.cache_dict, torch.tensor([0, 1]), torch.tensor([2, 3]), 4, torch.tensor([0, 1]))
        quiet = resume_blocks(*args, read=torch.tensor([[5], [4]]))
        with model.hooks(fwd_hooks=[("blocks.1.mlp.hook_out", lambda x, hook: shapes.append(x.shape) or x)]):
            hooked = resume_blocks(*args, read=torch.tensor([[5], [4]]))
            with pytest.raises(ValueError, match="past the window"):
                resume_blocks(*args, read=torch.tensor([[9], [4]]))
    assert shapes[0][:2] == (2, 4)
    assert (quiet - hooked).abs().max() <= 1e-6
    ref = cache["blocks.1.hook_resid_post"][torch.tensor([0, 1]), torch.tensor([5, 4])][:, None]
    assert (quiet - ref).abs().max() <= 1e-5
