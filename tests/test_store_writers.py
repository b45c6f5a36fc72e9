"""One writer per run (issue 12.1): real processes racing for run stores, stale locks,
a writer that loses its run, and the errors that name the holder."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import warnings

import pytest
import torch

from ssmlens.interp.store import (
    IncompleteRunError, RunClosedError, RunExistsError, RunLockedError, StaleLockWarning, UnwritableRunError,
    check_creatable, create_run, open_run,
)
from ssmlens.interp.store.lock import LOCK_NAME, Holder
from race_workers import APPENDS, ROWS_PER_APPEND, leave_stale_runs, race
from subprocess_helpers import child_env, python

WORKERS = 4
ROUNDS = {"create": 20, "overwrite": 20, "stale": 12}


@pytest.fixture(scope="module")
def races(tmp_path_factory) -> tuple:
    """``WORKERS`` spawned processes race through every phase of ``ROUNDS`` (one start-up
    for all three tests: importing torch is most of the time); a process killed with
    SIGKILL left the ``stale`` runs. (root, every record, the dead writer's pid)."""
    root = tmp_path_factory.mktemp("races")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    outs = [root / f"worker-{i}.json" for i in range(WORKERS)]
    dead = ctx.Process(target=leave_stale_runs, args=(str(root), ROUNDS["stale"]))
    procs = [ctx.Process(target=race, args=(list(ROUNDS.items()), i, str(root), barrier, str(out)))
             for i, out in enumerate(outs)]
    for p in [dead, *procs]:
        p.start()
    dead.join(timeout=300)
    (root / "stale-ready").touch()
    for p in procs:
        p.join(timeout=600)
    for p in [dead, *procs]:
        if p.is_alive():
            p.kill()
    assert dead.exitcode == -9, "the writer that should leave stale runs did not die by SIGKILL"
    assert [p.exitcode for p in procs] == [0] * WORKERS, "a racing writer crashed"
    return root, [rec for out in outs for rec in json.loads(out.read_text())], dead.pid


def rounds_of(records: list[dict], kind: str):
    for r in range(ROUNDS[kind]):
        yield r, [rec for rec in records if rec["kind"] == kind and rec["round"] == r]


def check_one_writer(path, winner: dict) -> None:
    """The run at ``path`` is complete and holds only ``winner``'s config and rows."""
    run = open_run(path)
    assert run.config == {"writer": winner["me"]}
    assert run.attrs["ssmlens_writer"]["pid"] == winner["pid"]
    rows = run.cache["rows"].load()
    assert torch.equal(rows, torch.full((APPENDS * ROWS_PER_APPEND, 4), float(winner["me"])))
    assert not (path / LOCK_NAME).exists()  # released at finish


def test_two_writers_race_one_wins(races):
    """Every worker calls create_run on the same path at once (no overwrite), 20 times:
    each time exactly one gets the run; the others get RunLockedError naming it, and
    the completed run is that one writer's data only."""
    root, records, _ = races
    for r, here in rounds_of(records, "create"):
        winners = [rec for rec in here if rec["outcome"] == "won"]
        assert len(winners) == 1, f"round {r}: {len(winners)} writers got the run"
        for rec in here:
            if rec is not winners[0]:
                assert rec["outcome"] == "locked", rec
                assert f"pid {winners[0]['pid']} on {socket.gethostname()}" in rec["message"]
        check_one_writer(root / f"create-{r:03d}", winners[0])


def test_overwrite_while_appending_is_refused(races):
    """Worker 0 keeps appending to its run while the other workers call
    create_run(overwrite=True) at once, 20 times: every overwrite is refused, naming the
    writer, and the run completes with worker 0's data only."""
    root, records, _ = races
    for r, here in rounds_of(records, "overwrite"):
        holder = next(rec for rec in here if rec["me"] == 0)
        assert [rec["outcome"] for rec in here if rec["me"]] == ["locked"] * (WORKERS - 1), here
        for rec in here:
            if rec["me"]:
                assert f"pid {holder['pid']}" in rec["message"] and "being written" in rec["message"]
        check_one_writer(root / f"overwrite-{r:03d}", holder)


def test_stale_lock_races_one_takes_over(races):
    """A writer killed with SIGKILL left its runs locked; every worker then calls
    create_run(overwrite=True) on each at once: exactly one gets the run, and the run is
    its data only. The one that took the stale lock over says so (StaleLockWarning
    naming the dead writer); a worker can also find the lock free in the instant
    between the taker's removal of the stale lock and its new one, and win without."""
    root, records, dead_pid = races
    took_over = 0
    for r, here in rounds_of(records, "stale"):
        winners = [rec for rec in here if rec["outcome"] == "won"]
        assert len(winners) == 1, f"round {r}: {len(winners)} writers got the run"
        message = winners[0]["message"]
        assert message == "" or (f"pid {dead_pid}" in message and "is gone" in message), message
        took_over += bool(message)
        assert all(rec["outcome"] == "locked" for rec in here if rec is not winners[0]), here
        check_one_writer(root / f"stale-{r:03d}", winners[0])
    assert took_over >= 1


# ---- one process: the same rules, step by step -------------------------------------------


def test_second_writer_in_one_process_is_refused_until_the_first_finishes(tmp_path):
    w = create_run(tmp_path / "r", {"n": 1})
    with pytest.raises(RunLockedError, match=r"this process.*finish\(\) or abort\(\)") as err:
        create_run(tmp_path / "r", {"n": 2}, overwrite=True)
    assert err.value.holder.pid == os.getpid() and err.value.lock_path == str(tmp_path / "r" / LOCK_NAME)
    with pytest.raises(IncompleteRunError, match="is still writing it"):
        open_run(tmp_path / "r")
    with pytest.raises(RunLockedError):
        check_creatable(tmp_path / "r", overwrite=True)
    w.append("x", torch.ones(2, 3))
    w.finish()
    with pytest.raises(RunExistsError, match="overwrite=True"):
        create_run(tmp_path / "r", {"n": 2})
    with create_run(tmp_path / "r", {"n": 2}, overwrite=True) as w2:
        w2.append("x", torch.zeros(1, 3))
    run = open_run(tmp_path / "r")
    assert run.config == {"n": 2} and run.cache["x"].shape == (1, 3)


def test_a_dropped_writer_frees_its_run(tmp_path):
    w = create_run(tmp_path / "r", {})
    w.append("x", torch.ones(2, 3))
    del w  # neither finished nor aborted: it can write no more
    assert not (tmp_path / "r" / LOCK_NAME).exists()
    assert open_run(tmp_path / "r", require_complete=False).cache["x"].shape == (2, 3)
    create_run(tmp_path / "r", {}, overwrite=True).finish()


def test_writer_that_lost_its_lock_stops_and_never_completes_the_run(tmp_path):
    """A lock broken by hand (the other-host case) and taken by a second writer: the
    first writer's next write and its finish() are refused; the run stays the second's."""
    first = create_run(tmp_path / "r", {"writer": 1})
    first.append("x", torch.ones(2, 3))
    (tmp_path / "r" / LOCK_NAME).unlink()  # "remove the lock file" of the message
    with pytest.raises(RunLockedError, match="was removed"):
        first.append("x", torch.ones(2, 3))
    with pytest.raises(RunClosedError, match="lost"):
        first.finish()
    second = create_run(tmp_path / "r", {"writer": 2}, overwrite=True)
    first.abort("late")  # writes nothing into the second writer's run
    second.append("x", torch.zeros(1, 3))
    second.finish()
    run = open_run(tmp_path / "r")
    assert run.config == {"writer": 2} and run.error is None and run.cache["x"].shape == (1, 3)


def test_finish_checks_the_runs_writer_token(tmp_path):
    """Completion checks the token in the run's own attributes, not only the lock."""
    w = create_run(tmp_path / "r", {})
    meta = json.loads((tmp_path / "r" / "zarr.json").read_text())
    meta["attributes"]["ssmlens_writer"]["token"] = "someone-else"
    (tmp_path / "r" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(RunLockedError, match="another writer"):
        w.finish()
    assert not open_run(tmp_path / "r", require_complete=False).is_complete


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / "r").mkdir()
    other = Holder("t0k3n", "some-other-host", 4242, "2026-01-01T00:00:00+00:00")
    (tmp_path / "r" / LOCK_NAME).write_bytes(other.to_bytes())
    with pytest.raises(RunLockedError, match=r"pid 4242 on some-other-host.*remove .*ssmlens-writer.lock") as err:
        create_run(tmp_path / "r", {}, overwrite=True)
    assert err.value.holder == other
    assert (tmp_path / "r" / LOCK_NAME).read_bytes() == other.to_bytes()  # untouched


def test_stale_lock_without_overwrite_is_refused_with_overwrite_taken_over(tmp_path):
    script = ("import os, signal, sys, torch\nfrom ssmlens.interp.store import create_run\n"
              "w = create_run(sys.argv[1], {'writer': 'dead'})\nw.append('x', torch.ones(3, 2))\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.Popen([*python(), "-c", script, str(tmp_path / "r")], env=child_env(), cwd=tmp_path)
    assert proc.wait() == -9
    with pytest.raises(IncompleteRunError, match="stopped before finish"):
        open_run(tmp_path / "r")
    with pytest.raises(RunExistsError, match=rf"writer \(pid {proc.pid} on .*\) is gone.*overwrite=True") as err:
        create_run(tmp_path / "r", {"writer": "new"})
    assert not isinstance(err.value, RunLockedError)
    with pytest.warns(StaleLockWarning, match="is gone; took over its lock"):
        w = create_run(tmp_path / "r", {"writer": "new"}, overwrite=True)
    w.finish()
    run = open_run(tmp_path / "r")
    assert run.config == {"writer": "new"} and "x" not in run.cache


def test_unwritable_paths_leave_nothing_behind(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    for bad, why in [(tmp_path / "afile" / "sub", "afile is a file"), (tmp_path / "afile", "afile is a file"),
                     ("/proc/x", "/proc/x")]:
        with pytest.raises(UnwritableRunError, match=f"cannot create a run at .*{why}"):
            check_creatable(bad)
        with pytest.raises(UnwritableRunError, match=f"cannot create a run at .*{why}"):
            create_run(bad, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    # a refused create (an existing run) leaves no lock, and makes no folder
    create_run(tmp_path / "done", {}).finish()
    with pytest.raises(RunExistsError):
        create_run(tmp_path / "done", {})
    assert not (tmp_path / "done" / LOCK_NAME).exists()


def test_memory_url_has_one_writer_too():
    url = f"memory://ssmlens-test-lock-{os.getpid()}-{id(object())}"
    w = create_run(url, {"n": 1})
    with pytest.raises(RunLockedError, match="this process"):
        create_run(url, {"n": 2}, overwrite=True)
    w.append("x", torch.ones(2, 2))
    w.finish()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_run(url, {"n": 2}, overwrite=True).finish()
    assert open_run(url).config == {"n": 2}
