# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Pretrained Mamba, Mamba-2 and Pythia from a local directory
#
# Load a checkpoint with one call, feed it text, cache its Δ gates and hidden states,
# and patch them by role on natural-text prompt sets.
#
# **With real models**: put the paths of your local copies in `LOCAL` (for example
# `state-spaces/mamba-130m-hf`, `state-spaces/mamba2-130m` or `EleutherAI/pythia-160m`,
# downloaded beforehand; nothing here downloads). `state-spaces/mamba2-130m` ships no
# tokenizer: set `TOKENIZER` to a directory holding the GPT-NeoX tokenizer's
# `tokenizer.json` (the one of `EleutherAI/pythia-160m` or `mamba-130m-hf`). Entries
# left at `None` are replaced by tiny random checkpoints written here with transformers'
# `save_pretrained` (that is what the test suite runs), so the numbers below only mean
# something with real weights.

# %%
import tempfile
from pathlib import Path

import plotly.express as px
import torch

import ssmlens
from ssmlens.interp.cli import main as ssmlens_cli
from ssmlens.interp.store import open_run
from ssmlens.interp.tasks.text_prompts import corrupt_facts, corrupt_repeated, fact_recall, repeated_tokens
from ssmlens.models.hf_random import write_random_checkpoint
from ssmlens.probes.figures import patching_heatmap
from ssmlens.probes.patching import patching_sweep

LOCAL = {"mamba": None, "mamba2": None, "pythia": None}  # e.g. "mamba": "/data/mamba-130m-hf"
TOKENIZER = None  # for a mamba_ssm-format directory without tokenizer.json
DEVICE, DTYPE = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
torch.set_grad_enabled(False)  # inference only in this notebook

work = Path(tempfile.mkdtemp(prefix="ssmlens-pretrained-"))
stand_ins = {"mamba": "tiny-mamba", "mamba2": "tiny-mamba2", "pythia": "tiny-pythia"}
paths = {}
for family, path in LOCAL.items():
    if path is None:
        path = work / family
        write_random_checkpoint(stand_ins[family], path, perturb=0.3)
    paths[family] = Path(path)

models = {f: ssmlens.load_model(p, dtype=DTYPE, device=DEVICE, tokenizer=TOKENIZER if f == "mamba2" else None)
          for f, p in paths.items()}
for family, model in models.items():
    print(f"{family:7s} {type(model).__name__:12s} {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"{model.tokenizer}")

# %% [markdown]
# ## Text in, text out
#
# `to_tokens` follows TransformerLens' BOS conventions per family: Pythia (and GPT-2)
# get `<|endoftext|>` first, Mamba models the text as it is.

# %%
text = "Facts: Mary lives in Paris. John lives in Rome. Mary lives in"
for family, model in models.items():
    tokens = model.to_tokens(text)
    next_token = model(tokens)[0, -1].argmax()
    print(f"{family:7s} {model.to_str_tokens(tokens)[:4]} ... -> {model.to_string(next_token[None])!r}")

# %% [markdown]
# ## Δ and hidden states of Mamba-2
#
# Mamba-2's Δ is one gate per head, `[batch, pos, head]`; its states are
# `[batch, pos, head, d_head, d_state]`, computed only when a hook asks for them.

# %%
m2 = models["mamba2"]
tokens = m2.to_tokens(text)
last = m2.cfg.n_layers - 1
_, cache = m2.run_with_cache(tokens, names_filter=[f"blocks.{last}.mixer.hook_delta",
                                                   f"blocks.{last}.mixer.hook_ssm_state"])
delta = cache[f"blocks.{last}.mixer.hook_delta"][0].float()  # pos head
states = cache[f"blocks.{last}.mixer.hook_ssm_state"]
print("Δ", tuple(delta.shape), "states", tuple(states.shape))
labels = [f"{i}:{t}" for i, t in enumerate(m2.to_str_tokens(tokens))]
px.imshow(delta.T.cpu(), x=labels, labels=dict(x="token", y="head", color="Δ"),
          title=f"Mamba-2 layer {last}: Δ per head", aspect="auto")

# %% [markdown]
# ## Edit a state, watch it propagate
#
# Replacing the state at one position changes the output from there on (the scan
# carries the edited state forward), and nothing before it.

# %%
pos = 6
def zero_state(state, hook):
    state[:, pos] = 0
    return state

out_name, state_name = f"blocks.{last}.mixer.hook_ssm_out", f"blocks.{last}.mixer.hook_ssm_state"
# the clean run listens to the states too, so that both runs take the same scan path
_, clean_out = m2.run_with_cache(tokens, names_filter=[out_name, state_name])
with m2.hooks(fwd_hooks=[(state_name, zero_state)]):
    _, edited_out = m2.run_with_cache(tokens, names_filter=out_name)
change = (edited_out[out_name] - clean_out[out_name]).float().norm(dim=-1)[0]
assert change[:pos].abs().max() == 0 and change[pos:].min() > 0
px.bar(x=labels, y=change.cpu(), labels=dict(x="token", y="‖Δy‖"), title="Change of y after zeroing h at one position")

# %% [markdown]
# ## Induction on repeated random tokens
#
# The standard induction test: random tokens repeated once. A model with induction
# predicts the second copy from the first: its loss drops there.

# %%
rows = []
for family, model in models.items():
    batch = repeated_tokens(model, n=8, half_len=24, seed=0)
    logp = model(batch.tokens.to(DEVICE)).float().log_softmax(-1)
    loss = -logp[:, :-1].gather(-1, batch.tokens[:, 1:, None].to(DEVICE))[..., 0].mean(0)
    rows += [dict(model=family, pos=i + 1, loss=float(v)) for i, v in enumerate(loss)]
px.line(rows, x="pos", y="loss", color="model", title="Per-position loss on repeated random tokens")

# %% [markdown]
# Pythia's attention patterns on the same prompts (the induction stripe sits one
# position after the first-copy diagonal in a trained model):

# %%
pythia = models["pythia"]
batch = repeated_tokens(pythia, n=1, half_len=24, seed=0)
_, cache = pythia.run_with_cache(batch.tokens.to(DEVICE), names_filter=lambda n: n.endswith("hook_pattern"))
pattern = cache[f"blocks.{pythia.cfg.n_layers - 1}.attn.hook_pattern"][0].float()  # head q k
px.imshow(pattern.mean(0).cpu(), labels=dict(x="key", y="query"), title="Pythia, last layer, mean over heads")

# %% [markdown]
# ## Patching by role on fact recall
#
# `fact_recall` finds each fact's name and city, the question's name and the answer
# from the tokenization; `corrupt_facts` swaps the queried city in context. The
# patching sweep restores the clean value at each role, layer by layer: where does the
# model carry the city from its first mention to the answer?

# %%
figures = {}
for family, model in models.items():
    clean = fact_recall(model, n=8, n_facts=3, seed=0)
    swapped = corrupt_facts(clean, "value", seed=1)
    hooks = "resid_pre,attn.hook_out" if family == "pythia" else "resid_pre,ssm_state"
    result = patching_sweep(model, clean.to(DEVICE), swapped.to(DEVICE), hooks,
                            ["queried_value", "query_key", "query"], progress=False)
    figures[family] = patching_heatmap(result, title=f"{family}: restored p(answer)")
figures["mamba2"]

# %% [markdown]
# ## A run store from the command line
#
# `ssmlens cache` does the same for big prompt sets: forwards sized by a token budget,
# tokens/s, the prompts and roles kept with the activations.

# %%
store = work / "runs" / "mamba-delta"
ssmlens_cli(["cache", str(paths["mamba"]), "--prompts", "repeated_tokens", "--seq-len", "48", "--n", "16",
             "--token-budget", "192", "--hooks", "delta", "--positions", "last", "--out", str(store),
             "--no-progress", "--device", DEVICE])
run = open_run(store)
print(run, run.metrics)
print({name: tuple(array.shape) for name, array in run.cache.items()})
