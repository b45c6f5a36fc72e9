"""Trainer: learning, resume, checkpoints, config, evaluation, schedule (issue 5)."""

from __future__ import annotations

import json

import pytest
import torch

from ssmlens.interp.training import (
    ConfigError,
    RunDir,
    TaskData,
    TrainConfig,
    Trainer,
    answer_hits,
    build_task,
    evaluate,
    load_config,
    lr_at,
)
from ssmlens.models import Transformer, load_model
from ssmlens.models import registry

TINY_AR = {"n_keys": 8, "n_values": 8, "n_pairs": 2}


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = dict(model="transformer", task="ar", task_config=TINY_AR, d_model=32, n_layers=1,
                model_config={"n_heads": 2}, steps=20, batch_size=16, lr=3e-3, warmup_steps=2,
                eval_every=5, eval_size=64, out_dir=str(tmp_path), progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- learning -----------------------------------------------------------------------
@pytest.mark.parametrize("model", ["transformer", "mamba"])
def test_loss_decreases_on_tiny_problem(tmp_path, model):
    mc = {"n_heads": 2} if model == "transformer" else {"d_state": 8}
    trainer = Trainer(tiny_config(tmp_path, model=model, model_config=mc, steps=40, eval_every=40))
    before = trainer.evaluate()["loss"]
    result = trainer.fit()
    assert result.step == 40 and result.finished and result.stop_reason == "steps"
    assert result.eval["loss"] < before - 0.3, (before, result.eval)
    assert result.metrics[-1]["train_loss"] < result.metrics[-1]["eval_loss"] + 1.0


# -- resume -----------------------------------------------------------------------------
def test_resume_continues_same_step_and_data(tmp_path):
    straight = Trainer(tiny_config(tmp_path / "a")).fit()
    straight_weights = params(load_model(straight.checkpoint))

    cfg = tiny_config(tmp_path / "b")
    first = Trainer(cfg)
    part = first.fit(stop_after=10)
    assert part.step == 10 and not part.finished and part.stop_reason == "stop_after"
    assert RunDir(cfg.run_dir).last_checkpoint().name == "step_000010"
    seen_batches = []
    second = Trainer(cfg)
    assert second.resumed_from is not None and second.step == 10
    original_batch = second.data.batch
    second.data.batch = lambda step: seen_batches.append(step) or original_batch(step)
    resumed = second.fit()
    assert seen_batches == list(range(10, 20))
    assert resumed.step == 20 and resumed.finished

    for name, value in params(load_model(resumed.checkpoint)).items():
        assert torch.equal(value, straight_weights[name]), name
    steps_a = [r["step"] for r in straight.metrics]
    steps_b = [r["step"] for r in resumed.metrics]
    assert steps_a == steps_b == [5, 10, 15, 20]
    assert [r["eval_acc"] for r in straight.metrics] == [r["eval_acc"] for r in resumed.metrics]


def test_sigint_saves_a_checkpoint_and_resuming_matches_a_straight_run(tmp_path):
    """Issue 12.13: Ctrl+C (SIGINT) during fit ends it after the current step with a
    checkpoint there (not the last eval's); the signal handlers are restored; a resumed
    run ends with the weights of an uninterrupted one."""
    import os
    import signal

    straight = Trainer(tiny_config(tmp_path / "a")).fit()
    cfg = tiny_config(tmp_path / "b")
    first = Trainer(cfg)
    step = first.train_step

    def step_then_ctrl_c(i):
        out = step(i)
        if i == 6:  # the 7th step: between the evals at 5 and 10
            os.kill(os.getpid(), signal.SIGINT)
        return out

    first.train_step = step_then_ctrl_c
    part = first.fit()
    assert part.stop_reason == "signal" and part.signal == "SIGINT" and part.step == 7 and not part.finished
    assert part.checkpoint.name == "step_000007" and RunDir.load_state(part.checkpoint)["step"] == 7
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [r["step"] for r in part.metrics] == [5, 7]  # the eval, then the loss of steps 6-7
    resumed = Trainer(cfg)
    assert resumed.step == 7
    done = resumed.fit()
    assert done.finished and done.step == 20
    want = params(load_model(straight.checkpoint))
    for name, value in params(load_model(done.checkpoint)).items():
        assert torch.equal(value, want[name]), name


def test_metrics_have_the_training_loss_at_every_log_interval(tmp_path):
    result = Trainer(tiny_config(tmp_path, steps=12, eval_every=5, log_every=2)).fit()
    records = result.metrics
    assert [r["step"] for r in records] == [2, 4, 5, 6, 8, 10, 12]
    evals = {5, 10, 12}
    for r in records:
        assert ("eval_acc" in r) == (r["step"] in evals)
        assert r["train_loss"] > 0 and 0 <= r["train_acc"] <= 1 and r["lr"] > 0 and r["tokens"] > 0
    # a log record covers the steps since the previous record: step 6 alone after the eval at 5
    per_step = records[0]["tokens"] // 2
    assert records[3]["tokens"] - records[2]["tokens"] == per_step and records[1]["tokens"] == 4 * per_step


def test_batches_depend_only_on_seed_and_step():
    task = build_task("ar", TINY_AR)
    data = TaskData(task, batch_size=8, seed=3, eval_size=32)
    again = TaskData(task, batch_size=8, seed=3, eval_size=32)
    assert torch.equal(data.batch(7).tokens, again.batch(7).tokens)
    assert not torch.equal(data.batch(7).tokens, data.batch(8).tokens)
    assert not torch.equal(data.batch(7).tokens, TaskData(task, 8, 4, 32).batch(7).tokens)
    assert not torch.equal(data.eval_set().tokens[:8], data.batch(0).tokens)


def test_finished_run_is_not_retrained(tmp_path):
    cfg = tiny_config(tmp_path, steps=10)
    first = Trainer(cfg).fit()
    weights = first.checkpoint / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = Trainer(cfg).fit()
    assert again.step == 10 and again.finished
    assert again.checkpoint == first.checkpoint and weights.stat().st_mtime_ns == stamp
    assert again.eval["acc"] == first.eval["acc"]
    # a longer run of the same experiment continues from the last checkpoint
    longer = Trainer(cfg.replace(steps=15)).fit()
    assert longer.step == 15 and [r["step"] for r in longer.metrics] == [5, 10, 15]


def test_resume_refuses_other_experiment_and_no_resume(tmp_path):
    cfg = tiny_config(tmp_path, steps=5)
    Trainer(cfg).fit()
    with pytest.raises(ValueError, match="lr"):
        Trainer(cfg.replace(lr=1e-2))
    with pytest.raises(FileExistsError, match="overwrite"):
        Trainer(cfg.replace(resume=False))
    fresh = Trainer(cfg.replace(lr=1e-2, overwrite=True))
    assert fresh.step == 0 and fresh.resumed_from is None


# -- checkpoints ------------------------------------------------------------------------
def test_checkpoint_reloads_to_identical_logits(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=10))
    result = trainer.fit()
    tokens = trainer.data.eval_set().tokens[:8]
    with torch.no_grad():
        expected = trainer.model(tokens)
        for path in (result.checkpoint, RunDir(result.run_dir).last_checkpoint(), result.run_dir / "best"):
            model = load_model(path)
            assert isinstance(model, Transformer)
            assert torch.equal(model(tokens), expected), path
    state = RunDir.load_state(RunDir(result.run_dir).last_checkpoint())
    assert state["step"] == 10 and state["optimizer"]["state"]


def test_run_dir_layout_and_metrics(tmp_path):
    result = Trainer(tiny_config(tmp_path, keep_checkpoints=2)).fit()
    root = result.run_dir
    assert root == tmp_path / "transformer-ar"
    assert (root / "train_config.json").is_file() and (root / "summary.json").is_file()
    kept = sorted(p.name for p in (root / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step_000015", "step_000020"]
    assert (root / "checkpoints" / "last.txt").read_text().strip() == "step_000020"
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    for key in ("train_loss", "train_acc", "eval_loss", "eval_acc", "eval_seq_acc", "lr", "tokens_per_s"):
        assert key in records[-1]
    assert json.loads((root / "final" / "eval.json").read_text())["acc"] == result.eval["acc"]
    best = json.loads((root / "best" / "eval.json").read_text())
    assert best["acc"] == max(r["eval_acc"] for r in records if "eval_acc" in r)


def test_stop_at_accuracy(tmp_path):
    cfg = tiny_config(tmp_path, steps=50, stop_at_acc=0.01)
    result = Trainer(cfg).fit()
    assert result.stop_reason == "target" and result.step == 5 and result.finished


# -- auxiliary losses -----------------------------------------------------------------
class AuxTransformer(Transformer):
    """A Transformer reporting an embedding-norm penalty as an auxiliary loss."""

    model_type = "aux_transformer"

    def forward(self, tokens, return_type="logits", loss_mask=None):
        self._aux = {"embed_l2": self.embed.weight.pow(2).mean() * 100.0}
        return super().forward(tokens, return_type=return_type, loss_mask=loss_mask)

    def auxiliary_losses(self):
        return self._aux


def test_auxiliary_losses_are_trained_and_logged(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "aux_transformer", f"{__name__}:AuxTransformer")
    with_aux = Trainer(tiny_config(tmp_path, model="aux_transformer", steps=10, name="aux")).fit()
    without = Trainer(tiny_config(tmp_path, model="aux_transformer", steps=10, name="noaux",
                                  aux_loss_weight=0.0)).fit()
    assert "aux/embed_l2" in with_aux.metrics[-1]
    norm = lambda r: load_model(r.checkpoint).embed.weight.pow(2).mean().item()  # noqa: E731
    assert norm(with_aux) < norm(without)


# -- evaluation, schedule, config ----------------------------------------------------
def test_answer_accuracy_counts_supervised_positions_only():
    task = build_task("ar", TINY_AR)
    batch = task.sample(6, seed=0)
    logits = torch.zeros(6, batch.seq_len, batch.vocab_size)
    answers = batch.answer_tokens()[:, 0]
    q = batch.role("query")[:, 0]
    logits[torch.arange(6), q, answers] = 5.0  # right at the query ...
    logits[:3, 0, 0] = 9.0  # ... and noise at unsupervised positions changes nothing
    logits[4, q[4], answers[4]] = 0.0
    logits[4, q[4], 0] = 5.0  # example 4 is wrong
    hit = answer_hits(logits, batch.tokens, batch.loss_mask)
    assert hit.sum().item() == 5 and not hit[4].any()

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, tokens):
            return logits[: len(tokens)]

    metrics = evaluate(Fixed(), batch, batch_size=6)
    assert metrics["acc"] == pytest.approx(5 / 6) and metrics["seq_acc"] == pytest.approx(5 / 6)
    assert metrics["n_answers"] == 6


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 100, warmup_steps=10, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1) and lr_at(500, 1.0, 100, 10, 0.1) == pytest.approx(0.1)


def test_config_validation_names_fields(tmp_path):
    with pytest.raises(ConfigError, match="valid fields: .*batch_size"):
        TrainConfig.from_dict({"batchsize": 3})
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="vocab_size"):
        TrainConfig(model_config={"vocab_size": 10})
    path = tmp_path / "run.yaml"
    path.write_text("model: mamba\nlayers: 3\nd-model: 32\nlr: 1e-3\ntask_config: {n_pairs: 4}\n")
    cfg = load_config(path, steps=7)
    assert (cfg.model, cfg.n_layers, cfg.d_model, cfg.lr, cfg.steps) == ("mamba", 3, 32, 1e-3, 7)
    assert cfg.task_config == {"n_pairs": 4}
    (tmp_path / "run.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "run.json") == cfg


def test_unknown_model_or_task_names_choices(tmp_path):
    with pytest.raises(ValueError, match="valid models: .*transformer"):
        Trainer(tiny_config(tmp_path, model="nope"))
    with pytest.raises(ValueError, match="valid tasks: .*mqar"):
        Trainer(tiny_config(tmp_path, task="nope"))


# -- demo --------------------------------------------------------------------------------
def test_demo_training_is_idempotent(tmp_path, monkeypatch):
    from ssmlens.interp import demo_train

    for model in list(demo_train.DEMO_SETTINGS):
        small = dict(demo_train.DEMO_SETTINGS[model], task_config=TINY_AR, d_model=16, n_layers=1, steps=4,
                     eval_every=2, eval_size=16, stop_at_acc=None)
        monkeypatch.setitem(demo_train.DEMO_SETTINGS, model, small)
    first = demo_train.train_demo_models(out_dir=tmp_path, progress=False)
    assert set(first) == {"transformer", "mamba", "bmojo"}
    for name, (path, acc) in first.items():
        assert path == tmp_path / f"demo-{name}-ar" / "final" and 0.0 <= acc <= 1.0
    stamp = (first["mamba"][0] / "model.safetensors").stat().st_mtime_ns
    assert demo_train.train_demo_models(out_dir=tmp_path, progress=False) == first
    assert (first["mamba"][0] / "model.safetensors").stat().st_mtime_ns == stamp
    # other demo settings (a newer demo): the old run is replaced, not resumed
    monkeypatch.setitem(demo_train.DEMO_SETTINGS, "mamba", dict(demo_train.DEMO_SETTINGS["mamba"], lr=5e-3))
    again = demo_train.train_demo_models(out_dir=tmp_path, progress=False)
    cfg = json.loads((tmp_path / "demo-mamba-ar" / "train_config.json").read_text())
    assert cfg["lr"] == 5e-3 and again["mamba"][0].is_dir()


@pytest.mark.parametrize("model_name", ["transformer", "mamba", "bmojo"])
def test_answer_logits_equal_full_logits_at_answers(model_name):
    """return_type='answers' (what the trainer uses) = the full logits at the answers,
    and its cross-entropy = the masked loss, gradients included."""
    task = build_task("ar", TINY_AR)
    batch = task.sample(8, seed=3)
    model = registry.build_model(model_name, vocab_size=task.vocab_size, d_model=32, n_layers=1)
    logits, loss = model(batch.tokens, return_type="both", loss_mask=batch.loss_mask)
    answer_logits, target = model(batch.tokens, return_type="answers", loss_mask=batch.loss_mask)
    rows = batch.loss_mask[:, :-1].bool()
    assert answer_logits.shape == (int(rows.sum()), task.vocab_size)
    torch.testing.assert_close(answer_logits, logits[:, :-1][rows], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(target, batch.tokens[:, 1:][rows])
    answer_loss = torch.nn.functional.cross_entropy(answer_logits, target)
    torch.testing.assert_close(answer_loss, loss, rtol=1e-6, atol=1e-6)
    (g_full,) = torch.autograd.grad(loss, model.embed.weight)
    (g_answers,) = torch.autograd.grad(answer_loss, model.embed.weight)
    torch.testing.assert_close(g_answers, g_full, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="needs a loss_mask"):
        model(batch.tokens, return_type="answers")
