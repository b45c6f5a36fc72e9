"""Helpers shared by the patching tests (test_patching, test_patching_resumed)."""

import numpy as np
import torch

from ssmlens.interp.tasks import corrupt

TASK = dict(n_keys=12, n_values=12, n_pairs=4)  # L = 13


def sharpen(model):
    """Larger (un)embeddings: less uniform logits, so the runs differ clearly."""
    with torch.no_grad():
        model.embed.weight.normal_(0, 0.3)
        if model.unembed is not None:
            model.unembed.weight.normal_(0, 0.3)
    return model.eval()


def requery(batch, value_seed=1):
    """Value corruption plus a query for another pair of the context: the query
    token itself changes, so even an untrained model's answer moves clearly and
    restored fractions are well conditioned; every position from the queried value on
    differs between the runs."""
    corr = corrupt(batch, "value", value_seed)
    tokens = corr.tokens.clone()
    q = batch.role("query")[:, 0]
    other = (batch.role("queried_key")[:, 0] + 2 - 1) % (2 * TASK["n_pairs"]) + 1  # the next pair's key
    rows = torch.arange(len(batch))
    tokens[rows, q] = batch.tokens[rows, other]
    return type(batch)(tokens, corr.loss_mask, corr.roles, corr.vocab_size, corr.task, corr.config)


def no_hooks_left(model):
    return all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())


def max_diff(a, b):
    """Largest difference of the measured quantities. Restored fractions are ratios
    (patched − corrupted) / (clean − corrupted); their numerators are compared."""
    assert a.dims == b.dims and a.shape == b.shape
    assert np.array_equal(np.isnan(a.values), np.isnan(b.values))
    diff = np.abs(a - b)
    for metric, base in (("restored", "p_answer"), ("restored_logit_diff", "logit_diff")):
        den = abs(a.attrs[f"clean_{base}"] - a.attrs[f"corrupted_{base}"])
        diff.loc[{"metric": metric}] = diff.sel(metric=metric) * den
    return float(diff.max())
