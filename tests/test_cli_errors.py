"""Every ``ssmlens`` command fails with one line (issue 12.5): the problem and the path,
exit code 2 for usage errors and 1 for failures, nothing written, nothing destroyed;
bugs keep their traceback."""

from __future__ import annotations

import shutil
from pathlib import Path
import subprocess

import pytest

from ssmlens.interp.cli import main
from ssmlens.interp.store import create_run, open_run
from subprocess_helpers import child_env, python

TINY = ["--task-arg", "n_keys=8", "--task-arg", "n_values=8", "--task-arg", "n_pairs=2", "--d-model", "16",
        "--layers", "1", "--steps", "4", "--batch-size", "8", "--eval-every", "2", "--eval-size", "16",
        "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained Mamba run directory (final/ and two step checkpoints)."""
    root = tmp_path_factory.mktemp("trained")
    assert main(["train", "--model", "mamba", "--task", "ar", "--out-dir", str(root), *TINY]) == 0
    return root / "mamba-ar"


def snapshot(root) -> dict:
    """Every folder under ``root``, and every file with its size and modification time:
    equal snapshots mean nothing was written or deleted (a folder's own time changes
    when a path under it is tried and removed again)."""
    return {str(p.relative_to(root)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def fails(capsys, argv: list[str], code: int, *parts: str) -> str:
    """Run ``ssmlens argv``: exit ``code``, one line on stderr naming every one of ``parts``."""
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ssmlens {argv[0]}: error: "), err
    for part in parts:
        assert part in lines[0], (part, err)
    return lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder holding a file named ``afile`` (an --out blocked by a file), as the cwd."""
    (tmp_path / "afile").write_text("in the way")
    monkeypatch.chdir(tmp_path)
    return tmp_path


SUITES = Path(__file__).resolve().parents[1] / "examples" / "suites"


def corrupt_copy(trained, dest):
    """A copy of the run whose final weights file is cut to 100 bytes."""
    shutil.copytree(trained, dest)
    weights = dest / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return weights


# ---- probe: the cases of the issue --------------------------------------------------------


def test_probe_errors_are_one_line(capsys, trained, work):
    before = snapshot(work)
    out = str(work / "p")
    fails(capsys, ["probe", str(work / "nope"), "--out", out], 2, "checkpoint not found", str(work / "nope"))
    fails(capsys, ["probe", str(trained), "--hooks", "resid_pree", "--out", out, "--n", "16"], 2,
          "'resid_pree'", "Did you mean: resid_pre")
    fails(capsys, ["probe", str(trained), "--target", "quried_value", "--out", out, "--n", "16"], 2,
          "'quried_value'", "Did you mean: queried_value")
    fails(capsys, ["probe", str(trained), "--positions", "quried_key", "--out", out, "--n", "16"], 2,
          "'quried_key'", "queried_key")
    fails(capsys, ["probe", str(trained), "--out", "afile/sub", "--n", "16"], 2, str(work / "afile"), "not a directory")
    assert snapshot(work) == before
    weights = corrupt_copy(trained, work / "broken")
    before = snapshot(work)
    fails(capsys, ["probe", str(work / "broken"), "--out", out, "--n", "16"], 1, "corrupt weights file", str(weights))
    assert snapshot(work) == before


def test_probe_accepts_no_progress(capsys, trained, work):
    assert main(["probe", str(trained), "--no-progress", "--n", "16", "--positions", "query",
                 "--out", str(work / "p")]) == 0
    assert "probes" not in capsys.readouterr().err  # no bar
    assert open_run(work / "p").is_complete


# ---- the other commands -------------------------------------------------------------------


def test_patch_suggests_hook_names_and_roles(capsys, trained, work):
    before = snapshot(work)
    fails(capsys, ["patch", str(trained), "--hooks", "ssm_stat", "--out", "o", "--n", "8"], 2,
          "'ssm_stat'", "Did you mean: ssm_state")
    fails(capsys, ["patch", str(trained), "--positions", "quried_key", "--out", "o", "--n", "8"], 2,
          "Did you mean: queried_key")
    fails(capsys, ["patch", str(work / "nope"), "--out", "o"], 2, "checkpoint not found", str(work / "nope"))
    fails(capsys, ["patch", str(trained), "--out", "/proc/x", "--n", "8"], 2, "/proc/x")
    assert snapshot(work) == before


def test_cache_output_errors(capsys, trained, work):
    create_run(work / "done", {"kind": "earlier"}).finish()
    before = snapshot(work)
    fails(capsys, ["cache", str(trained), "--out", "afile/sub", "--n", "8"], 2,
          f"cannot create a run at {work / 'afile' / 'sub'}", f"{work / 'afile'} is a file")
    fails(capsys, ["cache", str(trained), "--out", "/proc/x", "--n", "8"], 2, "/proc/x")
    fails(capsys, ["cache", str(trained), "--out", "done", "--n", "8"], 2, str(work / "done"), "--overwrite")
    fails(capsys, ["cache", str(trained), "--hooks", "ssm_stat", "--out", "new", "--n", "8"], 2, "ssm_state")
    assert snapshot(work) == before
    writer = create_run(work / "busy", {"kind": "being written"})  # another writer holds it
    fails(capsys, ["cache", str(trained), "--out", "busy", "--n", "8", "--overwrite"], 1,
          str(work / "busy"), "being written by pid")
    writer.finish()
    assert open_run(work / "busy").config == {"kind": "being written"}


def test_eval_errors(capsys, trained, work):
    fails(capsys, ["eval", str(work / "nope")], 2, "checkpoint not found", str(work / "nope"))
    weights = corrupt_copy(trained, work / "broken")
    fails(capsys, ["eval", str(work / "broken")], 1, str(weights))
    fails(capsys, ["eval", str(trained), "--task", "arr"], 2, "unknown task 'arr'")


def test_train_errors_write_and_destroy_nothing(capsys, work):
    before = snapshot(work)
    fails(capsys, ["train", "--model", "mamba", "--out-dir", "afile/sub", *TINY], 2,
          "afile/sub/mamba-ar", f"{work / 'afile'} is a file")
    fails(capsys, ["train", "--model", "mamba", "--out-dir", "/proc/x", *TINY], 2, "/proc/x")
    fails(capsys, ["train", "--config", "nope.yaml"], 2, "config file not found: nope.yaml")
    assert snapshot(work) == before


def test_train_resume_from_truncated_weights_names_the_file(capsys, trained, work):
    run = work / "runs" / "mamba-ar"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "final")  # unfinished: the next train resumes from the last checkpoint
    (run / "summary.json").unlink()
    weights = run / "checkpoints" / "step_000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = snapshot(work)
    fails(capsys, ["train", "--model", "mamba", "--task", "ar", "--out-dir", "runs", *TINY[:-3], "--steps", "6",
                   "--device", "cpu", "--no-progress"], 1,
          "cannot resume", f"corrupt weights file runs/mamba-ar/checkpoints/step_000004/model.safetensors",
          "SafetensorError")
    assert snapshot(work) == before  # nothing written, nothing deleted


def test_ablate_errors(capsys, work):
    (work / "study.yaml").write_text("name: s\nmodels: []\ntasks: []\nablations: []\nbogus: 1\n")
    before = snapshot(work)
    fails(capsys, ["ablate", "nope.yaml", "--out", "o"], 2, "study file not found", "nope.yaml")
    fails(capsys, ["ablate", "study.yaml", "--out", "o"], 2, "study.yaml")
    assert snapshot(work) == before


def test_evaluate_errors(capsys, work):
    (work / "suite.yaml").write_text("name: s\ntask: ar\nbogus: 1\n")
    before = snapshot(work)
    fails(capsys, ["evaluate", "nope.yaml", "--out", "o"], 2, "suite file not found", "nope.yaml")
    fails(capsys, ["evaluate", "suite.yaml", "--out", "o"], 2, "suite.yaml")
    fails(capsys, ["evaluate", str(SUITES / "quick.yaml"), "--out", "afile/sub"], 2, "afile/sub")
    fails(capsys, ["evaluate", str(SUITES / "quick.yaml"), "--out", "o", "--threads", "0"], 2, "--threads")
    assert snapshot(work) == before


def test_dash_and_demo_errors(capsys, work):
    before = snapshot(work)
    fails(capsys, ["dash", "--runs", "nope"], 2, "--runs", "nope")
    fails(capsys, ["dash", "--runs", "afile"], 2, "afile is a file")
    fails(capsys, ["dash", "--runs", str(work), "--port", "0"], 2, "--port")
    fails(capsys, ["demo", "--runs", "afile/sub", "--no-serve"], 2, "--runs afile/sub", "not a directory")
    assert snapshot(work) == before


# ---- the shared path ----------------------------------------------------------------------


def test_unexpected_errors_keep_their_traceback(monkeypatch, work):
    """A bug is not dressed up as a usage error: its exception reaches the caller."""
    import ssmlens.interp.cli.eval as eval_cmd

    def broken(*args, **kwargs):
        raise AttributeError("a bug")

    monkeypatch.setattr(eval_cmd, "evaluate_checkpoint", broken)
    (work / "ckpt").mkdir()
    with pytest.raises(AttributeError, match="a bug"):
        main(["eval", str(work / "ckpt")])


def test_traceback_flag_shows_known_errors_in_full(work):
    with pytest.raises(Exception, match="checkpoint not found"):
        main(["--traceback", "eval", "nope"])


def test_console_command_prints_one_line(work):
    """The same from a real process (``python -m ssmlens``): one stderr line, exit 2."""
    proc = subprocess.run([*python(), "-m", "ssmlens", "probe", "nope", "--out", "o"], cwd=work,
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["ssmlens probe: error: checkpoint not found: nope"]
    assert not (work / "o").exists()
