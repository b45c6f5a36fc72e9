"""The torch scan backend equals the float64 reference, forward and gradients,
on fresh random inputs for every option of the contract (DESIGN §3)."""

import pytest
import torch

from ssmlens.kernels import ScanInputError, linear_recurrence, linear_recurrence_reference, selective_scan

from helpers import rel_err

SHAPES = [  # b, L, d, n, groups (None = ungrouped)
    (1, 1, 3, 1, None),
    (2, 37, 5, 4, None),
    (2, 130, 4, 16, 2),
    (3, 64, 6, 8, 3),
]


def _inputs(b, L, d, n, g, requires_grad=False):
    bc_shape = (b, L, n) if g is None else (b, L, g, n)
    t = dict(
        u=torch.randn(b, L, d), delta=torch.randn(b, L, d) * 0.5,
        A=-torch.rand(d, n) * 2 - 0.05,
        B=torch.randn(bc_shape), C=torch.randn(bc_shape),
        D=torch.randn(d), z=torch.randn(b, L, d), delta_bias=torch.randn(d) * 0.3,
        initial_state=torch.randn(b, d, n),
    )
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def _options(b, L, d, n):
    k = min(3, L)
    pos = torch.randperm(L)[:k].tolist()
    return [
        dict(),
        dict(state_positions="all"),
        dict(state_positions=pos),
        dict(state_override=(pos, torch.randn(b, k, d, n))),
        dict(state_positions="all", state_override=(pos[:1], torch.randn(b, 1, d, n))),
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(shape, monkeypatch):
    # small chunks so that L = 37, 130 cross chunk boundaries with states and overrides
    monkeypatch.setattr("ssmlens.kernels.torch_scan.CHUNK", 16)
    b, L, d, n, g = shape
    for opts in _options(b, L, d, n):
        for use_init, use_z in ((True, True), (False, False)):
            x = _inputs(b, L, d, n, g)
            if not use_init:
                x["initial_state"] = None
            if not use_z:
                x["z"] = None
            got = selective_scan(**x, **opts, return_final_state=True, backend="torch")
            ref = selective_scan(**x, **opts, return_final_state=True, backend="reference")
            assert got.out.dtype == torch.float32 and got.final_state.dtype == torch.float32
            assert rel_err(got.out, ref.out) < 1e-5, opts
            assert rel_err(got.final_state, ref.final_state) < 1e-5, opts
            if "state_positions" in opts:
                assert got.states.shape == ref.states.shape
                assert rel_err(got.states, ref.states) < 1e-5, opts
            else:
                assert got.states is None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_states", [False, True])
def test_gradients_match_reference(shape, with_states):
    """Gradients of one random linear functional of (out, final state, states) agree
    for every input, override values included."""
    b, L, d, n, g = shape
    x = _inputs(b, L, d, n, g, requires_grad=True)
    pos = torch.randperm(L)[: min(2, L)].tolist()
    ov = torch.randn(b, len(pos), d, n, requires_grad=True)
    w_out, w_fin, w_st = torch.randn(b, L, d), torch.randn(b, d, n), torch.randn(b, L, d, n)
    grads = []
    for backend in ("torch", "reference"):
        res = selective_scan(**x, state_positions="all" if with_states else None,
                             state_override=(pos, ov), return_final_state=True, backend=backend)
        loss = (res.out * w_out).sum() + (res.final_state * w_fin).sum()
        if with_states:
            loss = loss + (res.states * w_st).sum()
        grads.append(torch.autograd.grad(loss, [*x.values(), ov], allow_unused=True, materialize_grads=True))
    names = [*x.keys(), "override_values"]
    for name, gt, gr in zip(names, *grads):
        assert rel_err(gt, gr) < 1e-5 or (gr.abs().max() == 0 and gt.abs().max() == 0), name


def test_override_replaces_state_and_propagates():
    b, L, d, n = 2, 20, 3, 4
    x = _inputs(b, L, d, n, None)
    val = torch.randn(b, 1, d, n)
    base = selective_scan(**x, state_positions="all", backend="torch")
    edit = selective_scan(**x, state_positions="all", state_override=([7], val), backend="torch")
    assert torch.equal(edit.states[:, :7], base.states[:, :7])
    assert torch.allclose(edit.states[:, 7], val[:, 0])
    assert not torch.allclose(edit.states[:, 8:], base.states[:, 8:])
    assert torch.equal(edit.out[:, :7], base.out[:, :7])


def test_state_positions_order_and_negative():
    x = _inputs(1, 10, 2, 3, None)
    allst = selective_scan(**x, state_positions="all").states
    some = selective_scan(**x, state_positions=[9, 2, -1 - 4]).states
    assert torch.allclose(some, allst[:, [9, 2, 5]])


def test_linear_recurrence_matches_reference():
    for L in (1, 33, 100):
        a, b = torch.rand(2, L, 3, 2), torch.randn(2, L, 3, 2)
        h0 = torch.randn(2, 3, 2)
        assert rel_err(linear_recurrence(a, b, h0), linear_recurrence_reference(a, b, h0)) < 1e-5
        assert rel_err(linear_recurrence(a, b), linear_recurrence_reference(a, b)) < 1e-5


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x: x.update(u=x["u"][0]), "u must be"),
        (lambda x: x.update(delta=x["delta"][:, :-1]), "delta must be"),
        (lambda x: x.update(A=x["A"].T), "A must be"),
        (lambda x: x.update(B=x["B"][..., :-1]), "B must be"),
        (lambda x: x.update(D=torch.randn(7)), "D must be"),
        (lambda x: x.update(u=x["u"].long()), "floating point"),
        (lambda x: x.update(initial_state=torch.randn(2, 4, 4)), "initial_state must be"),
    ],
)
def test_bad_inputs_are_named(change, match):
    x = _inputs(2, 5, 4, 3, None)
    change(x)
    with pytest.raises(ScanInputError, match=match):
        selective_scan(**x)


def test_bad_options_are_named():
    x = _inputs(2, 5, 4, 3, None)
    with pytest.raises(ScanInputError, match="out of range"):
        selective_scan(**x, state_positions=[5])
    with pytest.raises(ScanInputError, match="repeated"):
        selective_scan(**x, state_positions=[1, 1])
    with pytest.raises(ScanInputError, match="state_override values must be"):
        selective_scan(**x, state_override=([1], torch.randn(2, 2, 4, 3)))
    with pytest.raises(ScanInputError, match="unknown backend"):
        selective_scan(**x, backend="cuda")
    with pytest.raises(ScanInputError, match="'all'"):
        selective_scan(**x, state_positions="every")


# -- issue 12, item 6: empty position lists and bool "positions" -------------------

def _backends():
    import os

    out = ["torch", "reference"]
    if os.environ.get("TRITON_INTERPRET") == "1":
        out.append("triton")
    return out


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("empty", [[], (), range(0), torch.zeros(0, dtype=torch.long)], ids=repr)
def test_empty_state_positions_give_no_states(backend, empty):
    """``state_positions=[]`` is valid input: every backend returns states [b, 0, d, n]."""
    if backend == "triton":
        pytest.importorskip("ssmlens.kernels.triton_scan")
    x = _inputs(2, 9, 4, 3, None)
    none = selective_scan(**x, backend=backend)
    res = selective_scan(**x, state_positions=empty, backend=backend)
    assert res.states is not None and res.states.shape == (2, 0, 4, 3)
    assert res.states.dtype == torch.float32
    assert torch.equal(res.out, none.out)


def test_empty_state_positions_keep_gradients():
    x = _inputs(2, 9, 4, 3, None, requires_grad=True)
    res = selective_scan(**x, state_positions=[], backend="torch")
    (res.out.sum() + res.states.sum()).backward()
    assert x["u"].grad is not None and torch.isfinite(x["u"].grad).all()


@pytest.mark.parametrize("positions", [torch.tensor([True, False, True]), [True, False], torch.ones(9, dtype=torch.bool)],
                         ids=["bool tensor", "bool list", "full mask"])
def test_bool_positions_are_refused(positions):
    """A mask is not a list of positions: it used to be read as the indices 0 and 1."""
    x = _inputs(2, 9, 4, 3, None)
    with pytest.raises(ScanInputError, match="state_positions.*bool"):
        selective_scan(**x, state_positions=positions)
    with pytest.raises(ScanInputError, match="state_override positions.*bool"):
        selective_scan(**x, state_override=(positions, torch.randn(2, len(positions), 4, 3)))
