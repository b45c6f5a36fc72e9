"""``ssmlens train`` / ``ssmlens eval``: help, errors naming choices, config files, a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ssmlens.interp.cli import main

TINY = ["--task-arg", "n_keys=8", "--task-arg", "n_values=8", "--task-arg", "n_pairs=2",
        "--d-model", "16", "--layers", "1", "--model-arg", "n_heads=2", "--steps", "6",
        "--batch-size", "8", "--eval-every", "3", "--eval-size", "32", "--device", "cpu", "--no-progress"]


def test_train_help_from_console_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ssmlens", "train", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for flag in ("--model", "--task", "--d-model", "--layers", "--config", "--task-arg"):
        assert flag in out.stdout


def test_eval_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    assert exit_.value.code == 0
    assert "CHECKPOINT" in capsys.readouterr().out


def test_bad_flag_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--no-such-flag"])
    assert exit_.value.code != 0
    assert "--no-such-flag" in capsys.readouterr().err


def test_unknown_model_names_valid_choices(capsys, tmp_path):
    assert main(["train", "--model", "mambo", "--out-dir", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "'mambo'" in err and "valid models:" in err and "mamba" in err and "transformer" in err
    assert not any(tmp_path.iterdir())


def test_unknown_task_names_valid_choices(capsys, tmp_path):
    assert main(["train", "--task", "arr", "--out-dir", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "'arr'" in err and "valid tasks:" in err and "mqar" in err and "induction" in err


def test_unknown_config_field_names_valid_fields(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: mamba\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(cfg)]) != 0
    err = capsys.readouterr().err
    assert "learning_rate" in err and "valid fields:" in err and "lr" in err


def test_bad_model_arg_names_valid_fields(capsys, tmp_path):
    assert main(["train", "--model-arg", "d_stat=4", "--model", "mamba", "--out-dir", str(tmp_path)] + TINY[:6]) != 0
    err = capsys.readouterr().err
    assert "d_stat" in err and "d_state" in err


def test_train_then_eval(capsys, tmp_path):
    assert main(["train", "--model", "transformer", "--out-dir", str(tmp_path), "--name", "t"] + TINY) == 0
    out = capsys.readouterr().out
    run = tmp_path / "t"
    assert "checkpoint:" in out and str(run / "final") in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 6 and summary["finished"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [3, 6]

    # running the same command again finds the finished run
    assert main(["train", "--model", "transformer", "--out-dir", str(tmp_path), "--name", "t"] + TINY) == 0
    assert "step 6/6" in capsys.readouterr().out

    assert main(["eval", str(run), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["acc"] == summary["eval"]["acc"] and result["task"] == "ar"
    assert result["checkpoint"] == str(run / "final")

    assert main(["eval", str(run / "checkpoints" / "step_000003"), "--task-arg", "n_pairs=1", "--n", "16"]) == 0
    assert "answer accuracy" in capsys.readouterr().out


def test_config_file_with_flag_override(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model: mamba\ntask: ar\ntask_config: {n_keys: 8, n_values: 8, n_pairs: 2}\nd-model: 16\nlayers: 1\n"
        f"steps: 100\nbatch_size: 8\neval_every: 2\neval_size: 16\nlr: 1e-3\nout_dir: {tmp_path}\n"
        "model_config: {d_state: 4}\nprogress: false\ndevice: cpu\n")
    assert main(["train", "--config", str(cfg), "--steps", "2", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 2" in printed and "model: mamba" in printed
    assert main(["train", "--config", str(cfg), "--steps", "2"]) == 0
    saved = json.loads((tmp_path / "mamba-ar" / "train_config.json").read_text())
    assert saved["steps"] == 2 and saved["lr"] == 1e-3 and saved["model_config"] == {"d_state": 4}


def test_eval_missing_checkpoint(capsys, tmp_path):
    assert main(["eval", str(tmp_path / "nothing")]) != 0
    assert "not found" in capsys.readouterr().err


def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes(tmp_path):
    """Issue 12.13: ``ssmlens train`` sent SIGTERM mid-training (between evals and
    checkpoints) saves a checkpoint at the step it reached and exits cleanly; the
    same command resumes there. metrics.jsonl has the training loss at every log
    interval, not only at evals."""
    import signal
    import subprocess
    import time

    from subprocess_helpers import child_env, python

    args = ["--model", "transformer", "--out-dir", str(tmp_path), "--name", "t", "--log-every", "2",
            "--eval-every", "100000", *TINY[:12], "--batch-size", "8", "--eval-size", "16", "--device", "cpu",
            "--no-progress"]
    proc = subprocess.Popen([*python(), "-m", "ssmlens", "train", *args, "--steps", "100000"], cwd=tmp_path,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "t" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # 6 steps trained
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if "stopped by SIGTERM" in line)
    step = int(line.split(" at step ")[1].split("/")[0])
    assert step >= 6
    checkpoint = tmp_path / "t" / "checkpoints" / f"step_{step:06d}"
    assert (checkpoint / "model.safetensors").is_file() and str(checkpoint) in line
    records = [json.loads(r) for r in metrics.read_text().splitlines()]
    assert [r["step"] for r in records[:3]] == [2, 4, 6] and records[-1]["step"] == step
    assert all("train_loss" in r and "eval_acc" not in r for r in records)

    resumed = subprocess.run([*python(), "-m", "ssmlens", "train", *args, "--steps", str(step + 3)], cwd=tmp_path,
                             env=child_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step_{step:06d} (step {step})" in resumed.stderr
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["step"] == step + 3
