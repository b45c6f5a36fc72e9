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
# # Where does a Mamba keep the key–value association?
#
# A tour of ssmlens in one notebook: train a tiny Mamba on associative recall,
# patch its residual stream and hidden states from a clean into a corrupted run,
# check the patching against attribution patching, probe its states for the queried
# value, ablate its short convolution, and keep everything in a run store.
# (The test suite executes this notebook, so it stays small and fast.)

# %%
import tempfile
from pathlib import Path

import torch

from ssmlens.interp.store import create_run, open_run
from ssmlens.interp.tasks import corrupt, make_task
from ssmlens.interp.train import resolve_checkpoint, train
from ssmlens.models import load_model
from ssmlens.probes.ablation import run_ablated
from ssmlens.probes.attribution import attribution_patching
from ssmlens.probes.figures import patching_heatmap
from ssmlens.probes.linear_sweep import probe_sweep
from ssmlens.probes.patching import patching_sweep
from ssmlens.probes.probe_figures import probe_accuracy_figure

torch.manual_seed(0)
work = Path(tempfile.mkdtemp(prefix="ssmlens-tour-"))

# %% [markdown]
# ## A trained Mamba
# `make demo` trains a Mamba on associative recall (32 keys, 32 values, 4 pairs) and
# keeps it in `runs/demo-mamba-ar`. Without it, a short run here gives a model still
# on its plateau (about 1/4 accuracy: it picks one of the four values in context), so
# the numbers below are only meaningful after `make demo`.

# %%
demo_run = Path("runs/demo-mamba-ar")
if (demo_run / "train_config.json").exists():
    checkpoint = resolve_checkpoint(demo_run)
    task_config = {"n_keys": 32, "n_values": 32, "n_pairs": 4}
else:
    task_config = {"n_keys": 8, "n_values": 8, "n_pairs": 4}
    checkpoint = train(model="mamba", task="ar", task_config=task_config, d_model=32, n_layers=2,
                       steps=100, batch_size=64, lr=1e-2, warmup_steps=20, weight_decay=0.0, eval_every=100,
                       eval_size=256, out_dir=str(work), progress=False).checkpoint
model = load_model(checkpoint).eval()
print("checkpoint:", checkpoint)

# %% [markdown]
# ## Patch: clean value → corrupted run
# The corrupted run replaces the queried pair's value; `restored` is
# (p_patch − p_corr) / (p_clean − p_corr) of the right answer.

# %%
task = make_task("ar", **task_config)
clean = task.sample(64, seed=1)
corrupted = corrupt(clean, mode="value", seed=2)
patch = patching_sweep(model, clean, corrupted, ["resid_pre", "ssm_state"], "all", progress=False)
fig = patching_heatmap(patch, "restored", hook="mixer.hook_ssm_state")
best = patch.sel(metric="restored").max("pos")
print(best.to_pandas())

# %% [markdown]
# Attribution patching needs one forward and one backward pass for every site at once.

# %%
attr = attribution_patching(model, clean, corrupted, ["resid_pre", "ssm_state"], "all")
print(attr.sel(metric="delta").sum("pos").to_pandas())

# %% [markdown]
# ## Probe the hidden states for the queried value

# %%
probes = probe_sweep(model, clean, "resid_post,ssm_state", target="queried_value", positions=["query"])
probe_fig = probe_accuracy_figure(probes, x="layer")
for metric in ("test_acc", "control_acc"):
    print(metric, probes.sel(metric=metric).squeeze("position", drop=True).to_pandas(), sep="\n")

# %% [markdown]
# ## Ablate the short convolution

# %%
def accuracy(logits):
    q, a = clean.role("query")[:, 0], clean.answer_tokens()[:, 0]
    return (logits[torch.arange(len(clean)), q].argmax(-1) == a).float().mean().item()

with torch.no_grad():
    base_acc = accuracy(model(clean.tokens))
    no_conv_acc = accuracy(run_ablated(model, clean, "no_conv"))
print(f"accuracy {base_acc:.2f} -> {no_conv_acc:.2f} without the short conv")

# %% [markdown]
# ## Keep it: one run store

# %%
store = work / "tour-run"
with create_run(store, {"kind": "tour", "model_type": model.model_type, "task": "ar",
                        "task_config": task_config}) as run:
    run.set_checkpoint(checkpoint)
    run.write_batch(clean)
    run.write_result("patching/ssm_state", patch.sel(hook="mixer.hook_ssm_state"))
    run.set_metrics(accuracy=base_acc, accuracy_no_conv=no_conv_acc)
again = open_run(store)
assert again.is_complete
print(again.results(), again.metrics)
