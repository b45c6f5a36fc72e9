"""Mamba-2: the SSD scan equals the float64 reference, the model equals transformers'
Mamba2ForCausalLM (logits and hidden states), state edits propagate as a float64
recurrence says, and state-spaces' original format loads."""

import json

import pytest
import torch
import torch.nn.functional as F
from einops import repeat

from ssmlens.kernels import selective_scan
from ssmlens.kernels.ssd import ssd_scan
from ssmlens.models import CheckpointError, Mamba, Mamba2, load_model
from ssmlens.models.hf_random import hf_model, write_random_checkpoint

from helpers import rel_err

TINY = ("Mamba2ForCausalLM", dict(hidden_size=32, num_hidden_layers=2, vocab_size=61, state_size=8, head_dim=8,
                                  num_heads=8, n_groups=2, expand=2, conv_kernel=4, chunk_size=8))


def _hf_dir(tmp_path, tie=True, groups=2, seed=0):
    name = (TINY[0], {**TINY[1], "n_groups": groups, "tie_word_embeddings": tie})
    return write_random_checkpoint(name, tmp_path, seed=seed, perturb=0.05, tokenizer=False)


def _scan_inputs(b=2, L=37, H=6, P=4, g=3, n=5, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(b, L, H, P)
    delta = F.softplus(torch.randn(b, L, H))
    A = -torch.rand(H) * 2 - 0.1
    B, C = torch.randn(b, L, g, n), torch.randn(b, L, g, n)
    D, h0 = torch.randn(H), torch.randn(b, H, P, n)
    return x, delta, A, B, C, D, h0


@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_ssd_scan_equals_float64_reference(chunk):
    x, delta, A, B, C, D, h0 = _scan_inputs()
    P, n = x.shape[-1], B.shape[-1]
    y, final = ssd_scan(x, delta, A, B, C, D, initial_state=h0, chunk=chunk)
    ref = selective_scan(x.flatten(2), repeat(delta, "b l h -> b l (h p)", p=P), repeat(A, "h -> (h p) n", p=P, n=n),
                         B, C, repeat(D, "h -> (h p)", p=P), delta_softplus=False, initial_state=h0.flatten(1, 2),
                         return_final_state=True, backend="reference")
    assert rel_err(y.flatten(2), ref.out) < 1e-5
    assert rel_err(final.flatten(1, 2), ref.final_state) < 1e-5


def test_ssd_scan_gradients_match_reference():
    x, delta, A, B, C, D, _ = _scan_inputs(L=13, seed=1)
    P, n = x.shape[-1], B.shape[-1]
    inputs = [t.clone().requires_grad_() for t in (x, delta, B, C)]
    ssd_scan(inputs[0], inputs[1], A, inputs[2], inputs[3], D, chunk=4)[0].square().sum().backward()
    ref_in = [t.clone().double().requires_grad_() for t in (x, delta, B, C)]
    ref = selective_scan(ref_in[0].flatten(2), repeat(ref_in[1], "b l h -> b l (h p)", p=P),
                         repeat(A.double(), "h -> (h p) n", p=P, n=n), ref_in[2], ref_in[3],
                         repeat(D.double(), "h -> (h p)", p=P), delta_softplus=False, backend="reference")
    ref.out.square().sum().backward()
    for got, want in zip(inputs, ref_in):
        assert rel_err(got.grad, want.grad) < 1e-5


@pytest.mark.parametrize("tie, groups", [(True, 2), (False, 1)])
def test_matches_transformers(tmp_path, tie, groups):
    hf = _hf_dir(tmp_path, tie=tie, groups=groups)
    ours = load_model(tmp_path)
    assert isinstance(ours, Mamba2) and (ours.unembed is None) == tie
    tokens = torch.randint(0, 61, (3, 29))
    with torch.no_grad():
        ref = hf(tokens, output_hidden_states=True)
        got = ours(tokens)  # the SSD path
        got_states, cache = ours.run_with_cache(tokens)  # states on: the selective-scan path
    assert rel_err(got, ref.logits) < 1e-4
    assert rel_err(got_states, ref.logits) < 1e-4
    for layer in range(2):  # transformers' hidden_states[l] is block l's input
        assert rel_err(cache[f"blocks.{layer}.hook_resid_pre"], ref.hidden_states[layer]) < 1e-4
    assert rel_err(ours.ln_final(cache["blocks.1.hook_resid_post"]), ref.hidden_states[2]) < 1e-4
    assert cache["blocks.0.mixer.hook_delta"].shape == (3, 29, 8)
    assert cache["blocks.0.mixer.hook_B"].shape == (3, 29, groups, 8)
    assert cache["blocks.1.mixer.hook_ssm_state"].shape == (3, 29, 8, 8, 8)
    assert cache["blocks.1.mixer.hook_x"].shape == cache["blocks.1.mixer.hook_ssm_out"].shape == (3, 29, 64)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_scan_backends_agree(backend):
    torch.manual_seed(0)
    model = Mamba2(vocab_size=40, d_model=16, n_layers=2, d_state=4, d_head=8, n_groups=2, ssd_chunk=4).eval()
    tokens = torch.randint(0, 40, (2, 11))
    with torch.no_grad():
        fast = model(tokens)
        for block in model.blocks:
            block.mixer.cfg.scan_backend = backend
        other = model(tokens)
    assert rel_err(fast, other) < 1e-5


def _float64_outputs(cache, mixer, edits):
    """y (hook_ssm_out) of one Mamba-2 mixer by a float64 recurrence over its cached
    inputs, with the state replaced at ``edits`` ({position: [b, head, d_head, d_state]})."""
    u, delta = cache["hook_conv"].double(), cache["hook_delta"].double()
    B, C = cache["hook_B"].double(), cache["hook_C"].double()
    b, L, H = delta.shape
    P, g = u.shape[-1] // H, B.shape[2]
    A, D = mixer.A.double(), mixer.D.double()
    u = u.reshape(b, L, H, P)
    Bh, Ch = (repeat(t, "b l g n -> b l (g r) n", r=H // g) for t in (B, C))
    h = torch.zeros(b, H, P, B.shape[-1], dtype=torch.float64)
    ys = []
    for t in range(L):
        if t in edits:
            h = edits[t].double()
        else:
            h = torch.exp(delta[:, t] * A)[:, :, None, None] * h + \
                (delta[:, t, :, None] * u[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]) + D[:, None] * u[:, t])
    return torch.stack(ys, 1).reshape(b, L, H * P)


def test_state_edit_propagates_as_float64_recurrence():
    torch.manual_seed(0)
    model = Mamba2(vocab_size=40, d_model=16, n_layers=2, d_state=4, d_head=8, n_groups=2).eval()
    tokens = torch.randint(0, 40, (2, 13))
    names = [f"blocks.0.mixer.hook_{h}" for h in ("conv", "delta", "B", "C", "ssm_state", "ssm_out")]
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, names_filter=names)
    new_state = torch.randn_like(clean["blocks.0.mixer.hook_ssm_state"][:, 5])

    def edit(state, hook):
        state[:, 5] = new_state
        return state

    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.mixer.hook_ssm_state", edit)]):
        _, edited = model.run_with_cache(tokens, names_filter="blocks.0.mixer.hook_ssm_out")
    inputs = {n.split(".")[-1]: clean[n] for n in names}
    want = _float64_outputs(inputs, model.blocks[0].mixer, {5: new_state})
    got = edited["blocks.0.mixer.hook_ssm_out"]
    assert rel_err(got, want) < 1e-5
    assert torch.equal(got[:, :5], clean["blocks.0.mixer.hook_ssm_out"][:, :5])  # before the edit: untouched
    assert rel_err(got[:, 5:], clean["blocks.0.mixer.hook_ssm_out"][:, 5:]) > 1e-2  # after it: moved
    # with no edit, the same recurrence gives the cached outputs
    assert rel_err(clean["blocks.0.mixer.hook_ssm_out"], _float64_outputs(inputs, model.blocks[0].mixer, {})) < 1e-5


def test_gradient_reaches_ssm_state():
    torch.manual_seed(0)
    model = Mamba2(vocab_size=40, d_model=16, n_layers=1, d_state=4, d_head=8).eval()
    tokens = torch.randint(0, 40, (1, 9))
    grads = {}
    model.blocks[0].mixer.hook_ssm_state.add_hook(lambda g, hook: grads.setdefault("h", g), dir="bwd")
    try:
        model(tokens)[0, -1].sum().backward()
    finally:
        model.reset_hooks()
    assert grads["h"].shape == (1, 9, 4, 8, 4) and grads["h"][:, -1].abs().sum() > 0


def test_mamba_ssm_format_loads(tmp_path):
    """state-spaces/mamba2-130m style: d_model / n_layer / ssm_cfg, backbone.embedding, a .bin."""
    hf = hf_model((TINY[0], {**TINY[1], "tie_word_embeddings": True, "layer_norm_epsilon": 1e-5}), perturb=0.05)
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": 32, "n_layer": 2, "vocab_size": 61, "pad_vocab_size_multiple": 1, "rms_norm": True,
        "residual_in_fp32": True, "fused_add_norm": True, "tie_embeddings": True,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "ngroups": 2, "expand": 2}}))
    ours = load_model(tmp_path)
    tokens = torch.randint(0, 61, (2, 17))
    with torch.no_grad():
        assert rel_err(ours(tokens), hf(tokens).logits) < 1e-4
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["ssm_cfg"]["layer"] = "Mamba3"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="Mamba3"):
        load_model(tmp_path)


def test_mamba_from_hf_of_a_mamba2_dir_names_the_family(tmp_path):
    _hf_dir(tmp_path)
    with pytest.raises(TypeError, match="'mamba2'.*not a Mamba"):
        Mamba.from_hf(tmp_path)
    assert isinstance(Mamba2.from_hf(tmp_path), Mamba2)


def test_bf16_close_to_fp32(tmp_path):
    _hf_dir(tmp_path)
    full, half = load_model(tmp_path), load_model(tmp_path, dtype=torch.bfloat16)
    assert half.embed.weight.dtype == torch.bfloat16
    tokens = torch.randint(0, 61, (2, 16))
    with torch.no_grad():
        assert rel_err(half(tokens).float(), full(tokens)) < 2e-2


def test_own_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Mamba2(vocab_size=40, d_model=16, n_layers=2, d_state=4, d_head=8, dt_limit_max=0.5).eval()
    model.save(tmp_path / "m2")
    again = load_model(tmp_path / "m2")
    tokens = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(tokens), again(tokens))
    with pytest.raises(ValueError, match="d_head=5 must divide"):
        Mamba2(d_model=16, d_head=5)


def test_patching_sweep_equals_reference():
    """The batched patching engine on Mamba-2's residual stream and 5-D states equals one
    full forward per patch."""
    import numpy as np

    from ssmlens.interp.tasks import corrupt, make_task
    from ssmlens.probes.patching import patching_sweep, patching_sweep_reference

    from patching_helpers import max_diff

    task = make_task("ar", n_keys=8, n_values=8, n_pairs=2)
    torch.manual_seed(0)
    model = Mamba2(vocab_size=task.vocab_size, d_model=16, n_layers=2, d_state=4, d_head=8, n_groups=2).eval()
    with torch.no_grad():
        model.embed.weight.normal_(0, 1.0)
    clean = task.sample(6, 0)
    corrupted = corrupt(clean, "value", 1)
    fast = patching_sweep(model, clean, corrupted, "resid_pre,ssm_state", "all", chunk_rows=5, progress=False)
    ref = patching_sweep_reference(model, clean, corrupted, "resid_pre,ssm_state", "all")
    assert np.nanmax(np.abs(fast.sel(metric="restored").values)) > 0.05
    assert max_diff(fast, ref) < 1e-5


def test_nnsight_reads_and_edits_states():
    from nnsight import NNsight

    torch.manual_seed(0)
    model = Mamba2(vocab_size=40, d_model=16, n_layers=2, d_state=4, d_head=8).eval()
    tokens = torch.randint(0, 40, (2, 9))

    def edit(state, hook):
        state[:, 4] = 0
        return state

    with torch.no_grad():
        via_hook = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mixer.hook_ssm_state", edit)])
        _, cache = model.run_with_cache(tokens, names_filter="blocks.0.mixer.hook_delta")
    wrapped = NNsight(model)
    with torch.no_grad(), wrapped.trace(tokens):
        delta = wrapped.blocks[0].mixer.hook_delta.output.save()
        state = wrapped.blocks[1].mixer.hook_ssm_state.output.clone()
        state[:, 4] = 0
        wrapped.blocks[1].mixer.hook_ssm_state.output = state
        out = wrapped.output.save()
    assert torch.equal(delta, cache["blocks.0.mixer.hook_delta"])
    assert rel_err(out, via_hook) < 1e-6
