"""Linear probes: a planted linear feature is found (~100%), shuffled labels stay at
chance, control tasks and selectivity behave, and the layer × position sweep reads
what causality allows (a token's own embedding, never the future)."""

import pytest
import torch

from ssmlens.interp.tasks import make_task
from ssmlens.models import Mamba
from ssmlens.probes.linear import control_labels, fit_logistic, fit_probe, fit_ridge, train_test_split
from ssmlens.probes.linear_sweep import positions_index, probe_sweep, resolve_hooks, sweep_table
from ssmlens.probes.probe_figures import probe_accuracy_figure, probe_heatmap


def _planted(n=600, shape=(8, 4), n_classes=4, seed=0):
    """Gaussian 'states' [n, 8, 4] whose class is written along planted directions."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(n_classes, (n,), generator=g)
    x = torch.randn(n, *shape, generator=g)
    dirs = torch.randn(n_classes, *shape, generator=g)
    return x + 2.0 * dirs[y], y


@pytest.mark.parametrize("method", ["ridge", "logistic"])
def test_planted_linear_feature_is_decoded(method):
    x, y = _planted()
    res = fit_probe(x, y, method=method, seed=0)
    assert res.test_acc >= 0.97, res
    assert res.n_train + res.n_test == len(y) and res.n_classes == 4
    assert res.chance == pytest.approx(0.25)


@pytest.mark.parametrize("method", ["ridge", "logistic"])
def test_shuffled_labels_give_chance(method):
    x, y = _planted()
    y_shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    res = fit_probe(x, y_shuffled, method=method, seed=0)
    assert abs(res.test_acc - 0.25) < 0.1, res  # 150 test examples: chance ± ~3.5 sd


def test_dual_and_primal_ridge_agree_on_labels():
    x, y = _planted(n=60, shape=(3, 4))  # 12 features < 60 examples: primal
    wide = torch.cat([x.flatten(1), torch.zeros(60, 100)], 1)  # 112 features > 60: dual
    assert torch.equal(fit_ridge(x, y).predict(x), fit_ridge(wide, y).predict(wide))
    assert fit_logistic(x, y).accuracy(x, y) > 0.9


def test_split_and_control_task():
    tr, te = train_test_split(100, 0.25, seed=3)
    assert len(te) == 25 and set(tr.tolist()).isdisjoint(te.tolist()) and len(tr) + len(te) == 100
    assert torch.equal(train_test_split(100, 0.25, seed=3)[1], te)
    types = torch.tensor([5, 7, 5, 9, 7, 5, 9, 9])
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    c = control_labels(types, labels, seed=0)
    for t in types.unique():  # one label per type, taken from the label set
        assert len(c[types == t].unique()) == 1
    assert set(c.tolist()) <= set(labels.tolist())


def test_selectivity_separates_type_identity_from_the_feature():
    # features = one-hot of a token type; real labels independent of the type:
    # the control task (a function of the type) is easy, the real task is not.
    g = torch.Generator().manual_seed(0)
    types = torch.randint(6, (600,), generator=g)
    x = torch.nn.functional.one_hot(types, 6).float() + 0.01 * torch.randn(600, 6, generator=g)
    y = torch.randint(3, (600,), generator=g)
    res = fit_probe(x, y, control=types, seed=0)
    assert res.control_acc > 0.95 and res.test_acc < 0.5 and res.selectivity < -0.4


def test_fit_errors_are_clear():
    with pytest.raises(ValueError, match="labels"):
        fit_probe(torch.randn(10, 3), torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown probe method"):
        fit_probe(torch.randn(10, 3), torch.zeros(10, dtype=torch.long), method="svm")


@pytest.fixture(scope="module")
def tiny():
    task = make_task("ar", n_keys=8, n_values=8, n_pairs=4)
    batch = task.sample(240, seed=0)
    torch.manual_seed(0)
    return Mamba(vocab_size=task.vocab_size, d_model=16, n_layers=2, d_state=4).eval(), batch


def test_sweep_reads_what_causality_allows(tiny):
    model, batch = tiny
    with pytest.warns(UserWarning, match="uninformative"):  # position 0 is <bos> (item 8)
        da = probe_sweep(model, batch, "embed,resid_pre,ssm_state", "queried_value",
                         positions=["queried_value", 0, "query"], seed=0)
    assert da.dims == ("hook", "layer", "position", "metric")
    assert list(da.hook.values) == ["hook_embed", "hook_resid_pre", "mixer.hook_ssm_state"]
    assert list(da.layer.values) == [-1, 0, 1] and list(da.position.values) == ["queried_value", "0", "query"]
    acc = da.sel(metric="test_acc")
    # the value token's own embedding names it: ~100%
    assert float(acc.sel(hook="hook_embed", layer=-1, position="queried_value")) > 0.97
    assert float(acc.sel(hook="hook_resid_pre", layer=0, position="queried_value")) > 0.97
    # position 0 (<bos>) cannot know a later token: chance level (8 values)
    for hook, layer in (("hook_resid_pre", 1), ("mixer.hook_ssm_state", 1)):
        assert float(acc.sel(hook=hook, layer=layer, position="0")) < 0.3
    assert bool(acc.sel(hook="hook_embed", layer=0).isnull().all())  # no such layer: NaN
    table = sweep_table(da)
    assert set(table.columns) == {"hook", "layer", "position", "metric", "value", "control_informative"}
    assert not table["value"].isna().any()


def test_sweep_on_a_cache_matches_the_model(tiny):
    model, batch = tiny
    _, cache = model.run_with_cache(batch.tokens, names_filter=["blocks.1.mixer.hook_ssm_state"])
    a = probe_sweep(model, batch, "blocks.1.mixer.hook_ssm_state", "queried_value", ["query"], control=False)
    b = probe_sweep(dict(cache.items()), batch, "ssm_state", "queried_value", ["query"], control=False)
    assert a.sel(metric="test_acc").values == pytest.approx(b.sel(metric="test_acc").values, abs=1e-6)


def test_positions_targets_and_hooks_resolve(tiny):
    model, batch = tiny
    labels, idx = positions_index(batch, ["key[2]", -1, "answer"], batch.seq_len)
    assert labels == ["key[2]", batch.seq_len - 1, "answer"]
    assert idx[:, 0].eq(5).all() and idx[:, 1].eq(batch.seq_len - 1).all()
    assert resolve_hooks(list(model.hook_dict), "conv") == ["blocks.0.mixer.hook_conv", "blocks.1.mixer.hook_conv"]
    with pytest.raises(ValueError, match="hook kinds of this model"):
        resolve_hooks(list(model.hook_dict), "attn.hook_z")
    with pytest.raises(KeyError, match="no role"):
        probe_sweep(model, batch, "resid_pre", "nonexistent_role")


def test_probe_figures(tiny):
    model, batch = tiny
    with pytest.warns(UserWarning, match="uninformative"):  # position 0: <bos> (item 8 below)
        da = probe_sweep(model, batch, "resid_pre", "queried_value", positions=[0, "queried_value", "query"])
    fig = probe_accuracy_figure(da, x="layer")
    assert len(fig.data) == 5  # 3 positions × (probe, control), no control at position 0
    assert any(t.line.dash == "dash" for t in fig.data)
    assert len(probe_accuracy_figure(da, x="position", control=False).data) == 2
    heat = probe_heatmap(da, "hook_resid_pre")
    assert heat.data[0].z.shape == (2, 3)
    with pytest.raises(ValueError, match="no hook"):
        probe_accuracy_figure(da, hooks="hook_nope")


# ---- issue 12 item 8: a position whose token never varies --------------------------------------


def test_item8_constant_token_position_warns_and_marks_the_control_uninformative(tiny):
    model, batch = tiny
    assert batch.tokens[:, 0].unique().numel() == 1  # <bos>: the control task has one token type there
    with pytest.warns(UserWarning, match="uninformative") as record:
        da = probe_sweep(model, batch, "resid_pre", "queried_value", positions=[0, "queried_value"])
    from ssmlens.probes.linear import UninformativeControl

    assert any(issubclass(r.category, UninformativeControl) and "position 0" in str(r.message) for r in record)
    flag = da.sel(metric="control_informative")
    assert (flag.sel(position="0") == 0).all() and (flag.sel(position="queried_value") == 1).all()
    sel = da.sel(metric="selectivity")
    assert sel.sel(position="0").isnull().all()  # not −0.9: no number for a meaningless control
    assert sel.sel(position="queried_value").notnull().all()
    table = sweep_table(da)
    assert "control_informative" in table.columns
    assert not table[table["position"] == "0"]["control_informative"].any()
    assert table[table["position"] == "queried_value"]["control_informative"].all()
    # one probe, directly
    x, y = _planted(n=80)
    with pytest.warns(UninformativeControl):
        res = fit_probe(x, y, control=torch.zeros(80, dtype=torch.long))
    assert not res.control_informative and res.selectivity != res.selectivity  # NaN
    assert fit_probe(x, y, control=y).control_informative


def test_item8_figures_show_uninformative_cells_as_such(tiny):
    import warnings

    model, batch = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da = probe_sweep(model, batch, "resid_pre", "queried_value", positions=[0, "queried_value"])
    fig = probe_accuracy_figure(da, x="layer")
    names = [t.name for t in fig.data]
    assert not any("0" in n.split("position")[-1] and "control" in n for n in names)  # no control curve at 0
    assert "uninformative" in fig.layout.title.text and "position 0" in fig.layout.title.text
    heat = probe_heatmap(da, "hook_resid_pre", metric="selectivity")
    assert heat.data[0].z[:, 0].tolist() == [None, None] or all(v != v for v in heat.data[0].z[:, 0])
    marks = [t for t in heat.data if t.name == "uninformative"]
    assert marks and all(str(t) == "uninformative" for row in marks[0].text for t in row if t)
