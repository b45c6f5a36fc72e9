"""The run store (interp.store): exact round trips, lazy reads, crash safety, errors, listing."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import zarr

from ssmlens.interp.store import (
    CorruptRunError, IncompleteRunError, MissingEntryError, NotARunError, RunClosedError,
    RunExistsError, RunNotFoundError, create_run, list_runs, open_run,
)
from ssmlens.interp.tasks.base import TaskBatch
from subprocess_helpers import child_env, python



def make_batch() -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (6, 10), generator=g)
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[:, 7] = True
    roles = {"key": torch.randint(0, 10, (6, 3), generator=g), "answer": torch.full((6, 1), 8)}
    roles["answer"][2] = -1
    return TaskBatch(tokens, mask, roles, 64, "mqar", {"n_pairs": 3, "gaps": (1, 2)})


def bits(t: torch.Tensor) -> torch.Tensor:
    """Same-width integer view: equal bits <=> exact round trip (NaN included)."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.view(ints[t.element_size()]) if t.is_floating_point() else t


def mem_url() -> str:
    return f"memory://ssmlens-test-{uuid.uuid4().hex}"


CACHE = {
    "hook_embed": torch.randn(6, 10, 8),
    # NaN, inf, -0.0 and a subnormal: exactness means bits, not values.
    "blocks.0.mixer.hook_delta": torch.tensor([float("nan"), float("inf"), -0.0, 1e-42])
    .repeat(60).view(6, 10, 4),
    "blocks.0.mixer.hook_B": torch.randn(6, 10, 4).bfloat16(),
    "blocks.0.mixer.hook_ssm_state": torch.randn(6, 10, 4, 2, dtype=torch.float64),
    "blocks.0.attn.hook_pattern": torch.rand(6, 2, 10, 10).half(),
    "blocks.0.moe.hook_expert": torch.randint(-5, 5, (6, 10)),
    "blocks.0.memory.hook_write": torch.rand(6, 10) > 0.5,
    "blocks.1.moe.hook_expert": torch.randint(0, 200, (6, 10), dtype=torch.uint8),
}


def test_every_array_round_trips_exactly_with_dims(tmp_path):
    batch = make_batch()
    with create_run(tmp_path / "run", {"model": "mamba"}) as w:
        w.write_batch(batch)
        w.write_cache(CACHE)
    run = open_run(tmp_path / "run")
    for name, t in CACHE.items():
        lazy = run.cache[name]
        got = lazy.load()
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(bits(got), bits(t)), name
    # dimension_names are in the zarr metadata itself, for any zarr reader.
    raw = zarr.open_group(str(tmp_path / "run"), mode="r")
    state = raw["cache/blocks.0.mixer.hook_ssm_state"]
    assert state.metadata.dimension_names == ("batch", "pos", "d_inner", "d_state")
    assert run.cache["blocks.0.attn.hook_pattern"].dims == ("batch", "head", "query_pos", "key_pos")
    got = run.batch()
    assert torch.equal(got.tokens, batch.tokens) and got.tokens.dtype == torch.int64
    assert torch.equal(got.loss_mask, batch.loss_mask) and got.loss_mask.dtype == torch.bool
    assert list(got.roles) == ["key", "answer"]
    assert all(torch.equal(got.roles[r], batch.roles[r]) for r in batch.roles)
    assert (got.vocab_size, got.task, got.config) == (64, "mqar", {"n_pairs": 3, "gaps": [1, 2]})


def test_activation_cache_in_and_out(tmp_path):
    from transformer_lens import ActivationCache

    with create_run(tmp_path / "r", {}) as w:
        w.write_cache(ActivationCache(dict(CACHE), None), names=["hook_embed", "blocks.0.mixer.hook_B"])
    cache = open_run(tmp_path / "r").cache
    assert list(cache) == ["blocks.0.mixer.hook_B", "hook_embed"]  # natural order of names
    ac = cache.to_activation_cache(names=["blocks.0.mixer.hook_B"])
    assert isinstance(ac, ActivationCache) and list(ac.keys()) == ["blocks.0.mixer.hook_B"]
    assert torch.equal(bits(ac["blocks.0.mixer.hook_B"]), bits(CACHE["blocks.0.mixer.hook_B"]))
    with pytest.raises(MissingEntryError, match="hook_B"):  # suggests the close name
        cache["blocks.0.mixer.hook_b"]


def test_lazy_slicing_matches_numpy_and_reads_only_needed_chunks(tmp_path):
    x = torch.arange(20 * 6 * 5, dtype=torch.float32).view(20, 6, 5)
    with create_run(tmp_path / "r", {}, chunk_bytes=4 * 6 * 5 * 4) as w:  # 4 rows per chunk
        w.write_cache({"blocks.0.hook_resid_pre": x})
    lazy = open_run(tmp_path / "r").cache["blocks.0.hook_resid_pre"]
    assert lazy.shape == (20, 6, 5) and lazy.chunks == (4, 6, 5)
    keys = [3, -1, (slice(2, 9), 1), (..., 2), (slice(None, None, 3), slice(1, 5, 2)), slice(15, 2, -2),
            [7, 0, 7], torch.tensor([19, 4]), (np.arange(20) % 3 == 0, 0, ...), slice(30, 40)]
    for key in keys:
        expected = x.numpy()[key if not isinstance(key, torch.Tensor) else key.numpy()]
        np.testing.assert_array_equal(lazy[key].numpy(), expected, err_msg=str(key))
    with pytest.raises(IndexError):
        lazy[20]
    # Damage the chunk of rows 8..11: rows elsewhere still read, those rows fail clearly.
    chunk = tmp_path / "r/cache/blocks.0.hook_resid_pre/c.2.0.0"
    chunk.write_bytes(b"garbage")
    assert torch.equal(lazy[:8], x[:8]) and torch.equal(lazy[12:], x[12:])
    with pytest.raises(CorruptRunError, match="hook_resid_pre"):
        lazy[9]


def test_direct_chunk_writes_match_zarrs_own_encoding(tmp_path):
    x = torch.randn(8, 5, 6)
    bf = torch.randn(8, 5, 6).bfloat16()
    with create_run(tmp_path / "r", {}, chunk_bytes=4 * 5 * 6 * 4) as w:  # 4 rows a chunk
        w.write_cache({"hook_embed": x, "blocks.0.hook_resid_pre": bf})
    for name, values in [("hook_embed", x.numpy()), ("blocks.0.hook_resid_pre", bf.view(torch.int16).numpy())]:
        ours_dir, theirs_dir = tmp_path / "r/cache" / name, tmp_path / "zarr" / name
        ours = zarr.open_array(str(ours_dir), mode="r")
        theirs = zarr.create_array(str(theirs_dir), shape=ours.shape, dtype=ours.dtype,
                                   chunks=ours.chunks, compressors=None,
                                   chunk_key_encoding={"name": "default", "separator": "."})
        theirs[:] = values.view(ours.dtype)
        chunks = sorted(p.name for p in theirs_dir.glob("c.*"))
        assert chunks and chunks == sorted(p.name for p in ours_dir.glob("c.*"))
        for key in chunks:
            assert (ours_dir / key).read_bytes() == (theirs_dir / key).read_bytes(), (name, key)


@pytest.mark.parametrize("compression", ["auto", "zstd"])
def test_rows_larger_than_a_chunk_are_split_along_pos(tmp_path, compression):
    x = torch.randn(3, 11, 8)
    with create_run(tmp_path / "r", {}, chunk_bytes=4 * 8 * 4, compression=compression) as w:
        w.write_cache({"blocks.0.mixer.hook_ssm_out": x})  # 4 positions a chunk, an edge of 3
        w.append("blocks.1.mixer.hook_ssm_out", x[:2])
        w.append("blocks.1.mixer.hook_ssm_out", x[2:])
    cache = open_run(tmp_path / "r").cache
    for name in ("blocks.0.mixer.hook_ssm_out", "blocks.1.mixer.hook_ssm_out"):
        assert cache[name].chunks == (1, 4, 8) and torch.equal(cache[name].load(), x)


def test_append_rows_are_on_the_store_when_append_returns(tmp_path, monkeypatch):
    from zarr.storage import LocalStore

    sets, gets = [], []
    real_set, real_get = LocalStore.set, LocalStore.get

    async def spy_set(self, key, value):
        sets.append(key)
        return await real_set(self, key, value)

    async def spy_get(self, key, *args, **kwargs):
        gets.append(key)
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "set", spy_set)
    monkeypatch.setattr(LocalStore, "get", spy_get)
    full = torch.randn(23, 3, 4)
    prefix = "cache/blocks.0.hook_resid_post/c."
    with create_run(tmp_path / "r", {}, chunk_bytes=5 * 3 * 4 * 4) as w:  # at most 5 rows a chunk
        for lo, hi in [(0, 2), (2, 3), (3, 11), (11, 12), (12, 23)]:
            w.append("blocks.0.hook_resid_post", full[lo:hi])
            assert not [k for k in gets if k.startswith(prefix)]  # the writer reads no chunk back
            # every row appended so far is readable at once (as an incomplete run)
            stored = open_run(tmp_path / "r", require_complete=False).cache["blocks.0.hook_resid_post"]
            assert torch.equal(stored.load(), full[:hi])
            gets.clear()
    # Chunks of 4 rows (in step with the first block of 2). A chunk is put again only
    # while it is partial (the rows of the latest appends), then never; nothing is
    # read back.
    assert [k.removeprefix(prefix) for k in sets if k.startswith(prefix)] == [
        "0.0.0", "0.0.0", "0.0.0", "1.0.0", "2.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"]
    lazy = open_run(tmp_path / "r").cache["blocks.0.hook_resid_post"]
    assert lazy.shape == (23, 3, 4) and lazy.chunks[0] == 4
    assert torch.equal(lazy.load(), full)


@pytest.mark.parametrize("seed", range(4))
def test_append_random_pieces_from_a_reused_caller_buffer(tmp_path, seed):
    g = torch.Generator().manual_seed(seed)
    total = torch.randn(50, 3, generator=g)
    bounds = [0, *sorted(torch.randint(0, 51, (8,), generator=g).tolist()), 50]  # empty pieces too
    scratch = torch.empty(50, 3)
    with create_run(tmp_path / "r", {}, chunk_bytes=7 * 3 * 4) as w:  # at most 7 rows a chunk
        for lo, hi in zip(bounds, bounds[1:]):
            piece = scratch[: hi - lo]
            piece.copy_(total[lo:hi])
            w.append("probe.features", piece, dims=("batch", "feature"))
            scratch.fill_(float("nan"))  # the caller reuses its buffer at once
    got = open_run(tmp_path / "r").cache["probe.features"]
    assert got.dims == ("batch", "feature") and got.chunks[1:] == (3,) and 1 <= got.chunks[0] <= 7
    assert torch.equal(got.load(), total)


@pytest.mark.parametrize(("trailing", "first", "target", "rows"), [
    ((3, 4), 2, 5 * 48, 4),        # a multiple of the first block
    ((3, 4), 5, 5 * 48, 5),
    ((3, 4), 0, 5 * 48, 5),        # an empty first block: as many rows as fit
    ((3, 4), 12, 5 * 48, 4),       # a block larger than a chunk: a divisor of it
    ((3, 4), 7, 5 * 48, 5),        # ... unless the divisors are all small
    ((256, 610), 4, 4 * 2**20, 4),
])
def test_stream_chunks_follow_the_first_block(trailing, first, target, rows):
    from ssmlens.interp.store.encoding import stream_chunks

    assert stream_chunks(trailing, 4, first, target) == (rows, *trailing)


def test_equal_blocks_stream_without_copies_and_pad_the_last_chunk(tmp_path, monkeypatch):
    from ssmlens.interp.store import appender

    copies = []
    real_add = appender.Appender.add

    def add(self, data):
        before = self._filled
        jobs = real_add(self, data)
        copies.append(self._filled != before or any(d is self._buffer for _, d, _ in jobs))
        return jobs

    monkeypatch.setattr(appender.Appender, "add", add)
    x = torch.randn(26, 5, 2)
    with create_run(tmp_path / "r", {}, chunk_bytes=4 * 10 * 4) as w:  # at most 4 rows a chunk
        for lo in range(0, 24, 3):
            w.append("blocks.0.hook_resid_pre", x[lo : lo + 3])  # chunks of 3: one per block
        w.append("blocks.0.hook_resid_pre", x[24:])  # 2 rows: buffered, padded at finish
    assert copies == [False] * 8 + [True]
    stored = zarr.open_array(str(tmp_path / "r/cache/blocks.0.hook_resid_pre"), mode="r")
    assert stored.chunks == (3, 5, 2) and stored.shape == (26, 5, 2)
    last = np.frombuffer((tmp_path / "r/cache/blocks.0.hook_resid_pre/c.8.0.0").read_bytes(), "<f4")
    assert last.size == 3 * 10 and not last[2 * 10 :].any()  # the row past the end: fill value (0)
    assert torch.equal(open_run(tmp_path / "r").cache["blocks.0.hook_resid_pre"].load(), x)


def test_exception_leaves_incomplete_run_with_what_was_written(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with create_run(tmp_path / "r", {"lr": 0.1}, chunk_bytes=4 * 2 * 4) as w:  # 4 rows/chunk
            w.write_batch(make_batch())
            w.append("blocks.0.hook_resid_pre", torch.ones(6, 2))  # one chunk + 2 buffered
            w.set_metrics(loss=1.0)
            1 / 0
    with pytest.raises(IncompleteRunError, match="require_complete=False") as err:
        open_run(tmp_path / "r")
    assert "ZeroDivisionError" in str(err.value)
    run = open_run(tmp_path / "r", require_complete=False)
    assert not run.is_complete and run.metrics == {"loss": 1.0}
    assert torch.equal(run.cache["blocks.0.hook_resid_pre"].load(), torch.ones(6, 2))
    assert torch.equal(run.batch().tokens, make_batch().tokens)
    with pytest.raises(RunClosedError):
        w.append("blocks.0.hook_resid_pre", torch.ones(1, 2))


KILLED_WRITER = """
import sys, time, torch
from ssmlens.interp.store import create_run
w = create_run(sys.argv[1], {"kind": "killed"}, chunk_bytes=4 * 32 * 64 * 4)  # 4 rows per chunk
w.write_cache({"hook_embed": torch.ones(2, 3, 4)})
i = 0
while True:
    w.append("blocks.0.mixer.hook_conv", torch.full((1, 32, 64), float(i)))
    i += 1
    if i == 9:
        print("ready", flush=True)
    time.sleep(0.002)
"""


def test_sigkill_mid_write_is_never_read_as_complete(tmp_path):
    path = tmp_path / "killed"
    proc = subprocess.Popen([*python(), "-c", KILLED_WRITER, str(path)], cwd=tmp_path, env=child_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # let it get well into further chunks
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(IncompleteRunError):
        open_run(path)
    run = open_run(path, require_complete=False)
    conv = run.cache["blocks.0.mixer.hook_conv"]
    rows = conv.shape[0]
    assert rows >= 9  # every row whose append returned (the 9th printed "ready"), and only committed ones
    values = conv.load()
    assert torch.equal(values, torch.arange(rows, dtype=torch.float32).view(-1, 1, 1).expand(rows, 32, 64))
    assert [r.status for r in list_runs(tmp_path)] == ["incomplete"]


SIX_APPENDS_THEN_KILLED = """
import sys, time, torch
from ssmlens.interp.store import create_run
w = create_run(sys.argv[1], {"kind": "streamed"})
for i in range(6):  # six small appends: far less than one chunk
    w.append("blocks.0.hook_resid_post", torch.full((1, 3, 8), float(i)))
print("appended", flush=True)
time.sleep(120)  # killed here, before finish()
"""


def test_streamed_appends_survive_sigkill(tmp_path):
    """Issue 12.2: rows that ``append`` returned for are readable after the writer is
    killed (SIGKILL: no cleanup runs); they used to wait in a buffer for a whole chunk."""
    path = tmp_path / "streamed"
    proc = subprocess.Popen([*python(), "-c", SIX_APPENDS_THEN_KILLED, str(path)], cwd=tmp_path,
                            env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "appended"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(IncompleteRunError):
        open_run(path)
    lazy = open_run(path, require_complete=False).cache["blocks.0.hook_resid_post"]
    assert lazy.shape == (6, 3, 8)
    assert torch.equal(lazy.load(), torch.arange(6.0).view(6, 1, 1).expand(6, 3, 8))


KILLED_MID_CHUNK = """
import os, signal, sys, torch
import ssmlens.interp.store.writer as writer
from ssmlens.interp.store import create_run
w = create_run(sys.argv[1], {}, chunk_bytes=4 * 16 * 4)  # 4 rows per chunk
w.append("hook_embed", torch.zeros(4, 1, 16))  # rows 0..3: committed
real = writer.write_jobs
async def dies(jobs, gate=None):  # the array is grown to 12 rows, in memory only
    (array, data, row0), = jobs
    await real([(array, data[:4], row0)])  # one of the two new chunks reaches the store,
    os.kill(os.getpid(), signal.SIGKILL)  # then death: before chunk 2 and the metadata
writer.write_jobs = dies
w.append("hook_embed", torch.ones(8, 1, 16))
"""


def test_kill_between_chunks_and_commit_shows_only_committed_rows(tmp_path):
    path = tmp_path / "killed"
    proc = subprocess.run([*python(), "-c", KILLED_MID_CHUNK, str(path)], cwd=tmp_path, env=child_env())
    assert proc.returncode == -signal.SIGKILL
    assert (path / "cache/hook_embed/c.1.0.0").exists()  # the chunk past the end was written,
    stored = zarr.open_array(str(path / "cache/hook_embed"), mode="r")
    assert stored.shape == (4, 1, 16)  # but even plain zarr sees only the committed rows
    assert stored.attrs["ssmlens_rows"] == 4
    run = open_run(path, require_complete=False)
    assert run.cache["hook_embed"].shape == (4, 1, 16)  # not the fill values of rows 8..11
    assert torch.equal(run.cache["hook_embed"].load(), torch.zeros(4, 1, 16))


def test_wrong_path_foreign_group_and_corrupt_metadata(tmp_path):
    with pytest.raises(RunNotFoundError, match=str(tmp_path / "nope")):
        open_run(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain/notes.txt").write_text("hi")
    with pytest.raises(NotARunError, match="not a zarr group"):
        open_run(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "foreign"), mode="w", attributes={"owner": "someone"})
    with pytest.raises(NotARunError, match="not an ssmlens run"):
        open_run(tmp_path / "foreign")
    zarr.create_array(str(tmp_path / "array"), shape=(3,), dtype="i4")
    with pytest.raises(NotARunError, match="zarr array"):
        open_run(tmp_path / "array")
    with create_run(tmp_path / "run", {}) as w:
        w.write_cache({"hook_embed": torch.ones(2, 3, 4)})
    (tmp_path / "run/cache/hook_embed/zarr.json").write_text("{not json")
    with pytest.raises(CorruptRunError, match="cache"):
        open_run(tmp_path / "run").cache["hook_embed"]
    (tmp_path / "run/zarr.json").write_text("{not json")
    with pytest.raises(CorruptRunError, match="zarr.json|metadata"):
        open_run(tmp_path / "run")


def test_overwrite_protection_never_corrupts(tmp_path):
    with create_run(tmp_path / "r", {"v": 1}) as w:
        w.write_cache({"hook_embed": torch.ones(2, 3, 4)})
    with pytest.raises(RunExistsError, match="overwrite=True"):
        create_run(tmp_path / "r", {"v": 2})
    run = open_run(tmp_path / "r")  # untouched
    assert run.config == {"v": 1} and torch.equal(run.cache["hook_embed"].load(), torch.ones(2, 3, 4))
    with create_run(tmp_path / "r", {"v": 2}, overwrite=True) as w:
        w.set_metrics(acc=1.0)
    run = open_run(tmp_path / "r")
    assert run.config == {"v": 2} and len(run.cache) == 0 and run.metrics == {"acc": 1.0}
    zarr.open_group(str(tmp_path / "foreign"), mode="w", attributes={"keep": True})
    with pytest.raises(RunExistsError, match="not an ssmlens run"):
        create_run(tmp_path / "foreign", {}, overwrite=True)
    assert zarr.open_group(str(tmp_path / "foreign"), mode="r").attrs["keep"] is True
    (tmp_path / "empty").mkdir()
    create_run(tmp_path / "empty", {}).finish()  # an empty directory is fine
    assert open_run(tmp_path / "empty").is_complete


def test_list_runs_reports_complete_incomplete_and_corrupt(tmp_path):
    with create_run(tmp_path / "a", {"model": {"d_model": 16, "layers": [1, 2]}, "lr": 0.1}) as w:
        w.set_metrics(acc=0.9)
    create_run(tmp_path / "sweep/b", {"lr": 0.2})  # never finished
    with create_run(tmp_path / "sweep/c", {}) as w:
        pass
    (tmp_path / "sweep/c/zarr.json").write_text("{broken")
    zarr.open_group(str(tmp_path / "foreign"), mode="w")
    (tmp_path / "junk").mkdir()
    runs = list_runs(tmp_path)
    assert [(r.run_id, r.status) for r in runs] == [
        ("a", "complete"), ("sweep/b", "incomplete"), ("sweep/c", "corrupt")]
    a = runs[0]
    assert a.complete and a.config_summary == {"model.d_model": 16, "lr": 0.1} and a.metrics == {"acc": 0.9}
    assert a.url == str(tmp_path / "a") and a.created_at and a.finished_at
    assert "zarr.json" in runs[2].error
    assert open_run(runs[0].url).is_complete
    with pytest.raises(RunNotFoundError, match="does not exist"):
        list_runs(tmp_path / "nowhere")


def test_memory_and_file_urls(tmp_path):
    root = mem_url()
    for url in (f"{root}/x", f"file://{tmp_path}/y"):
        with create_run(url, {"url": url}) as w:
            w.write_cache({"blocks.0.mixer.hook_B": CACHE["blocks.0.mixer.hook_B"]})
            w.write_result("r", torch.arange(3), ("layer",), coords={"layer": ["a", "b", "c"]})
        run = open_run(url)
        assert run.config == {"url": url}
        b = CACHE["blocks.0.mixer.hook_B"]
        assert torch.equal(bits(run.cache["blocks.0.mixer.hook_B"][2:4]), bits(b[2:4]))
        assert run.result("r").coords["layer"].values.tolist() == ["a", "b", "c"]
    listed = list_runs(root)
    assert [(r.run_id, r.status) for r in listed] == [("x", "complete")]
    assert open_run(listed[0].url).config == {"url": f"{root}/x"}
    with pytest.raises(RunNotFoundError):
        open_run(f"{root}/missing")


def test_results_keep_dims_coords_and_attrs(tmp_path):
    scores = torch.randn(3, 7)
    da = xr.DataArray(np.ones((2, 2)), dims=("head", "layer"), coords={"head": [0, 1], "layer": ["L0", "L1"]},
                      attrs={"metric": "kl"})
    with create_run(tmp_path / "r", {}) as w:
        w.write_result("patching/resid_pre", scores, ("layer", "pos"),
                       coords={"layer": [0, 1, 2], "pos": range(7)}, attrs={"metric": "logit_diff"})
        w.write_result("ablation/heads", da)
        w.write_result("total", torch.tensor(2.5).bfloat16(), ())
        with pytest.raises(ValueError, match="3 labels"):
            w.write_result("bad", scores, ("layer", "pos"), coords={"layer": [0, 1, 2], "pos": [0, 1, 2]})
        with pytest.raises(ValueError, match="not one of dims"):
            w.write_result("bad", scores, ("layer", "pos"), coords={"head": [0]})
    run = open_run(tmp_path / "r")
    assert run.results() == ["ablation/heads", "patching/resid_pre", "total"]
    got = run.result("patching/resid_pre")
    assert got.dims == ("layer", "pos") and got.attrs == {"metric": "logit_diff"}
    assert got.coords["pos"].values.tolist() == list(range(7))
    np.testing.assert_array_equal(got.values, scores.numpy())
    xr.testing.assert_identical(run.result("ablation/heads").rename(None), da)
    assert float(run.result("total")) == 2.5
    with pytest.raises(MissingEntryError, match="patching/resid_pre"):
        run.result("patching/resid_post")


def test_tables_round_trip_with_dtypes_and_index(tmp_path):
    df = pd.DataFrame({
        "layer": np.arange(4), "score": [0.5, np.nan, -1.0, 2.0], "ok": [True, False, True, True],
        "name": ["a", None, "c", "d"], "kind": pd.Categorical(["x", "y", "x", "x"], categories=["y", "x"]),
        "n": pd.array([1, None, 3, 4], dtype="Int64"),
        "when": pd.to_datetime(["2024-01-01", "2024-01-02", None, "2024-01-04"]).tz_localize("Europe/Paris"),
        "took": pd.to_timedelta([1, 2, 3, 4], unit="s"), 7: np.float32([1, 2, 3, 4]),
    })
    with create_run(tmp_path / "r", {}) as w:
        w.write_table("probe/scores", df)
        w.write_table("indexed", df.set_index(["layer", "name"]))
        with pytest.raises(TypeError, match="column 'bad'"):
            w.write_table("bad", pd.DataFrame({"bad": [{"a": 1}, None]}))
    run = open_run(tmp_path / "r")
    assert run.tables() == ["indexed", "probe/scores"]
    pd.testing.assert_frame_equal(run.table("probe/scores"), df)
    pd.testing.assert_frame_equal(run.table("indexed"), df.set_index(["layer", "name"]))
    assert (tmp_path / "r/tables/probe/scores/score/zarr.json").exists()


def test_writer_lifecycle_errors(tmp_path):
    w = create_run(tmp_path / "r", {})
    w.write_cache({"hook_embed": torch.ones(1, 2, 3)})
    with pytest.raises(ValueError, match="already written"):
        w.write_cache({"hook_embed": torch.ones(1, 2, 3)})
    with pytest.raises(ValueError, match="earlier rows"):
        w.append("blocks.0.hook_resid_pre", torch.ones(1, 2, 3))
        w.append("blocks.0.hook_resid_pre", torch.ones(1, 2, 4))
    assert not open_run(tmp_path / "r", require_complete=False).is_complete
    w.finish()
    assert json.loads((tmp_path / "r/zarr.json").read_text())["attributes"]["ssmlens_complete"] is True
    with pytest.raises(RunClosedError):
        w.set_metrics(x=1)


def test_failed_chunk_write_leaves_run_incomplete_and_readable(tmp_path, monkeypatch):
    """One chunk write fails while the others are in flight: write_cache raises once
    every write ended, arrays stored whole are readable, the failed one is absent (no
    metadata names its chunks), the run reads as incomplete, and listing says nothing."""
    import warnings

    from ssmlens.interp.store.localfs import ReservingLocalStore

    real_set = ReservingLocalStore._set
    started = []

    async def flaky_set(self, key, value, exclusive=False):
        started.append(key)
        if key == "cache/blocks.1.hook_resid_pre/c.1.0.0":
            raise OSError(28, "No space left on device")
        return await real_set(self, key, value, exclusive)

    monkeypatch.setattr(ReservingLocalStore, "_set", flaky_set)
    cache = {f"blocks.{i}.hook_resid_pre": torch.randn(12, 4, 8) for i in range(3)}
    with pytest.raises(OSError, match="No space left"):
        with create_run(tmp_path / "r", {}, chunk_bytes=4 * 4 * 8 * 4) as w:  # 4 rows a chunk
            w.write_batch(make_batch())
            w.write_cache(cache)
    # The other chunks of the failed array were still attempted (nothing was left running).
    assert {f"cache/blocks.1.hook_resid_pre/c.{i}.0.0" for i in range(3)} <= set(started)
    with pytest.raises(IncompleteRunError, match="OSError"):
        open_run(tmp_path / "r")
    with warnings.catch_warnings(record=True) as caught:
        run = open_run(tmp_path / "r", require_complete=False)
        assert set(run.cache) == {"blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre"}
        for name in run.cache:
            assert torch.equal(run.cache[name].load(), cache[name])
        assert [r.status for r in list_runs(tmp_path)] == ["incomplete"]
    assert not [str(c.message) for c in caught if issubclass(c.category, UserWarning)]
    assert (tmp_path / "r/cache/blocks.1.hook_resid_pre/c.0.0.0").exists()  # orphaned, unnamed


KILLED_IN_WRITE_CACHE = """
import os, signal, sys, torch
import ssmlens.interp.store.writer as writer
from ssmlens.interp.store import create_run
w = create_run(sys.argv[1], {}, chunk_bytes=4 * 64 * 4)  # 4 rows per chunk
w.write_cache({"hook_embed": torch.ones(8, 64)})
real, calls = writer.write_jobs, []
async def dies(jobs, gate=None):
    calls.append(jobs)
    if len(calls) == 2:  # the second array's first chunk reaches the store, then death
        (array, data, row0), = jobs
        await real([(array, data[:4], row0)])
        os.kill(os.getpid(), signal.SIGKILL)
    await real(jobs, gate)
writer.write_jobs = dies
w.write_cache({"blocks.0.hook_resid_pre": torch.zeros(8, 64), "blocks.1.hook_resid_pre": torch.zeros(8, 64)})
"""


def test_sigkill_inside_write_cache_never_shows_a_partial_array(tmp_path):
    path = tmp_path / "killed"
    proc = subprocess.run([*python(), "-c", KILLED_IN_WRITE_CACHE, str(path)], cwd=tmp_path,
                          env=child_env())
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(IncompleteRunError):
        open_run(path)
    run = open_run(path, require_complete=False)
    assert "hook_embed" in run.cache and torch.equal(run.cache["hook_embed"].load(), torch.ones(8, 64))
    for name in set(run.cache) - {"hook_embed"}:  # whatever else shows is whole
        assert torch.equal(run.cache[name].load(), torch.zeros(8, 64))
    assert len(run.cache) < 3  # the array being written when the writer died is not listed


def test_store_code_on_a_memory_url_chunks_pads_and_fails_the_same(monkeypatch):
    """The fsspec path runs the same writer: multi-chunk and edge-chunk writes, streamed
    rows with a padded last chunk, and a failed write leaving an incomplete run."""
    url = mem_url()
    x = torch.randn(11, 3, 5)  # 4-row chunks: an edge chunk of 3 rows
    with create_run(url, {}, chunk_bytes=4 * 3 * 5 * 4) as w:
        w.write_cache({"hook_embed": x, "blocks.0.moe.hook_expert": torch.randint(0, 9, (11, 3))})
        for lo in range(0, 11, 3):  # 3-row chunks, the last one padded
            w.append("blocks.0.hook_resid_post", x[lo : lo + 3])
    run = open_run(url)
    assert torch.equal(run.cache["hook_embed"].load(), x)
    assert run.cache["hook_embed"].chunks == (4, 3, 5)
    assert torch.equal(run.cache["blocks.0.hook_resid_post"].load(), x)
    assert run.cache["blocks.0.hook_resid_post"].chunks == (3, 3, 5)
    experts = run.cache["blocks.0.moe.hook_expert"]
    assert torch.equal(experts[3:7], experts.load()[3:7]) and experts.shape == (11, 3)

    from zarr.storage import FsspecStore

    real_set = FsspecStore.set

    async def failing(self, key, value, *args, **kwargs):
        if "/c." in key:
            raise OSError("the object store went away")
        return await real_set(self, key, value, *args, **kwargs)

    monkeypatch.setattr(FsspecStore, "set", failing)
    bad = mem_url()
    with pytest.raises(OSError, match="went away"):
        with create_run(bad, {}) as w:
            w.write_cache({"hook_embed": x})
    run = open_run(bad, require_complete=False)
    assert not run.is_complete and "hook_embed" not in run.cache


def test_reserving_store_writes_the_same_bytes_with_or_without_fallocate(tmp_path, monkeypatch):
    import ssmlens.interp.store.localfs as localfs

    x = torch.randn(64, 32, 16)  # 128 KiB: above RESERVE_FROM
    variants = {"fallocate": localfs._FALLOCATE, "none": None, "failing": lambda *a: -1}
    for label, fn in variants.items():
        monkeypatch.setattr(localfs, "_FALLOCATE", fn)
        with create_run(tmp_path / label, {}) as w:
            w.write_cache({"hook_embed": x})
        assert torch.equal(open_run(tmp_path / label).cache["hook_embed"].load(), x)
        assert not list((tmp_path / label).rglob("*.partial"))  # zarr's temp files renamed away
    chunk = "cache/hook_embed/c.0.0.0"
    assert len({(tmp_path / label / chunk).read_bytes() for label in variants}) == 1
