"""Ablations change exactly what they should and never stay attached; ablation studies
write a tidy table, skip finished cells on re-run, and load from YAML with clear errors."""

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ssmlens.interp.cli import main
from ssmlens.interp.tasks import make_task
from ssmlens.models import Mamba, Transformer
from ssmlens.models.bmojo import BMojo
from ssmlens.models.moe_mamba import MoEMamba
from ssmlens.probes.ablation import (
    Ablation, AblationError, HookAblation, NotApplicable, ablated, parse_ablation, run_ablated,
)
from ssmlens.probes.ablation_figures import ablation_bar_chart
from ssmlens.probes.ablation_study import (
    COLUMNS, AblationSkipped, AblationStudy, ModelSpec, StudyError, load_study, run_study, study_from_dict,
)

TASK = make_task("ar", n_keys=8, n_values=8, n_pairs=4)
V = TASK.vocab_size
BATCH = TASK.sample(8, seed=0)


def _mamba():
    torch.manual_seed(0)
    return Mamba(vocab_size=V, d_model=16, n_layers=2, d_state=4).eval()


def _transformer():
    torch.manual_seed(0)
    return Transformer(vocab_size=V, d_model=16, n_layers=2, n_heads=4).eval()


def _bmojo(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, d_model=16, n_layers=2, n_heads=2, d_state=4, window=3, memory_size=4, threshold=0.5)
    return BMojo(**{**cfg, **kw}).eval()


def _seen(model, ablation, names, batch=BATCH):
    """Values at ``names`` as the model uses them under ``ablation`` (hooks after it)."""
    bound = parse_ablation(ablation).bind(model, batch)
    got = {}
    grab = [(n, lambda x, hook: got.__setitem__(hook.name, x.detach().clone())) for n in names]
    with torch.no_grad(), model.hooks(fwd_hooks=bound.fwd_hooks() + grab):
        model(batch.tokens)
    return got


def _clean(model, names, tokens=BATCH.tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens, names_filter=list(names))[1]


def _no_hooks_left(model):
    return all(not hp._forward_hooks for hp in model.hook_dict.values())


# ---- value ablations --------------------------------------------------------------------------


def test_zero_ablation_zeroes_only_the_chosen_positions():
    model, h = _mamba(), "blocks.0.hook_resid_post"
    got = _seen(model, f"zero:{h}@query,3", [h])[h]
    clean = _clean(model, [h])[h]
    q = BATCH.role("query")[:, 0]
    hit = torch.zeros_like(got[..., 0], dtype=torch.bool)
    hit[torch.arange(len(q)), q] = True
    hit[:, 3] = True
    assert got[hit].abs().max() == 0
    assert torch.equal(got[~hit], clean[~hit])
    assert _no_hooks_left(model)


def test_mean_ablation_gives_the_batch_mean():
    model, h = _mamba(), "blocks.1.mixer.hook_conv"
    got = _seen(model, f"mean:{h}", [h])[h]
    mean = _clean(model, [h])[h].mean(0, keepdim=True)
    assert torch.allclose(got, mean.expand_as(got), atol=1e-6)


def test_resample_ablation_takes_other_examples_values():
    model, h = _mamba(), "blocks.0.mixer.hook_ssm_state"  # a state edit: propagates through the scan
    got = _seen(model, HookAblation("resample", h, seed=3), [h])[h]
    clean = _clean(model, [h])[h]
    src = [int(torch.nonzero((clean - got[i]).flatten(1).abs().amax(1) < 1e-5).flatten()[0]) for i in range(len(got))]
    assert all(s != i for i, s in enumerate(src)), src  # every row from another example
    assert sorted(src) == list(range(len(got)))  # a permutation of the batch
    assert not torch.allclose(run_ablated(model, BATCH, HookAblation("resample", h, seed=3)), model(BATCH.tokens))


def test_hooks_never_stay_attached_even_on_error():
    model = _mamba()
    with pytest.raises(RuntimeError, match="boom"):
        with ablated(model, "no_conv+freeze_delta", BATCH):
            raise RuntimeError("boom")
    assert _no_hooks_left(model)
    run_ablated(model, BATCH, "mean:blocks.0.hook_resid_pre", batch_size=3)
    assert _no_hooks_left(model)


# ---- structural ablations -----------------------------------------------------------------------


def test_no_conv_makes_the_conv_output_depend_on_the_current_position_only():
    model = _mamba()
    names = ["blocks.0.mixer.hook_conv", "blocks.0.mixer.hook_x"]
    other = BATCH.tokens.clone()
    other[:, 4] = (other[:, 4] + 1) % V  # change one token
    other_batch = type(BATCH)(other, BATCH.loss_mask, BATCH.roles, V, "ar")
    a, b = _seen(model, "no_conv", names), _seen(model, "no_conv", names, other_batch)
    changed = (a[names[0]] - b[names[0]]).abs().amax((0, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [4]  # only the changed position moves
    clean_a, clean_b = _clean(model, names[:1]), _clean(model, names[:1], other)
    assert ((clean_a[names[0]] - clean_b[names[0]]).abs().amax((0, 2)) > 0).nonzero().flatten().tolist() == [4, 5, 6, 7]
    conv = model.blocks[0].mixer.conv1d  # the documented definition: kernel reduced to its last tap
    want = F.silu(a[names[1]] * conv.weight[:, 0, -1] + conv.bias)
    assert torch.allclose(a[names[0]], want, atol=1e-6)
    u = _seen(model, "no_conv:identity@1", ["blocks.1.mixer.hook_conv", "blocks.1.mixer.hook_x"])
    assert torch.allclose(u["blocks.1.mixer.hook_conv"], F.silu(u["blocks.1.mixer.hook_x"]), atol=1e-6)


def test_clamp_and_freeze_delta():
    model, h0, h1 = _mamba(), "blocks.0.mixer.hook_delta", "blocks.1.mixer.hook_delta"
    got = _seen(model, "clamp_delta:0.05@1", [h0, h1])
    assert torch.all(got[h1] == 0.05)
    assert torch.allclose(got[h0], _clean(model, [h0])[h0])  # layer 0 untouched
    bias = F.softplus(model.blocks[0].mixer.dt_proj.bias)
    assert torch.allclose(_seen(model, "clamp_delta", [h0])[h0], bias.expand(8, BATCH.seq_len, -1))
    frozen = _seen(model, "freeze_delta@0", [h0])[h0]
    assert torch.allclose(frozen, _clean(model, [h0])[h0].mean(1, keepdim=True).expand_as(frozen), atol=1e-6)


def test_drop_head_changes_only_that_heads_z():
    model, z = _transformer(), "blocks.1.attn.hook_z"
    got, clean = _seen(model, "drop_head:1.2", [z])[z], _clean(model, [z])[z]
    assert got[:, :, 2].abs().max() == 0
    keep = [0, 1, 3]
    assert torch.equal(got[:, :, keep], clean[:, :, keep])
    z0 = "blocks.0.attn.hook_z"
    assert torch.equal(_seen(model, "drop_head:1.2", [z0])[z0], _clean(model, [z0])[z0])


def test_no_memory_equals_a_bmojo_without_memory():
    model = _bmojo()
    w = _seen(model, "no_memory", ["blocks.0.memory.hook_write", "blocks.1.memory.hook_write"])
    assert all(v.abs().max() == 0 for v in w.values())
    assert _clean(model, ["blocks.0.memory.hook_write"])["blocks.0.memory.hook_write"].sum() > 0  # it did write
    memoryless = _bmojo(memory_size=0)
    memoryless.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(run_ablated(model, BATCH, "no_memory"), memoryless(BATCH.tokens), atol=1e-5)
        assert not torch.allclose(model(BATCH.tokens), memoryless(BATCH.tokens), atol=1e-5)


def test_no_fading_removes_the_fading_column_from_the_softmax():
    model, p = _bmojo(), "blocks.0.attn.hook_pattern"
    got, clean = _seen(model, "no_fading@0", [p])[p], _clean(model, [p])[p]
    assert got[..., -1].abs().max() == 0 and clean[..., -1].min() > 0
    assert torch.allclose(got.sum(-1), torch.ones_like(got[..., 0]), atol=1e-5)
    # the other keys keep their relative weights: softmax over the remaining keys
    assert torch.allclose(got[..., :-1] * (1 - clean[..., -1:]), clean[..., :-1], atol=1e-6)
    p1 = "blocks.1.attn.hook_pattern"
    assert _seen(model, "no_fading@0", [p1])[p1][..., -1].min() > 0  # layer 1 keeps its fading token


def test_drop_expert_sends_its_tokens_to_the_residual():
    torch.manual_seed(0)
    model = MoEMamba(vocab_size=V, d_model=16, n_layers=1, n_experts=4, d_state=4, capacity_factor=4.0).eval()
    names = ["blocks.0.moe.hook_expert", "blocks.0.moe.hook_expert_out"]
    clean = _clean(model, names)
    e = int(clean[names[0]].flatten().mode().values)
    got = _seen(model, f"drop_expert:0.{e}", names)
    routed = clean[names[0]] == e
    assert torch.equal(got[names[0]][routed], torch.full_like(got[names[0]][routed], -1))
    assert got[names[1]][routed].abs().max() == 0
    assert torch.equal(got[names[1]][~routed], clean[names[1]][~routed])


def test_inapplicable_and_malformed_ablations_are_named():
    with pytest.raises(NotApplicable, match="no memory.hook_write"):
        run_ablated(_mamba(), BATCH, "no_memory")
    with pytest.raises(NotApplicable, match="no attn.hook_z"):
        run_ablated(_mamba(), BATCH, "drop_head:0.1")
    with pytest.raises(AblationError, match="heads 0..3"):
        run_ablated(_transformer(), BATCH, "drop_head:0.9")
    with pytest.raises(AblationError, match="did you mean no_conv"):
        parse_ablation("no_conf")
    with pytest.raises(AblationError, match="LAYER.INDEX"):
        parse_ablation("drop_head:3")
    with pytest.raises(AblationError, match="unknown field 'layer'"):
        parse_ablation({"kind": "no_conv", "layer": 0})
    with pytest.raises(KeyError, match="unknown hook name"):
        run_ablated(_mamba(), BATCH, "zero:blocks.0.hook_resid_prr")
    assert parse_ablation("clamp_delta:0.01@0,1+drop_head:1.2").label == "clamp_delta:0.01@0,1+drop_head:1.2"


# ---- studies ------------------------------------------------------------------------------------


class Boom(Ablation):
    name = "boom"
    armed = True

    def fwd_hooks(self, model):
        if Boom.armed:
            raise RuntimeError("crash mid-study")
        return []


def _study(models, ablations):
    return AblationStudy(
        models=[ModelSpec(n, instance=m) for n, m in models.items()],
        tasks=[{"name": "ar", "config": {"n_keys": 8, "n_values": 8, "n_pairs": 4}, "n": 16, "seed": 1}],
        ablations=ablations, batch_size=8)


def _counting(model):
    model.calls = 0

    def count(module, args):
        module.calls += 1

    model.register_forward_pre_hook(count)
    return model


def test_study_writes_a_tidy_table_and_skips_finished_cells(tmp_path):
    from ssmlens.interp.store import open_run

    models = {"mamba": _counting(_mamba()), "transformer": _counting(_transformer())}
    out = tmp_path / "study"
    with pytest.warns(AblationSkipped):
        table = run_study(_study(models, ["no_conv", "drop_head:0.1"]), out, progress=False)
    assert list(table.columns) == COLUMNS
    # none, no_conv for mamba; none, drop_head for the transformer; 2 metrics each; the
    # other two cells (no_conv on the transformer, drop_head on mamba) are n/a rows
    evaluated = table[table["status"] == "ok"]
    assert len(evaluated) == 8 and set(table["metric"]) == {"acc", "loss"} and (evaluated["n"] == 16).all()
    assert len(table) == 12 and table[table["status"] == "n/a"]["value"].isna().all()
    assert table.attrs["skipped"] and {s["ablation"] for s in table.attrs["skipped"]} == {"no_conv", "drop_head:0.1"}
    calls = {k: m.calls for k, m in models.items()}
    assert calls == {"mamba": 4, "transformer": 4}  # 2 cells × 2 batches of 8
    run = open_run(out)
    pd.testing.assert_frame_equal(run.table("ablation"), table, check_like=False)
    acc = run.result("ablation/acc")
    assert acc.dims == ("model", "task", "ablation") and acc.shape == (2, 1, 3)

    again = run_study(_study(models, ["no_conv", "drop_head:0.1"]), out, progress=False)
    assert {k: m.calls for k, m in models.items()} == calls  # nothing re-evaluated
    pd.testing.assert_frame_equal(again, table)

    more = run_study(_study(models, ["no_conv", "drop_head:0.1", "zero:blocks.0.hook_resid_pre"]), out, progress=False)
    assert {k: m.calls - calls[k] for k, m in models.items()} == {"mamba": 2, "transformer": 2}  # new cells only
    assert len(more) == 16 and set(more["ablation"]) == {"none", "no_conv", "drop_head:0.1", "zero:blocks.0.hook_resid_pre"}
    fig = ablation_bar_chart(more, "acc", relative=True)
    assert len(fig.data) == 2 and "none" not in list(fig.data[0].x)


def test_a_failing_cell_is_listed_and_evaluated_again_on_rerun(tmp_path):
    from ssmlens.interp.store import open_run

    model = _counting(_mamba())
    out = tmp_path / "crash"
    Boom.armed = True
    table = run_study(_study({"mamba": model}, ["no_conv", Boom()]), out, progress=False)  # the study goes on
    assert [(f["ablation"], "crash mid-study" in f["error"]) for f in table.attrs["failed"]] == [("boom", True)]
    assert table[table["ablation"] == "boom"]["value"].isna().all() and len(table) == 6
    assert model.calls == 4  # none and no_conv; boom failed (twice: one retry) before any forward
    assert open_run(out).metrics["n_failed"] == 1
    Boom.armed = False
    table = run_study(_study({"mamba": model}, ["no_conv", Boom()]), out, progress=False)
    assert model.calls == 6 and list(table["ablation"].unique()) == ["none", "no_conv", "boom"]
    assert not table["value"].isna().any() and table.attrs["failed"] == []
    assert open_run(out).is_complete


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ablation_study.yaml"


def test_yaml_study_loads_and_bad_fields_are_named(tmp_path):
    study = load_study(EXAMPLE)
    assert {m.name for m in study.models} == {"mamba", "transformer"} and study.ablations[0].label == "none"
    base = EXAMPLE.read_text()
    cases = {
        "chekpoint": (base.replace("    model: mamba ", "    chekpoint: x\n    model: mamba "), r"study\.models\[0\]\.chekpoint: unknown field"),
        "n": (base.replace("n: 128", "n: many"), r"study\.tasks\[0\]\.n: expected an integer"),
        "ablation": (base.replace("- no_conv   ", "- no_convv   "), r"study\.ablations\[0\]: unknown ablation 'no_convv'"),
        "metric": (base.replace("[acc, loss]", "[acc, f1]"), r"study\.metrics\[1\]: unknown metric 'f1'"),
        "top": (base + "\nbatchsize: 3\n", r"study\.batchsize: unknown field"),
        "task": (base.replace("task: ar", "task: arr"), r"study\.tasks\[0\]\.task: unknown task 'arr'"),
        "task config": (base.replace("n_pairs: 8", "n_pair: 8"), r"study\.tasks\[0\]\.config: .*n_pair"),
    }
    for what, (text, pattern) in cases.items():
        path = tmp_path / f"{what}.yaml"
        path.write_text(text)
        with pytest.raises(StudyError, match=pattern):
            load_study(path)
    with pytest.raises(StudyError, match="missing field 'tasks'"):
        study_from_dict({"models": {"m": "ckpt"}, "ablations": []})


def test_cli_ablate_and_probe(tmp_path, capsys):
    from ssmlens.interp.store import open_run

    study = tmp_path / "s.yaml"
    ckpt = tmp_path / "ckpt"
    _mamba().save(ckpt)
    study.write_text(f"""
models: {{trained: {ckpt}}}
tasks: [{{name: ar, config: {{n_keys: 8, n_values: 8, n_pairs: 4}}, n: 8}}]
ablations: [no_conv, no_memory]
""")
    assert main(["ablate", str(study), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 cell" in out and f"wrote ablation run store: {tmp_path / 'a'}" in out
    table = open_run(tmp_path / "a").table("ablation")
    assert set(table[table["status"] == "ok"]["ablation"]) == {"none", "no_conv"}
    assert set(table[table["status"] == "n/a"]["ablation"]) == {"no_memory"}

    assert main(["probe", str(ckpt), "--task", "ar", "--task-arg", "n_keys=8", "--task-arg", "n_values=8",
                 "--task-arg", "n_pairs=4", "--n", "64", "--hooks", "resid_pre,conv", "--positions",
                 "queried_value,query", "--out", str(tmp_path / "p")]) == 0
    assert f"wrote probe run store: {tmp_path / 'p'}" in capsys.readouterr().out
    run = open_run(tmp_path / "p")
    da = run.result("probe/accuracy")
    assert da.dims == ("hook", "layer", "position", "metric") and da.shape[:3] == (2, 2, 2)
    assert set(run.table("probe").columns) == {"hook", "layer", "position", "metric", "value", "control_informative"}
    assert main(["ablate", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "b")]) == 2


# ---- issue 12 item 9: a value ablation of a hook only some models of the grid have --------------


def test_item9_hook_only_some_models_have_marks_cells_not_applicable_and_the_study_completes(tmp_path):
    from ssmlens.interp.store import open_run

    na_label = "zero:blocks.0.mixer.hook_ssm_state@query"
    models = {"mamba": _counting(_mamba()), "transformer": _counting(_transformer())}
    out = tmp_path / "na"
    with pytest.warns(AblationSkipped, match="transformer"):
        table = run_study(_study(models, [na_label]), out, progress=False)
    run = open_run(out)
    assert run.is_complete
    na = table[(table["model"] == "transformer") & (table["ablation"] == na_label)]
    assert len(na) == 2 and (na["status"] == "n/a").all() and na["value"].isna().all() and (na["n"] == 0).all()
    ok = table[table["status"] == "ok"]
    assert len(ok) == 6 and ok["value"].notna().all()  # none × 2 models, the ablation on mamba; 2 metrics
    pd.testing.assert_frame_equal(run.table("ablation"), table)
    acc = run.result("ablation/acc")
    assert bool(acc.sel(model="transformer", ablation=na_label).isnull().all())
    assert bool(acc.sel(model="mamba", ablation=na_label).notnull().all())
    # the figure says n/a where the cell does not apply
    fig = ablation_bar_chart(table, "acc")
    tf = next(t for t in fig.data if t.name == "transformer")
    assert list(tf.text)[list(tf.x).index(na_label)] == "n/a"
    # re-running evaluates nothing and keeps the n/a cells
    calls = {k: m.calls for k, m in models.items()}
    again = run_study(_study(models, [na_label]), out, progress=False)
    assert {k: m.calls for k, m in models.items()} == calls
    pd.testing.assert_frame_equal(again, table)
    # on its own: NotApplicable, naming the model's lack; a misspelt hook is still an error with suggestions
    with pytest.raises(NotApplicable, match="no blocks.0.mixer.hook_ssm_state"):
        run_ablated(_transformer(), BATCH, na_label)
    with pytest.raises(NotApplicable, match="blocks.5.hook_resid_pre"):  # a layer this model lacks
        run_ablated(_mamba(), BATCH, "mean:blocks.5.hook_resid_pre")
    with pytest.raises(KeyError, match="did you mean|Did you mean"):
        run_ablated(_mamba(), BATCH, "zero:blocks.0.mixer.hook_ssm_stat")


def test_item9_a_study_written_before_the_status_column_resumes_with_its_skipped_cells_as_na(tmp_path):
    from ssmlens.interp.store import create_run

    models = {"mamba": _counting(_mamba())}
    study = _study(models, ["no_memory"])
    old = pd.DataFrame([{"model": "mamba", "task": "ar", "ablation": "none", "metric": m, "value": 0.5, "n": 16}
                        for m in ("acc", "loss")])
    with create_run(tmp_path / "old", study.to_config()) as w:  # the layout of an older study run
        w.write_table("ablation", old)
        w.set_metrics(skipped=[{"model": "mamba", "task": "ar", "ablation": "no_memory", "reason": "no memory"}])
    table = run_study(study, tmp_path / "old", progress=False)
    assert models["mamba"].calls == 0  # nothing left to evaluate
    assert list(table["status"]) == ["ok", "ok", "n/a", "n/a"] and table["value"].isna().sum() == 2
