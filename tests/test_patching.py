"""Activation patching: batched sweep == one forward per patch, 100% / 0% anchors,
positions by role, hooks left clean, B'MOJO writes, store and CLI glue."""

import numpy as np
import pytest
import torch

from ssmlens.interp.hook_names import UnknownHookError
from ssmlens.interp.tasks import corrupt, make_task
from ssmlens.models import Mamba, Transformer
from ssmlens.probes.batched import run_interventions
from ssmlens.probes.metrics import answer_spec
from ssmlens.probes.patching import patching_sweep, patching_sweep_reference
from ssmlens.probes.positions import expand_hooks, position_labels, resolve_positions

from patching_helpers import TASK, max_diff, no_hooks_left, requery, sharpen


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: a second thread only adds contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def batches():
    task = make_task("ar", **TASK)
    clean = task.sample(6, 0)
    return task, clean, requery(clean)


@pytest.fixture(scope="module")
def mamba(batches):
    torch.manual_seed(0)
    return sharpen(Mamba(vocab_size=batches[0].vocab_size, d_model=16, n_layers=2, d_state=4))


@pytest.fixture(scope="module")
def transformer(batches):
    torch.manual_seed(0)
    return sharpen(Transformer(vocab_size=batches[0].vocab_size, d_model=16, n_layers=2, n_heads=2, n_ctx=32))


def test_self_patch_restores_everything(mamba, batches):
    _, clean, corr = batches
    res = patching_sweep(mamba, clean, corr, "resid_pre", "*", progress=False)
    # The whole residual stream of any layer carries everything: restored = 1 exactly.
    assert np.allclose(res.sel(metric="restored").values, 1.0, atol=1e-5)
    # (the logit differences' batch means nearly cancel on this random model, so that
    # ratio is only defined per example: metrics' min gap)
    per = patching_sweep(mamba, clean, corr, "resid_pre", "*", per_example=True, progress=False)
    assert per.attrs["restored_logit_diff_excluded"] == 0
    assert np.allclose(per.sel(metric="restored_logit_diff").values, 1.0, atol=1e-5)
    assert np.allclose(res.sel(metric="kl").values, 0.0, atol=1e-6)
    noised = patching_sweep(mamba, clean, corr, "resid_pre", "*", direction="noise", progress=False)
    assert np.allclose(noised.sel(metric="restored").values, 0.0, atol=1e-5)


def test_patching_nothing_restores_nothing(mamba, batches):
    _, clean, corr = batches
    # An empty unit, and positions before any corrupted token (bos, first key).
    res = patching_sweep(mamba, clean, corr, "resid_pre,ssm_state", [(), 0, 1], progress=False)
    assert np.array_equal(res.sel(metric="restored").values, np.zeros((2, 2, 3)))
    assert np.array_equal(res.sel(metric="logit_diff").values,
                          np.full((2, 2, 3), res.attrs["corrupted_logit_diff"]))


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_batched_sweep_equals_one_at_a_time_mamba(mamba, batches, direction):
    _, clean, corr = batches
    kw = dict(direction=direction)
    ref = patching_sweep_reference(mamba, clean, corr, "resid_pre,ssm_state", "all", **kw)
    fast = patching_sweep(mamba, clean, corr, "resid_pre,ssm_state", "all", chunk_rows=7, progress=False, **kw)
    assert fast.attrs["engine_forwards"] > 3  # really chunked
    assert fast.attrs["engine_rows"] < fast.attrs["engine_rows_total"]  # really skipped no-ops
    assert np.nanmax(np.abs(fast.sel(metric="restored").values)) > 0.05  # something to compare
    assert max_diff(fast, ref) < 1e-5
    # The shortcuts are exact: turning them all off changes nothing.
    plain = patching_sweep(mamba, clean, corr, "resid_pre,ssm_state", "all", causal=False, skip_noop=False,
                           resume=False, progress=False, **kw)
    assert plain.attrs["engine_rows"] == plain.attrs["engine_rows_total"]
    assert max_diff(plain, ref) < 1e-5
    # Per example: one more axis, whose mean is the batch result.
    per = patching_sweep(mamba, clean, corr, "resid_pre,ssm_state", "all", per_example=True, progress=False, **kw)
    assert per.dims[-1] == "batch" and per.sizes["batch"] == len(clean)
    raw = ["p_answer", "logit_diff", "kl"]
    assert np.allclose(per.sel(metric=raw).mean("batch"), fast.sel(metric=raw), atol=1e-6, equal_nan=True)


def test_batched_sweep_equals_one_at_a_time_transformer_roles(transformer, batches):
    _, clean, corr = batches
    units = ["queried_key", "queried_value", "query", "last", "key", "value[1]", "*", 3]
    hooks = "resid_pre,attn.hook_out,attn.hook_pattern,blocks.1.mlp.hook_post"
    ref = patching_sweep_reference(transformer, clean, corr, hooks, units, direction="noise")
    fast = patching_sweep(transformer, clean, corr, hooks, units, direction="noise", chunk_rows=10,
                          progress=False)
    assert fast.dims == ("metric", "hook", "layer", "role")
    assert list(fast["role"].values) == [str(u) for u in units]
    assert np.isnan(fast.sel(hook="mlp.hook_post", layer=0)).all()  # only layer 1 was asked for
    assert max_diff(fast, ref) < 1e-5


def test_unknown_and_ambiguous_hooks(mamba, batches):
    _, clean, corr = batches
    with pytest.raises(UnknownHookError, match="resid_pre"):
        patching_sweep(mamba, clean, corr, "resid_pree", progress=False)
    with pytest.raises(UnknownHookError, match="blocks.1.hook_resid_pre"):
        expand_hooks(mamba, "blocks.7.hook_resid_pre")
    with pytest.raises(ValueError, match="ambiguous"):
        expand_hooks(Transformer(vocab_size=30, d_model=8, n_layers=1, n_heads=2), "hook_out")
    sites = expand_hooks(mamba, "ssm_state,resid_pre", layers=[1])
    assert [s.name for s in sites] == ["blocks.1.mixer.hook_ssm_state", "blocks.1.hook_resid_pre"]


def test_hooks_detached_after_error(mamba, batches):
    _, clean, corr = batches
    spec = answer_spec(clean, corr)
    sites = expand_hooks(mamba, "resid_pre")
    units = resolve_positions("all", corr)

    def boom(site, base, source):
        if base.shape[0] and not torch.equal(base, source):
            raise RuntimeError("boom")
        return source

    with pytest.raises(RuntimeError, match="boom"):
        run_interventions(mamba, corr.tokens, clean.tokens, spec, sites, units, units,
                          lambda logits, ex: {"x": logits[:, 0, 0]}, combine=boom, skip_noop=False, progress=False)
    assert no_hooks_left(mamba)
    patching_sweep(mamba, clean, corr, "resid_pre", "all", progress=False)
    assert no_hooks_left(mamba)


def test_positions_and_labels(batches):
    _, clean, _ = batches
    u = resolve_positions(["queried_value", "key", "key[-1]", -1, (1, 2), "*"], clean)
    assert u.dim == "role" and u.labels == ["queried_value", "key", "key[-1]", "12", "1+2", "*"]
    assert torch.equal(u.index[0], clean.role("queried_value"))
    assert u.index[1].shape == (6, 4) and torch.equal(u.index[2], clean.role("key")[:, -1:])
    assert (u.index[3] == 12).all() and u.index[5].shape == (6, 13)
    assert resolve_positions("all", clean).labels == list(range(13))
    with pytest.raises(KeyError, match="no role"):
        resolve_positions("nope", clean)
    with pytest.raises(ValueError, match="out of range"):
        resolve_positions(13, clean)
    labels = position_labels(clean)
    assert labels[0] == "bos" and labels[1] == "key[0]" and labels[10] == "query" and labels[11] == "answer"


def test_metric_contrast_tokens(batches):
    task, clean, corr = batches
    corr = corrupt(clean, "value", 1)
    spec = answer_spec(clean, corr)
    assert torch.equal(spec.answer, clean.tokens_at("queried_value"))
    assert torch.equal(spec.alt, corr.tokens_at("queried_value"))  # value corruption: the new value
    spec_key = answer_spec(clean, corrupt(clean, "key", 2))
    assert (spec_key.alt == -1).all()  # key corruption: best other token


def test_bmojo_memory_write_patching(batches):
    bmojo = pytest.importorskip("ssmlens.models.bmojo")
    _, clean, corr = batches
    torch.manual_seed(0)
    model = sharpen(bmojo.BMojo(vocab_size=batches[0].vocab_size, d_model=16, n_layers=2, n_heads=2, window=3,
                                memory_size=4, threshold=0.5, d_state=4))
    hooks = "memory.hook_write,ssm_state,resid_pre"
    ref = patching_sweep_reference(model, clean, corr, hooks, "all")
    fast = patching_sweep(model, clean, corr, hooks, "all", chunk_rows=9, progress=False)
    assert max_diff(fast, ref) < 1e-5


def test_moe_mamba_patching(batches):
    """MoE capacity depends on the sequence length: the sweep must not change it."""
    moe = pytest.importorskip("ssmlens.models.moe_mamba")
    _, clean, corr = batches
    torch.manual_seed(0)
    model = sharpen(moe.MoEMamba(vocab_size=batches[0].vocab_size, d_model=16, n_layers=2, n_experts=4,
                                 capacity_factor=1.0, d_state=4))  # first-come capacity ceil(cf·(t+1)/E)
    hooks = "resid_pre,moe.hook_expert_out,ssm_state"
    ref = patching_sweep_reference(model, clean, corr, hooks, "all")
    fast = patching_sweep(model, clean, corr, hooks, "all", chunk_rows=11, progress=False)
    assert max_diff(fast, ref) < 1e-5


def test_study_and_cli_write_runs(tmp_path, mamba, batches):
    from ssmlens.interp.cli import main
    from ssmlens.interp.store import open_run
    from ssmlens.probes.study import run_patching_study

    ckpt = tmp_path / "ckpt"
    mamba.save(ckpt)
    url = run_patching_study(ckpt, tmp_path / "study", TASK, 4, ["resid_pre", "ssm_state"], progress=False)
    run = open_run(url)
    assert run.config["checkpoint"] == str(ckpt)
    res = run.result("patching/resid_pre")
    assert res.dims == ("metric", "layer", "pos") and res.shape[1:] == (2, 13)
    assert run.result("attribution/mixer.ssm_state").dims == ("metric", "layer", "pos")
    assert run.result("patching_roles/resid_pre").sizes["role"] == 4
    assert "blocks.0.mixer.hook_ssm_state" in run.cache and len(run.table("patching")) == 4 * 13

    args = [str(ckpt), "--task", "ar", *sum((["--task-arg", f"{k}={v}"] for k, v in TASK.items()), []),
            "--n", "4", "--no-progress"]
    assert main(["patch", *args, "--positions", "queried_value,query", "--out", str(tmp_path / "p")]) == 0
    assert open_run(tmp_path / "p").result("patching/mixer.ssm_state").dims == ("metric", "layer", "role")
    assert main(["cache", *args, "--hooks", "resid_pre", "--out", str(tmp_path / "c")]) == 0
    assert open_run(tmp_path / "c").cache["blocks.1.hook_resid_pre"].shape == (4, 13, 16)
    assert main(["patch", *args, "--hooks", "resid_pree", "--out", str(tmp_path / "q")]) == 2


def test_figures(mamba, batches):
    from ssmlens.probes.figures import compare_scatter, interchange_bars, patching_heatmap
    from ssmlens.probes.attribution import attribution_patching
    from ssmlens.probes.interchange import interchange_sweep

    _, clean, corr = batches
    res = patching_sweep(mamba, clean, corr, "resid_pre,ssm_state", "all", progress=False)
    fig = patching_heatmap(res)
    assert len(fig.data) == 2 and fig.data[0].z.shape == (2, 13)
    assert fig.data[0].x[10] == "10 query" and list(fig.data[0].y) == ["L0", "L1"]
    one = res.sel(hook="hook_resid_pre", drop=True)  # as read back from a run store
    assert len(patching_heatmap(one, "logit_diff").data) == 1
    with pytest.raises(ValueError, match="metrics"):
        patching_heatmap(res, "nope")
    attr = attribution_patching(mamba, clean, corr, "resid_pre,ssm_state", "all", metric="p_answer")
    assert len(compare_scatter(res, attr, "restored").data[0].x) == 2 * 2 * 13
    ic = interchange_sweep(mamba, corr, clean, "resid_pre", ["queried_value", "query"], progress=False)
    bars = interchange_bars(ic)
    assert len(bars.data) == 2 and list(bars.data[0].x) == ["queried_value", "query"]


# ---- issue 12 item 7: restored fractions with a tiny clean–corrupted gap ----------------------


def test_item7_restored_fraction_is_nan_where_the_clean_corrupted_gap_is_tiny():
    from ssmlens.probes.metrics import summarize

    def rows(ld, p):
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return {"logit_diff": t(ld), "p_answer": t(p), "logp_answer": t(p), "kl": t(p), "accuracy": t(p)}

    # Three examples: the corruption moves the first two by 1 and 0.5, the third by 0.001.
    clean, corrupted = rows([1.0, 0.5, 0.001], [0.9, 0.5, 0.3]), rows([0.0, 0.0, 0.0], [0.1, 0.1, 0.2999])
    patched = rows([[0.5, 0.25, 0.02]], [[0.5, 0.3, 0.31]])
    per = summarize(patched, clean, corrupted, per_example=True)
    # min gap = 0.1 · mean |gap|: the third example's ratio (0.02 / 0.001 = 20) is excluded
    assert per["restored_logit_diff"][0, :2].tolist() == [0.5, 0.5]
    assert torch.isnan(per["restored_logit_diff"][0, 2])
    assert torch.isnan(per["restored"][0, 2])  # 0.01 / 0.0001 = 100 before
    # Batch means whose per-example effects cancel: no ratio of the means either.
    cancel = summarize(rows([[0.1]], [[0.5]]), rows([2.0, -2.0], [0.6, 0.4]), rows([0.0, 0.06], [0.4, 0.6]))
    assert torch.isnan(cancel["restored_logit_diff"]).all() and torch.isnan(cancel["restored"]).all()


def test_item7_random_model_ratios_exclude_tiny_gaps_and_count_them():
    from ssmlens.probes.metrics import GAP_FRACTION

    task = make_task("ar", **TASK)
    clean = task.sample(16, 3)
    corr = corrupt(clean, "value", 4)
    torch.manual_seed(0)
    model = Mamba(vocab_size=task.vocab_size, d_model=16, n_layers=2, d_state=4).eval()  # random, not sharpened
    per = patching_sweep(model, clean, corr, "resid_pre", "all", per_example=True, progress=False)
    batch = patching_sweep(model, clean, corr, "resid_pre", "all", progress=False)
    for ratio, base in (("restored", "p_answer"), ("restored_logit_diff", "logit_diff")):
        gaps = np.abs(_per_example_gaps(model, clean, corr, base))
        threshold = max(GAP_FRACTION * gaps.mean(), 1e-6)
        values = per.sel(metric=ratio).values  # hook, layer, pos, batch
        tiny = gaps < threshold
        assert tiny.any() or ratio == "restored_logit_diff"
        assert np.isnan(values[..., tiny]).all(), f"{ratio}: a ratio was formed over a tiny gap"
        assert per.attrs[f"{ratio}_excluded"] == int(tiny.sum())
        assert per.attrs[f"{ratio}_min_gap"] == pytest.approx(threshold)
        mean_gap = abs(batch.attrs[f"clean_{base}"] - batch.attrs[f"corrupted_{base}"])
        if mean_gap < threshold:
            assert np.isnan(batch.sel(metric=ratio).values).all()
            assert batch.attrs[f"{ratio}_excluded"] == len(clean)
        else:
            assert batch.attrs[f"{ratio}_excluded"] == 0
        assert np.isfinite(values[..., ~tiny]).any()  # the others keep their ratios


def _per_example_gaps(model, clean, corr, metric):
    from ssmlens.probes.metrics import answer_spec, query_logits, row_metrics

    spec = answer_spec(clean, corr)
    with torch.no_grad():
        c, k = (query_logits(model(b.tokens), spec.query) for b in (clean, corr))
    ref = c.double().log_softmax(-1)
    rows = [row_metrics(x, spec.answer, spec.alt, ref)[metric] for x in (c, k)]
    return (rows[0] - rows[1]).numpy()


def test_item7_figures_say_how_many_examples_were_excluded(mamba, batches):
    from ssmlens.probes.figures import patching_heatmap

    _, clean, corr = batches
    per = patching_sweep(mamba, clean, corr, "resid_pre", "all", per_example=True, progress=False)
    per.attrs.update({"restored_excluded": 2, "restored_min_gap": 0.0123})
    title = patching_heatmap(per, "restored").layout.title.text
    assert "2 of 6 examples excluded" in title and "0.0123" in title
    batch = patching_sweep(mamba, clean, corr, "resid_pre", "all", progress=False)
    batch.attrs.update({"restored_logit_diff_excluded": 6, "restored_logit_diff_min_gap": 0.5})
    assert "undefined" in patching_heatmap(batch, "restored_logit_diff").layout.title.text
