"""Properties every registered model must have (``ssmlens.models.model_names()``):
prefix consistency and causality (issue 12, item 4), deep copies at any time (item 12)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from ssmlens.models import model_names

from every_model import V, build_small, tokens


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    scale = float(b.abs().max()) if b.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name", model_names())
def test_prefix_logits_equal_the_full_sequence_logits(name):
    """Logits of ``tokens[:, :k]`` are the first k logits of the whole sequence: nothing
    a position computes may depend on how long the sequence is (MoE capacity did)."""
    model = build_small(name)
    x = tokens(L=24)
    with torch.no_grad():
        full = model(x)
        for k in (1, 2, 5, 11, 23):
            close(model(x[:, :k]), full[:, :k], rtol=1e-4)


@pytest.mark.parametrize("name", model_names())
def test_changing_token_t_changes_no_logit_before_t(name):
    model = build_small(name)
    x = tokens(L=20, seed=3)
    with torch.no_grad():
        base = model(x)
        for t in (0, 1, 7, 19):
            y = x.clone()
            y[:, t] = (y[:, t] + 11) % V
            out = model(y)
            close(out[:, :t], base[:, :t], rtol=1e-5)
            assert not torch.allclose(out[:, t], base[:, t]), "the changed token must reach its own logits"


@pytest.mark.parametrize("name", model_names())
def test_deepcopy_after_a_forward_with_gradients(name):
    """Auxiliary losses kept from the last forward (MoE balance, B'MOJO innovation) hold
    a graph; a copy of the model must still be possible, and independent."""
    model = build_small(name).train()
    x = tokens()
    loss = model(x, return_type="loss")
    for aux in model.auxiliary_losses().values():
        loss = loss + aux
    twin = copy.deepcopy(model)  # before backward: the graph is alive
    loss.backward()
    twin2 = copy.deepcopy(model)  # after backward, with .grad set
    twin3 = pickle.loads(pickle.dumps(model))  # pickling shares the copy protocol
    for clone in (twin, twin2, twin3):
        clone.eval()
        model.eval()
        with torch.no_grad():
            assert torch.equal(clone(x), model(x))
        assert clone.auxiliary_losses().keys() == model.auxiliary_losses().keys()
    with torch.no_grad():  # independent parameters
        next(twin.parameters()).add_(1.0)
        assert not torch.equal(twin(x), model(x))
    # the copy trains on its own: its auxiliary losses come from its own forward
    twin.train()
    twin_loss = twin(x, return_type="loss") + sum(twin.auxiliary_losses().values(), torch.zeros(()))
    twin_loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in twin.parameters())
