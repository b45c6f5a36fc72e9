"""The trainer: one loop for every registered model on every task.

AdamW with warm-up + cosine, gradient clipping, the model's auxiliary losses,
held-out answer accuracy every ``eval_every`` steps, a tqdm bar, ``metrics.jsonl``
(the training loss every ``log_every`` steps, the held-out metrics at every eval),
checkpoints and resume (layout in ``checkpointing``). Batches come from
``(seed, step)`` alone, so a resumed run sees the data an uninterrupted one would.

SIGTERM or SIGINT (Ctrl+C) during ``fit`` ends it after the current step with a
checkpoint (``stop_reason`` "signal"): the next run resumes from there. A second
signal of the same kind acts as it would without the trainer (Ctrl+C raises
KeyboardInterrupt at once; the checkpoint files are written atomically either way).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ssmlens.interp.training.checkpointing import RunDir
from ssmlens.interp.training.config import TrainConfig
from ssmlens.interp.training.data import TaskData, build_task, derive_seed
from ssmlens.interp.training.evaluate import answer_hits, evaluate
from ssmlens.interp.training.optim import auxiliary_losses, build_model_seeded, make_optimizer, resolve_device
from ssmlens.interp.training.schedule import lr_at, set_lr
from ssmlens.models.checkpoint import WEIGHTS_FILE, CheckpointError, load_state_checked

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunConfigMismatch(ValueError):
    """The run directory holds checkpoints of a different experiment."""


@dataclass
class TrainResult:
    """What a ``fit`` leaves behind. ``checkpoint`` is ``final/`` when training is
    finished, else the last step checkpoint."""

    run_dir: Path
    checkpoint: Path
    step: int
    finished: bool
    # "steps", "target" (stop_at_acc reached), "time" (max_time_s), "stop_after" or
    # "signal" (SIGTERM / SIGINT: ``signal`` names it)
    stop_reason: str
    eval: dict
    best_eval: dict
    train_time_s: float
    tokens_per_s: float
    metrics: list[dict] = field(default_factory=list)
    signal: str | None = None  # "SIGTERM" / "SIGINT" when one stopped the run

    @property
    def accuracy(self) -> float:
        return float(self.eval.get("acc", math.nan))


class Trainer:
    """Builds the model, optimizer and data of a ``TrainConfig``; ``fit()`` trains.

    A run directory that already holds a checkpoint is resumed (``config.resume``)
    when its config matches, or refused with the differing fields named.
    """

    def __init__(self, config: TrainConfig):
        self.config = config.validate()
        self.device = resolve_device(config.device)
        task = build_task(config.task, config.task_config)
        self.data = TaskData(task, config.batch_size, config.seed, config.eval_size)
        self.model = build_model_seeded(config, self.data.vocab_size).to(self.device)
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.run = RunDir(config.run_dir)
        self.step = 0
        self.last_eval: dict = {}
        self.best_eval: dict = {}
        self.train_time_s = 0.0
        self.resumed_from: Path | None = None
        self.stop_signal: int | None = None  # set by the handlers ``fit`` installs
        self._open_run_dir()

    # -- run directory / resume --------------------------------------------------
    def _open_run_dir(self) -> None:
        cfg = self.config
        if cfg.overwrite:
            self.run.clear()
        last = self.run.last_checkpoint()
        if last is not None:
            if not cfg.resume:
                raise FileExistsError(
                    f"run directory {self.run.root} already holds checkpoints; resume it, "
                    "overwrite it (overwrite=True / --overwrite) or choose another name")
            saved = self.run.read_config()
            if saved is not None:
                diff = cfg.differences(TrainConfig.from_dict(saved))
                if diff:
                    raise RunConfigMismatch(
                        f"run directory {self.run.root} was trained with a different config "
                        f"(fields {diff} differ); use overwrite=True / --overwrite or another name")
            self._load(last)
        else:
            # A run that crashed before its first checkpoint restarts from scratch.
            self.run.truncate_metrics(after_step=0)
            torch.manual_seed(derive_seed("rng", cfg.seed))
        self.run.write_config(cfg)

    def _load(self, checkpoint: Path) -> None:
        state = RunDir.load_state(checkpoint)
        weights = checkpoint / WEIGHTS_FILE
        try:
            tensors = load_file(str(weights))
        except Exception as e:  # safetensors' own error types (a truncated file) name no file
            raise CheckpointError(
                f"cannot resume from {checkpoint}: corrupt weights file {weights} ({type(e).__name__}: {e}); "
                f"delete {checkpoint} to resume from an earlier checkpoint, or start afresh with --overwrite"
            ) from None
        load_state_checked(self.model, tensors, source=str(checkpoint))
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.last_eval = dict(state.get("last_eval") or {})
        self.best_eval = dict(state.get("best_eval") or {})
        self.train_time_s = float(state.get("train_time_s", 0.0))
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.run.truncate_metrics(after_step=self.step)
        self.resumed_from = checkpoint

    def _state(self) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "last_eval": self.last_eval,
            "best_eval": self.best_eval,
            "train_time_s": self.train_time_s,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def save_checkpoint(self) -> Path:
        return self.run.save_checkpoint(self.model, self._state(), self.config, self.config.keep_checkpoints)

    # -- status --------------------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        return self.config.batch_size * self.data.seq_len

    @property
    def target_reached(self) -> bool:
        target = self.config.stop_at_acc
        return target is not None and self.last_eval.get("acc", -1.0) >= target

    @property
    def time_up(self) -> bool:
        limit = self.config.max_time_s
        return limit is not None and self.train_time_s >= limit

    @property
    def finished(self) -> bool:
        return self.step >= self.config.steps or self.target_reached or self.time_up

    # -- one step ------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimizer step on the batch of ``step``; returns detached device scalars
        (no host sync, so GPU steps pipeline)."""
        cfg = self.config
        batch = self.data.batch(step)
        tokens = batch.tokens.to(self.device, non_blocking=True)
        mask = batch.loss_mask.to(self.device, non_blocking=True)
        set_lr(self.optimizer, lr_at(step, cfg.lr, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio))
        if cfg.supervise == "mask":  # logits only at the answers: cheap with a large vocabulary
            answer_logits, target = self.model(tokens, return_type="answers", loss_mask=mask)
            loss = F.cross_entropy(answer_logits.float(), target)
            hits = (answer_logits.detach().argmax(-1) == target).sum()
        else:
            logits, loss = self.model(tokens, return_type="both", loss_mask=None)
            hits = answer_hits(logits.detach(), tokens, mask).sum()
        aux = auxiliary_losses(self.model)
        total = loss + cfg.aux_loss_weight * sum(aux.values()) if aux else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        out = {"loss": loss.detach()}
        if cfg.grad_clip is not None:
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).detach()
        self.optimizer.step()
        with torch.no_grad():
            out["hits"] = hits.float()
            out["answers"] = mask[:, :-1].sum().float()
        for name, value in aux.items():
            out[f"aux/{name}"] = value.detach().float()
        return out

    # -- evaluation / logging --------------------------------------------------------
    def evaluate(self) -> dict:
        """Held-out metrics (``loss``, ``acc``, ``seq_acc``, ...) on the run's eval set."""
        return evaluate(self.model, self.data.eval_set(), self.config.eval_batch_size, self.device)

    def _record(self, sums: dict[str, torch.Tensor], n_steps: int, interval_time: float) -> dict:
        ev = self.evaluate()
        train = {k: float(v) for k, v in sums.items()}
        record = {
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train.pop("loss") / max(n_steps, 1),
            "train_acc": train.pop("hits") / max(train.pop("answers"), 1.0),
        }
        record.update({k: v / max(n_steps, 1) for k, v in train.items()})
        record.update({f"eval_{k}": v for k, v in ev.items()})
        record.update({
            "tokens": self.step * self.tokens_per_step,
            "tokens_per_s": n_steps * self.tokens_per_step / max(interval_time, 1e-9),
            "train_time_s": self.train_time_s,
        })
        self.last_eval = {**ev, "step": self.step}
        if not self.best_eval or ev["acc"] > self.best_eval["acc"] or (
            ev["acc"] == self.best_eval["acc"] and ev["loss"] < self.best_eval["loss"]):
            self.best_eval = dict(self.last_eval)
            self.run.save_model_as("best", self.model, self.config, self.best_eval)
        self.run.append_metrics(record)
        return record

    def _log(self, sums: dict[str, torch.Tensor], n_steps: int, mark: dict, now: float) -> None:
        """A ``metrics.jsonl`` record of the training loss (and accuracy, aux losses) over
        the steps since the last record (``mark``: the sums and step count then; updated)."""
        totals = {k: float(v) for k, v in sums.items()}  # one device sync, as the bar's update
        steps = n_steps - mark["n"]
        if steps <= 0:
            return
        delta = {k: v - mark["sums"].get(k, 0.0) for k, v in totals.items()}
        record = {
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": delta.pop("loss") / steps,
            "train_acc": delta.pop("hits") / max(delta.pop("answers"), 1.0),
        }
        record.update({k: v / steps for k, v in delta.items()})
        record.update({
            "tokens": self.step * self.tokens_per_step,
            "tokens_per_s": steps * self.tokens_per_step / max(now - mark["time"], 1e-9),
        })
        self.run.append_metrics(record)
        mark.update(sums=totals, n=n_steps, time=now)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _catch_signals(self) -> dict:
        """Handlers that ask ``fit`` to stop after the current step; the previous ones
        (to restore). Signal handlers can only be set from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

        def stop(signum, frame) -> None:
            self.stop_signal = signum
            signal.signal(signum, previous[signum])  # a second one acts at once

        for sig in STOP_SIGNALS:
            signal.signal(sig, stop)
        return previous

    # -- the loop ----------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train until ``config.steps`` (or ``stop_at_acc``, or ``max_time_s``); ``stop_after`` ends this call
        early at that step with a checkpoint, as an interruption would (for resume). SIGTERM
        and SIGINT end it the same way (see the module docstring)."""
        self.stop_signal = None
        previous = self._catch_signals()
        try:
            return self._fit(stop_after)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _fit(self, stop_after: int | None) -> TrainResult:
        cfg = self.config
        end = cfg.steps if stop_after is None else min(cfg.steps, int(stop_after))
        bar = tqdm(total=cfg.steps, initial=self.step, desc=cfg.run_name, disable=not cfg.progress,
                   dynamic_ncols=True, unit="step")
        sums: dict[str, torch.Tensor] = {}
        n_steps, saved_at, start = 0, -1, self.step
        self.model.train()
        self._sync()
        t0 = time.perf_counter()
        mark = {"sums": {}, "n": 0, "time": t0}  # what the last metrics record covered
        try:
            while self.step < end and not self.finished and self.stop_signal is None:
                out = self.train_step(self.step)
                self.step += 1
                n_steps += 1
                for k, v in out.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
                # host time only (no sync): on a GPU the queue runs at most a few steps ahead
                time_up = cfg.max_time_s is not None and (
                    self.train_time_s + time.perf_counter() - t0 >= cfg.max_time_s)
                evaluating = self.step % cfg.eval_every == 0 or self.step == cfg.steps or time_up
                if self.step % cfg.log_every == 0 or self.step == end:
                    bar.update(self.step - bar.n)
                    bar.set_postfix(self._postfix(sums, n_steps), refresh=False)
                    if not evaluating:  # an eval step's record has the training loss too
                        self._log(sums, n_steps, mark, time.perf_counter())
                if evaluating:
                    self._sync()
                    interval = time.perf_counter() - t0
                    self.train_time_s += interval
                    record = self._record(sums, n_steps, interval)
                    if cfg.progress:
                        bar.write(_eval_line(cfg.run_name, record))
                    bar.update(self.step - bar.n)
                    bar.set_postfix(self._postfix(sums, n_steps), refresh=True)
                    sums, n_steps = {}, 0
                    if self.step % cfg.checkpoint_interval == 0 or self.finished:
                        self.save_checkpoint()
                        saved_at = self.step
                    self._sync()
                    t0 = time.perf_counter()
                    mark = {"sums": {}, "n": 0, "time": t0}
            if self.stop_signal is not None:  # the loss of the steps since the last record
                self._log(sums, n_steps, mark, time.perf_counter())
            self._sync()
            self.train_time_s += time.perf_counter() - t0
        finally:
            bar.close()
        if self.step > start and saved_at != self.step:
            self.save_checkpoint()
        if self.stop_signal is not None and cfg.progress:
            tqdm.write(f"{cfg.run_name}: {signal.Signals(self.stop_signal).name} at step {self.step}: "
                       f"checkpoint saved; run again to resume")
        return self._finish(trained=self.step > start)

    def _postfix(self, sums: dict[str, torch.Tensor], n_steps: int) -> dict:
        post = {}
        if n_steps:
            post["loss"] = f"{float(sums['loss']) / n_steps:.3f}"
            post["acc"] = f"{float(sums['hits']) / max(float(sums['answers']), 1.0):.3f}"
        if self.last_eval:
            post["eval_acc"] = f"{self.last_eval['acc']:.3f}"
        post["lr"] = f"{self.optimizer.param_groups[0]['lr']:.2e}"
        return post

    def _finish(self, trained: bool) -> TrainResult:
        finished = self.finished
        reason = ("target" if self.target_reached else "steps" if self.step >= self.config.steps
                  else "time" if self.time_up else "signal" if self.stop_signal is not None else "stop_after")
        current = self.last_eval
        if current.get("step") != self.step and self.stop_signal is None:
            # stopped between evals (stop_after): report where the model is now; the
            # recorded evals (and so `finished`) are left as they were
            current = {**self.evaluate(), "step": self.step}
        checkpoint = self.run.last_checkpoint()
        if finished:
            final = self.run.root / "final"
            checkpoint = final if (final.is_dir() and not trained) else (
                self.run.save_model_as("final", self.model, self.config, current))
        tokens_per_s = self.step * self.tokens_per_step / max(self.train_time_s, 1e-9)
        summary = {
            "run": self.config.run_name,
            "model": self.config.model,
            "task": self.config.task,
            "step": self.step,
            "steps": self.config.steps,
            "finished": finished,
            "stop_reason": reason,
            "signal": signal.Signals(self.stop_signal).name if self.stop_signal is not None else None,
            "eval": current,
            "best_eval": self.best_eval,
            "train_time_s": self.train_time_s,
            "tokens_per_s": tokens_per_s,
            "device": str(self.device),
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "checkpoint": str(checkpoint),
        }
        self.run.write_summary(summary)
        return TrainResult(
            run_dir=self.run.root, checkpoint=Path(checkpoint), step=self.step, finished=finished,
            stop_reason=reason, eval=current, best_eval=self.best_eval,
            train_time_s=self.train_time_s, tokens_per_s=tokens_per_s, metrics=self.run.read_metrics(),
            signal=summary["signal"],
        )


def _eval_line(name: str, r: dict) -> str:
    return (f"{name} step {r['step']}: train loss {r['train_loss']:.4f} | eval loss {r['eval_loss']:.4f} "
            f"acc {r['eval_acc']:.4f} | {r['tokens_per_s']:.0f} tok/s")
