"""Synthetic recall tasks: layouts, roles, supervision, determinism and corruption."""

from __future__ import annotations

import time

import pytest
import torch

from ssmlens.interp.tasks import (
    TASKS,
    ARTask,
    MQARTask,
    Task,
    TaskBatch,
    corrupt,
    make_task,
    task_from_batch,
)
from ssmlens.interp.tasks import positions
from ssmlens.interp.tasks.sampling import make_generator, sample_distinct, sample_excluding

# Small configs so every test runs in milliseconds on CPU.
SMALL = {
    "ar": dict(n_keys=64, n_values=48, n_pairs=8),
    "mqar": dict(vocab_size=512, seq_len=64, n_pairs=4),
    "induction": dict(vocab_size=16, seq_len=48),
    "selective_copy": dict(vocab_size=16, n_context=64, n_data=8),
    "atr": dict(n_keys=64, n_values=48, n_pairs=8, max_depth=3, p_nest=0.5),
}
KV_TASKS = ["ar", "mqar", "induction", "atr"]


def small(name: str, **overrides) -> Task:
    return make_task(name, **{**SMALL[name], **overrides})


def in_range(x: torch.Tensor, rng: tuple[int, int]) -> torch.Tensor:
    return (x >= rng[0]) & (x < rng[1])


def gather(tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return tokens.gather(1, pos)


# --- registry and configs -------------------------------------------------------


def test_registry_names():
    assert set(TASKS) == {"ar", "mqar", "induction", "selective_copy", "atr"}
    for name, cls in TASKS.items():
        task = make_task(name)
        assert isinstance(task, cls) and task.name == name


def test_unknown_task_names_valid_choices():
    with pytest.raises(ValueError) as err:
        make_task("mqra")
    msg = str(err.value)
    assert "mqra" in msg
    for name in TASKS:
        assert name in msg


def test_unknown_field_names_the_field_and_valid_fields():
    with pytest.raises(ValueError) as err:
        make_task("ar", n_pair=3)
    msg = str(err.value)
    assert "'n_pair'" in msg and "n_pairs" in msg and "n_keys" in msg
    with pytest.raises(ValueError, match="'power'"):
        MQARTask(power=0.1)


def test_config_constraints_are_checked():
    with pytest.raises(ValueError, match="n_pairs"):
        make_task("ar", n_keys=4, n_pairs=8)
    with pytest.raises(ValueError, match="seq_len"):
        make_task("mqar", seq_len=30, n_pairs=8)
    with pytest.raises(ValueError, match="p_nest"):
        make_task("atr", p_nest=1.5)


def test_paper_settings():
    ar = make_task("ar")
    assert (ar.seq_len, ar.vocab_size) == (37, 3 + 4096 + 4096)
    mqar = make_task("mqar")
    assert (mqar.vocab_size, mqar.seq_len, mqar.config.n_pairs, mqar.config.power_a) == (8192, 64, 4, 0.01)
    ind = make_task("induction")
    assert (ind.vocab_size, ind.seq_len) == (16, 256)
    sc = make_task("selective_copy")
    assert (sc.vocab_size, sc.config.n_context, sc.config.n_data) == (16, 4096, 16)
    b = ar.sample(3, seed=0)
    assert b.tokens.shape == (3, 37)


@pytest.mark.parametrize("name", list(TASKS))
def test_vocab_layout_partitions_vocabulary(name):
    task = small(name)
    ranges = sorted(task.vocab_layout().values())
    assert ranges[0][0] == 0 and ranges[-1][1] == task.vocab_size
    for (_, hi), (lo, _) in zip(ranges, ranges[1:]):
        assert hi == lo
    assert task.token_name(task.vocab_size - 1)
    with pytest.raises(ValueError):
        task.token_name(task.vocab_size)


# --- conventions shared by every task ------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
def test_batch_conventions(name):
    task = small(name)
    b = task.sample(64, seed=3)
    assert isinstance(b, TaskBatch) and b.task == name and b.config["seed"] == 3
    assert b.tokens.dtype == torch.int64 and b.tokens.shape == (64, task.seq_len)
    assert b.loss_mask.dtype == torch.bool and not b.loss_mask[:, -1].any()
    assert int(b.tokens.min()) >= 0 and int(b.tokens.max()) < task.vocab_size
    for role, pos in b.roles.items():
        assert pos.dtype == torch.int64 and pos.ndim == 2, role
        assert bool(((pos >= -1) & (pos < task.seq_len)).all()), role
    query, answer = b.role("query"), b.role("answer")
    assert torch.equal(answer, torch.where(query >= 0, query + 1, query))
    # Supervision exactly at the query positions, and the target there is the answer token.
    assert torch.equal(b.loss_mask, positions.mask_at(query, task.seq_len))
    assert torch.equal(gather(b.targets, query.clamp(min=0))[query >= 0], b.answer_tokens()[query >= 0])
    last = b.role("last")
    assert last.shape == (64, 1)
    sup = torch.arange(task.seq_len).expand(64, -1).masked_fill(~b.loss_mask, -1)
    assert torch.equal(last[:, 0], sup.max(dim=1).values)


@pytest.mark.parametrize("name", list(TASKS))
def test_seed_determinism(name):
    task = small(name)
    a, b, c = task.sample(32, seed=7), task.sample(32, seed=7), task.sample(32, seed=8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.loss_mask, b.loss_mask)
    assert a.roles.keys() == b.roles.keys()
    assert all(torch.equal(a.roles[r], b.roles[r]) for r in a.roles)
    assert not torch.equal(a.tokens, c.tokens)
    # Global RNG state neither matters nor moves.
    torch.manual_seed(123)
    state = torch.get_rng_state()
    d = task.sample(32, seed=7)
    assert torch.equal(d.tokens, a.tokens) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", KV_TASKS)
def test_key_and_value_vocabularies_disjoint(name):
    task = small(name)
    (klo, khi), (vlo, vhi) = task.key_range, task.value_range
    assert khi <= vlo or vhi <= klo
    b = task.sample(128, seed=1)
    for role, rng in [("key", task.key_range), ("queried_key", task.key_range),
                      ("value", task.value_range), ("queried_value", task.value_range)]:
        toks = b.tokens_at(role)
        assert bool(in_range(toks[toks >= 0], rng).all()), role
    assert bool(in_range(b.tokens_at("query"), task.key_range).all())
    assert bool(in_range(b.answer_tokens(), task.value_range).all())


# --- AR ----------------------------------------------------------------------------


def test_ar_layout_and_answer():
    task = small("ar")
    p = task.config.n_pairs
    b = task.sample(256, seed=0)
    t = b.tokens
    assert bool((t[:, 0] == 1).all()) and bool((t[:, 2 * p + 1] == 2).all()) and bool((t[:, -1] == 2).all())
    keys, values = b.tokens_at("key"), b.tokens_at("value")
    assert torch.equal(b.role("key"), torch.arange(1, 2 * p, 2).expand(256, -1))
    assert all(len(set(row)) == p for row in keys.tolist())
    assert all(len(set(row)) == p for row in values.tolist())
    # Independent lookup: find the queried key in context, read the value after it.
    kq = t[:, 2 * p + 2]
    hit = (t[:, 1 : 2 * p + 1 : 2] == kq[:, None]).float().argmax(dim=1)
    assert torch.equal(values[torch.arange(256), hit], t[:, 2 * p + 3])
    assert torch.equal(b.role("queried_key")[:, 0], 1 + 2 * hit)
    assert torch.equal(b.role("queried_value"), b.role("queried_key") + 1)
    assert b.loss_mask.sum().item() == 256 and bool(b.loss_mask[:, 2 * p + 2].all())
    # Every pair gets queried sometimes.
    assert set(hit.tolist()) == set(range(p))


# --- MQAR ----------------------------------------------------------------------------


def test_mqar_layout_and_answers():
    task = small("mqar")
    p, v = task.config.n_pairs, task.vocab_size
    b = task.sample(256, seed=2)
    t = b.tokens
    assert bool(in_range(t[:, 0 : 2 * p : 2], (1, v // 2)).all())
    assert bool(in_range(t[:, 1 : 2 * p : 2], (v // 2, v)).all())
    query, answer = b.role("query"), b.role("answer")
    assert query.shape == (256, p) and bool((query[:, 1:] > query[:, :-1]).all())
    assert bool((query >= 2 * p).all()) and bool(((query - 2 * p) % 2 == 0).all())
    # Every key is queried once; each answer is the value stored after that key.
    assert torch.equal(b.role("queried_key").sort(dim=1).values, b.role("key"))
    ctx_keys = t[:, 0 : 2 * p : 2]
    for j in range(p):
        kq = gather(t, query[:, j : j + 1])
        hit = (ctx_keys == kq).float().argmax(dim=1)
        assert torch.equal(2 * hit, b.role("queried_key")[:, j])
        assert torch.equal(t[torch.arange(256), 2 * hit + 1], gather(t, answer[:, j : j + 1])[:, 0])
    assert b.loss_mask.sum().item() == 256 * p
    noise = b.role("noise")
    assert noise.shape == (256, task.seq_len - 4 * p)
    covered = torch.cat([b.role("key"), b.role("value"), query, answer, noise], dim=1)
    assert torch.equal(covered.sort(dim=1).values, torch.arange(task.seq_len).expand(256, -1))


def test_mqar_noise_modes():
    noisy = small("mqar").sample(64, seed=0)
    assert noisy.tokens_at("noise").unique().numel() > 50
    quiet = small("mqar", random_non_queries=False).sample(64, seed=0)
    assert bool((quiet.tokens_at("noise") == 0).all())
    assert not bool((quiet.tokens_at("key") == 0).any())


def _power_law(space: int, a: float) -> torch.Tensor:
    i = torch.arange(1, space + 1, dtype=torch.float64)
    p = a * i ** (a - 1)
    return p / p.sum()


def test_mqar_query_gaps_follow_power_law():
    # One pair: the query slot is a single draw from p_i ∝ a·i^(a-1).
    task = small("mqar", seq_len=64, n_pairs=1)
    b = task.sample(20000, seed=11)
    slot = (b.role("query")[:, 0] - 2) // 2
    space = (64 - 2) // 2
    freq = torch.bincount(slot, minlength=space).double() / slot.numel()
    expected = _power_law(space, 0.01)
    assert 0.5 * (freq - expected).abs().sum() < 0.03
    uniform = torch.full((space,), 1.0 / space, dtype=torch.float64)
    assert 0.5 * (freq - uniform).abs().sum() > 0.3
    # Several pairs (drawn without replacement): early slots are far more common.
    b = small("mqar").sample(4000, seed=12)
    slots = (b.role("query") - 2 * 4) // 2
    counts = torch.bincount(slots.flatten(), minlength=(64 - 8) // 2).double()
    assert counts[:4].sum() > 2 * counts[-4:].sum()
    # a = 1 is uniform: the same check must not hold.
    flat = small("mqar", power_a=1.0).sample(4000, seed=12)
    fcounts = torch.bincount(((flat.role("query") - 8) // 2).flatten(), minlength=28).double()
    assert fcounts[:4].sum() < 1.5 * fcounts[-4:].sum()


# --- induction and selective copying --------------------------------------------------


def test_induction_layout():
    task = small("induction")
    length, trig = task.seq_len, task.vocab_size - 1
    b = task.sample(512, seed=4)
    t = b.tokens
    assert bool(((t == trig).sum(dim=1) == 2).all())
    first = b.role("key")[:, 0]
    assert bool((first <= length - 4).all()) and bool((t[torch.arange(512), first] == trig).all())
    assert bool((t[:, length - 2] == trig).all())
    assert torch.equal(t[torch.arange(512), first + 1], t[:, length - 1])
    assert torch.equal(b.role("trigger"), torch.stack([first, torch.full_like(first, length - 2)], 1))
    assert b.loss_mask.sum().item() == 512 and bool(b.loss_mask[:, length - 2].all())
    assert first.min().item() == 0 and first.max().item() == length - 4


def test_selective_copy_layout():
    task = small("selective_copy")
    c, m = task.config.n_context, task.config.n_data
    b = task.sample(256, seed=5)
    t = b.tokens
    data = b.role("data")
    assert bool((data[:, 1:] > data[:, :-1]).all())
    context_mask = positions.mask_at(data, task.seq_len)[:, :c]
    assert bool((t[:, :c][~context_mask] == 0).all())
    assert bool(in_range(t[:, :c][context_mask], (1, task.vocab_size - 1)).all())
    assert bool((t[:, c] == task.vocab_size - 1).all())
    # The answers are the data tokens, in order.
    assert torch.equal(b.answer_tokens(), b.tokens_at("data"))
    assert torch.equal(b.role("query")[0], torch.arange(c, c + m))
    assert b.loss_mask.sum().item() == 256 * m


# --- ATR -------------------------------------------------------------------------------


def _parse_heads(row: list[int], key_range, value_range) -> dict[int, int]:
    """Key position -> position of the head of its innermost bracket (independent parser)."""
    stack, out = [], {}
    for i, tok in enumerate(row):
        if tok == 3:
            stack.append(i + 1)
        elif tok == 4:
            stack.pop()
        elif key_range[0] <= tok < key_range[1] and stack:
            out[i] = stack[-1]
        if tok == 2:
            break
    assert not stack
    return out


def test_atr_tree_structure_and_answer():
    task = small("atr")
    p = task.config.n_pairs
    b = task.sample(300, seed=6)
    t = b.tokens
    nested = far = 0
    for i in range(300):
        row = t[i].tolist()
        heads = _parse_heads(row, task.key_range, task.value_range)
        keys = b.role("key")[i].tolist()
        assert sorted(heads) == keys and len(keys) == p
        assert [heads[k] for k in keys] == b.role("value")[i].tolist()
        for k in keys:
            assert task.value_range[0] <= row[heads[k]] < task.value_range[1]
        assert len(set(row[k] for k in keys)) == p
        n_const = int((b.role("head")[i] >= 0).sum())
        head_tokens = [row[h] for h in b.role("head")[i].tolist() if h >= 0]
        assert len(set(head_tokens)) == n_const
        # Each constituent holds a key directly: every head is some key's value.
        assert set(heads.values()) == {h for h in b.role("head")[i].tolist() if h >= 0}
        q, a = b.role("query")[i, 0].item(), b.role("answer")[i, 0].item()
        qk = b.role("queried_key")[i, 0].item()
        assert row[q] == row[qk] and row[a] == row[heads[qk]]
        assert b.role("queried_value")[i, 0].item() == heads[qk]
        assert row[q - 1] == 2 and row[a + 1] == 2 and all(x == 0 for x in row[a + 2 :])
        nested += n_const > 1
        # Tree-structured: some key's value is not the nearest head before it.
        for k in keys:
            nearest = max(h for h in heads.values() if h < k)
            far += nearest != heads[k]
    assert nested > 150 and far > 30
    assert b.loss_mask.sum().item() == 300


def test_atr_depth_one_is_flat():
    b = small("atr", max_depth=1).sample(50, seed=0)
    assert bool((b.role("head")[:, 1:] == -1).all())
    assert bool((b.role("value") == 2).all())


# --- corruption --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ar", "mqar", "atr"])
@pytest.mark.parametrize("mode", ["key", "value"])
def test_corruption_changes_exactly_the_intended_token(name, mode):
    task = small(name)
    clean = task.sample(200, seed=9)
    before = clean.tokens.clone()
    bad = corrupt(clean, mode, seed=1)
    assert torch.equal(clean.tokens, before)
    role = "queried_key" if mode == "key" else "queried_value"
    pos = clean.role(role)[:, 0]
    diff = bad.tokens != clean.tokens
    assert bool((diff.sum(dim=1) == 1).all())
    assert bool(diff[torch.arange(200), pos].all())
    new = bad.tokens[torch.arange(200), pos]
    rng = task.key_range if mode == "key" else task.value_range
    assert bool(in_range(new, rng).all())
    if mode == "key":
        assert not bool((clean.tokens == new[:, None]).any())
    else:
        assert not bool((clean.tokens_at("value") == new[:, None]).any())
    assert torch.equal(bad.loss_mask, clean.loss_mask)
    assert bad.roles.keys() == clean.roles.keys()
    assert all(torch.equal(bad.roles[r], clean.roles[r]) for r in clean.roles)
    assert torch.equal(bad.answer_tokens(), clean.answer_tokens())
    assert bad.config["corruption"] == {"mode": mode, "seed": 1, "query_index": 0}
    assert torch.equal(corrupt(clean, mode, seed=1).tokens, bad.tokens)
    assert not torch.equal(corrupt(clean, mode, seed=2).tokens, bad.tokens)


def test_corruption_query_index_and_induction():
    clean = small("mqar").sample(64, seed=0)
    bad = corrupt(clean, "value", seed=0, query_index=2)
    pos = clean.role("queried_value")[:, 2]
    assert bool((bad.tokens != clean.tokens)[torch.arange(64), pos].all())
    with pytest.raises(ValueError, match="query_index"):
        corrupt(clean, "value", seed=0, query_index=4)
    ind = small("induction").sample(64, seed=0)
    bad = corrupt(ind, "value", seed=0)
    pos = ind.role("queried_value")[:, 0]
    assert bool((bad.tokens[torch.arange(64), pos] != ind.tokens[torch.arange(64), pos]).all())
    with pytest.raises(ValueError, match="no key token to substitute"):
        corrupt(ind, "key", seed=0)


def test_corruption_errors():
    sc = small("selective_copy").sample(4, seed=0)
    with pytest.raises(ValueError, match="queried_key"):
        corrupt(sc, "key", seed=0)
    ar = small("ar").sample(4, seed=0)
    with pytest.raises(ValueError, match="valid modes: key, value"):
        corrupt(ar, "pair", seed=0)


def test_task_from_batch_round_trip():
    task = small("atr", p_nest=0.25)
    b = task.sample(4, seed=0)
    again = task_from_batch(b)
    assert again.config == task.config
    assert torch.equal(again.sample(4, seed=0).tokens, b.tokens)


# --- sampling helpers and speed -----------------------------------------------------------------


@pytest.mark.parametrize("n,high", [(4, 4096), (16, 20), (20, 20)])
def test_sample_distinct(n, high):
    x = sample_distinct(3000, n, high, make_generator(0))
    assert x.shape == (3000, n) and int(x.min()) >= 0 and int(x.max()) < high
    assert bool((x.sort(dim=1).values.diff(dim=1) > 0).all())
    # Uniform positions: the first column is roughly uniform over the range.
    counts = torch.bincount(x[:, 0], minlength=high).double()
    if high <= 20:
        assert counts.min() > 0.6 * 3000 / high and counts.max() < 1.4 * 3000 / high
    with pytest.raises(ValueError):
        sample_distinct(1, high + 1, high, make_generator(0))


def test_sample_excluding():
    g = make_generator(0)
    exclude = torch.tensor([[3, 4, 5, 6], [3, -1, 9, 100], [3, 4, 5, 7]])
    for _ in range(50):
        out = sample_excluding(exclude, 3, 8, g)
        assert out[0].item() == 7 and out[2].item() == 6
        assert out[1].item() in (4, 5, 6, 7)
    with pytest.raises(ValueError, match="example 1"):
        sample_excluding(torch.tensor([[0, 9], [3, 4]]), 3, 5, g)


def test_ar_and_mqar_generate_thousands_fast():
    for task in (ARTask(), MQARTask(seq_len=256, n_pairs=16)):
        task.sample(8, seed=0)
        start = time.perf_counter()
        b = task.sample(4096, seed=1)
        assert time.perf_counter() - start < 1.0
        assert len(b) == 4096
