"""Based, H3 and Hyena as models: hook names, causality and prefix consistency,
checkpoints, TransformerLens and nnsight access, the trainer and ``ssmlens train``."""

from __future__ import annotations

import pytest
import torch
from nnsight import NNsight

from ssmlens.interp.cli import main
from ssmlens.interp.hook_names import UnknownHookError, dims_for, is_costly
from ssmlens.interp.training import Trainer, TrainConfig
from ssmlens.models import Based, H3, Hyena, build_model, load_model, model_names

V = 24
TINY = {
    "based": {"feature_dim": 4, "n_heads": 2, "window": 3},
    "h3": {"d_state": 4, "head_dim": 2},
    "hyena": {"l_max": 32, "filter_width": 8},
}
# The hooks the issue names for each mixer (more may exist: the short convolutions').
MIXER_HOOKS = {
    "based": ["hook_q", "hook_k", "hook_v", "hook_phi_q", "hook_phi_k", "hook_kv_state", "hook_normalizer",
              "hook_linear_out", "hook_window_pattern", "hook_window_out", "hook_out"],
    "h3": ["hook_q", "hook_k", "hook_v", "hook_shift_out", "hook_kv", "hook_ssm_state", "hook_ssm_out", "hook_out"],
    "hyena": ["hook_x1", "hook_x2", "hook_v", "hook_filter", "hook_conv_out_1", "hook_conv_out_2", "hook_out"],
}


def tiny(name: str, seed: int = 0, n_layers: int = 2, **extra):
    torch.manual_seed(seed)
    return build_model(name, vocab_size=V, d_model=16, n_layers=n_layers, **TINY[name], **extra).eval()


@pytest.fixture(scope="module", params=list(TINY))
def name(request):
    return request.param


def test_registered_with_classes():
    assert {"based", "h3", "hyena"} <= set(model_names())
    assert isinstance(tiny("based"), Based) and isinstance(tiny("h3"), H3) and isinstance(tiny("hyena"), Hyena)


def test_hook_names_and_labelled_dims(name):
    model = tiny(name)
    for layer in range(2):
        for h in ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "mlp.hook_out"]:
            assert f"blocks.{layer}.{h}" in model.hook_dict
        for h in MIXER_HOOKS[name]:
            assert f"blocks.{layer}.mixer.{h}" in model.hook_dict
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.randint(0, V, (2, 9)))
    assert set(cache.keys()) == set(model.hook_dict)  # everything fires, costly values included
    for hook, value in cache.items():
        dims = dims_for(hook, value.ndim)
        assert not dims[0].startswith("dim_"), f"{hook} {tuple(value.shape)} has no labelled dims"
        if hook.endswith("hook_filter"):
            assert dims == ("order", "d_model", "lag")
        else:
            assert dims[0] == "batch" and "pos" in dims[1] or dims[2] == "query_pos", (hook, dims)
    assert is_costly("blocks.0.mixer.hook_kv_state") and is_costly("blocks.0.mixer.hook_window_pattern")


@pytest.mark.parametrize("t", [1, 4, 10])
def test_causal(name, t):
    """Changing token t changes no logit before t (to the FFT's rounding) and moves t."""
    model = tiny(name, seed=t)
    tokens = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(t))
    other = tokens.clone()
    other[:, t] = (other[:, t] + 1) % V
    with torch.no_grad():
        a, b = model(tokens), model(other)
    assert (a[:, :t] - b[:, :t]).abs().max() < 1e-5
    assert (a[:, t] - b[:, t]).abs().max() > 1e-3


def test_prefix_consistent(name):
    model = tiny(name, seed=1)
    tokens = torch.randint(0, V, (2, 15), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        for n in (1, 6, 14):
            assert torch.allclose(model(tokens[:, :n]), full[:, :n], atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip(name, tmp_path):
    model = tiny(name, seed=2)
    tokens = torch.randint(0, V, (2, 10))
    model.save(tmp_path / name)
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert type(model).load(tmp_path / name).cfg == model.cfg
    with pytest.raises(TypeError, match="holds a"):
        (H3 if name != "h3" else Based).load(tmp_path / name)


def test_unknown_hook_names_suggest(name):
    model = tiny(name)
    wrong = {"based": "blocks.0.mixer.hook_kv_stat", "h3": "blocks.0.mixer.hook_shift",
             "hyena": "blocks.0.mixer.hook_filters"}
    with pytest.raises(UnknownHookError, match="Did you mean"):
        model.run_with_hooks(torch.zeros(1, 4, dtype=torch.long), fwd_hooks=[(wrong[name], lambda x, hook: x)])
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_run_with_hooks_and_nnsight_agree(name):
    """Zeroing the mixer output of layer 1 through TransformerLens hooks and through
    nnsight gives the same logits; reading a hook through nnsight gives the cached value."""
    model = tiny(name, seed=3)
    tokens = torch.randint(0, V, (2, 9))
    hook = "blocks.1.mixer.hook_out"
    with torch.no_grad():
        want = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda x, hook: torch.zeros_like(x))])
        _, cache = model.run_with_cache(tokens, names_filter="blocks.0.mixer.hook_v")
    wrapped = NNsight(model)
    with torch.no_grad(), wrapped.trace(tokens):
        v = wrapped.blocks[0].mixer.hook_v.output.save()
        wrapped.blocks[1].mixer.hook_out.output = torch.zeros_like(wrapped.blocks[1].mixer.hook_out.output)
        got = wrapped.output.save()
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(v, cache["blocks.0.mixer.hook_v"])


def test_no_mlp_option(name):
    model = tiny(name, d_mlp=0)
    assert not any(".mlp." in n for n in model.hook_dict)
    assert model(torch.randint(0, V, (1, 5))).shape == (1, 5, V)


def test_trainer_learns_a_little_on_mqar(name, tmp_path):
    """A few steps on MQAR: the loss falls and a checkpoint is written."""
    extra = {"l_max": 16} if name == "hyena" else {}
    cfg = TrainConfig(model=name, task="mqar", task_config={"vocab_size": 16, "seq_len": 16, "n_pairs": 2},
                      d_model=16, n_layers=1, model_config={**TINY[name], **extra}, steps=30, batch_size=16,
                      lr=3e-3, warmup_steps=2, eval_every=30, eval_size=32, device="cpu", progress=False,
                      out_dir=str(tmp_path), name=name)
    result = Trainer(cfg).fit()
    assert (tmp_path / name / "final" / "model.safetensors").is_file()
    first = Trainer(cfg.replace(name=name + "-0", steps=1, eval_every=1)).fit().metrics[-1]["eval_loss"]
    assert result.metrics[-1]["eval_loss"] < first


def test_cli_train_with_model_args(name, tmp_path, capsys):
    args = ["train", "--model", name, "--task", "ar", "--task-arg", "n_keys=8", "--task-arg", "n_values=8",
            "--task-arg", "n_pairs=2", "--d-model", "16", "--layers", "1", "--steps", "4", "--batch-size", "8",
            "--eval-every", "2", "--eval-size", "16", "--device", "cpu", "--out-dir", str(tmp_path), "--name", name]
    for key, value in TINY[name].items():
        args += ["--model-arg", f"{key}={value}"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "checkpoint:" in captured.out and "step/s" in captured.err  # the tqdm bar
    model = load_model(tmp_path / name / "final")
    for key, value in TINY[name].items():
        assert getattr(model.cfg, key) == value
    assert main(["train", "--model", name, "--model-arg", "no_such_field=1", "--out-dir", str(tmp_path)]) != 0
    assert "no_such_field" in capsys.readouterr().err


def test_default_patching_hooks_include_the_memory():
    from ssmlens.probes.study import default_hooks

    assert default_hooks(tiny("based")) == ["resid_pre", "mixer.hook_kv_state"]
    assert default_hooks(tiny("h3")) == ["resid_pre", "mixer.hook_ssm_state"]
    assert default_hooks(tiny("hyena")) == ["resid_pre", "mixer.hook_conv_out_1", "mixer.hook_conv_out_2"]
