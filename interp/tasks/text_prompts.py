"""Prompt sets for pretrained models: TaskBatches with labelled roles (DESIGN §5), so that
probes (patching by role, attribution, caching) run on natural text as on the synthetic tasks.

``repeated_tokens(model, n, half_len)``: the standard induction test: random tokens
repeated once, ``[<bos>] r_0 … r_{H−1} r_0 … r_{H−1}``. In the second copy, r_i at
position ``o + H + i`` (o = 1 with a BOS) predicts r_{i+1}; its first occurrence is
the key, the token after it the value. Roles ``[batch, H − 1]``: ``query`` (second-copy
r_i, i < H − 1), ``answer`` (query + 1), ``key`` / ``queried_key`` (first-copy r_i),
``value`` / ``queried_value`` (first-copy r_{i+1}); ``last`` ``[batch, 1]``. Tokens are
distinct within an example, drawn from the tokenizer's ordinary tokens (or, for a
model without one, from ``[0, vocab_size)``). ``corrupt_repeated`` redraws the first
copy, so nothing earlier predicts the second: what induction removes.

``fact_recall(model, n, n_facts)``: ``"Facts: Mary lives in Paris. John lives in Rome. …
John lives in Rome"``. Names and cities are single tokens (``single_token_words`` keeps
those), and every role is found from the tokenization's character offsets: ``key`` /
``value`` ``[batch, n_facts]`` (each fact's name / city), ``queried_key`` /
``queried_value`` ``[batch, 1]`` (the queried fact's), ``query_key`` (the name in the
question), ``query`` and ``last`` (the token before the answer), ``answer`` (the answered
city). ``corrupt_facts(batch, "value" | "key", seed)`` swaps the queried fact's city
(or name) in context for one absent from the prompt, as ``ssmlens.interp.tasks.corrupt``
does for the synthetic tasks: positions, roles and the clean answer token stay.

``PROMPT_SETS`` / ``make_prompt_set(name, model, n, seq_len, seed)`` is what
``ssmlens cache --prompts`` uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmlens.interp.tasks import positions
from ssmlens.interp.tasks.base import TaskBatch
from ssmlens.interp.tasks.sampling import make_generator, sample_distinct

NAMES = ["Mary", "John", "Alice", "Bob", "James", "Sarah", "David", "Emma", "Michael", "Anna", "Peter", "Laura",
         "Paul", "Kate", "Mark", "Lucy", "Tom", "Jane", "Daniel", "Rachel", "Chris", "Helen", "George", "Linda"]
CITIES = ["Paris", "London", "Rome", "Berlin", "Madrid", "Tokyo", "Boston", "Chicago", "Dublin", "Vienna", "Moscow",
          "Sydney", "Toronto", "Seattle", "Denver", "Houston", "Prague", "Lisbon", "Athens", "Cairo", "Miami",
          "Oslo", "Delhi", "Dallas"]
PREFIX = "Facts:"  # so that every name, the first too, follows a space (" Mary": one token)
FACT_TEMPLATE = "{key} lives in {value}."
QUERY_TEMPLATE = "{key} lives in"


def _tokenizer(model):
    return getattr(model, "tokenizer", None)


def _pool(model) -> Tensor:
    """int64 ids that may appear in a random prompt: the tokenizer's ordinary tokens
    (not special or added ones), or every id of a model without a tokenizer."""
    tok = _tokenizer(model)
    if tok is None:
        return torch.arange(model.cfg.vocab_size)
    special = set(tok.tokenizer.get_added_tokens_decoder()) | {i for i in (tok.bos_id, tok.pad_id) if i is not None}
    keep = torch.ones(tok.vocab_size, dtype=torch.bool)
    keep[sorted(special)] = False
    return torch.nonzero(keep)[:, 0]


def _bos(model, prepend_bos: bool | None) -> int | None:
    tok = _tokenizer(model)
    want = (tok.prepend_bos if tok is not None else False) if prepend_bos is None else prepend_bos
    if not want:
        return None
    if tok is None or tok.bos_id is None:
        raise ValueError("prepend_bos=True needs a model whose tokenizer has a BOS token")
    return tok.bos_id


def repeated_tokens(model, n: int, half_len: int, seed: int = 0, prepend_bos: bool | None = None) -> TaskBatch:
    """``n`` repeated random-token prompts of ``2·half_len`` tokens (+ BOS); module docstring."""
    if half_len < 2:
        raise ValueError(f"half_len must be at least 2, got {half_len}")
    pool = _pool(model)
    if half_len > len(pool):
        raise ValueError(f"half_len={half_len} distinct tokens asked for, but only {len(pool)} are available")
    bos = _bos(model, prepend_bos)
    g = make_generator(seed)
    half = pool[sample_distinct(n, half_len, len(pool), g)]  # n H
    parts = ([torch.full((n, 1), bos, dtype=torch.int64)] if bos is not None else []) + [half, half]
    tokens = torch.cat(parts, dim=1)
    o = int(bos is not None)
    first = positions.fixed(list(range(o, o + half_len - 1)), n)  # first-copy r_i, i < H - 1
    query = first + half_len
    loss_mask = positions.mask_at(query, tokens.shape[1])
    roles = {"query": query, "answer": query + 1, "key": first, "value": first + 1, "queried_key": first.clone(),
             "queried_value": first + 1, "last": query[:, -1:].clone()}
    pool_high = int(pool.max()) + 1  # the pool is [0, pool_high) without the excluded (special) ids
    config = {"half_len": half_len, "bos": bos, "seed": seed, "pool_high": pool_high,
              "excluded": sorted(set(range(pool_high)) - set(pool.tolist()))}
    return TaskBatch(tokens, loss_mask, roles, model.cfg.vocab_size, "repeated_tokens", config)


def corrupt_repeated(batch: TaskBatch, seed: int) -> TaskBatch:
    """``batch`` with its first copy redrawn (distinct tokens, none of the example's
    originals); the second copy, roles and the clean answers stay."""
    if batch.task != "repeated_tokens":
        raise ValueError(f"corrupt_repeated takes a repeated_tokens batch, got {batch.task!r}")
    cfg, H = batch.config, batch.config["half_len"]
    o = int(cfg["bos"] is not None)
    keep = torch.ones(cfg["pool_high"], dtype=torch.bool)
    keep[cfg["excluded"]] = False
    pool = torch.nonzero(keep)[:, 0]
    g = make_generator(seed)
    tokens = batch.tokens.clone()
    n = tokens.shape[0]
    if len(pool) < 2 * H:
        raise ValueError(f"cannot redraw {H} tokens unlike the originals from {len(pool)} tokens")
    for row in range(n):  # per row: the pool without this example's tokens
        own = torch.isin(pool, tokens[row, o : o + H])
        free = pool[~own]
        tokens[row, o : o + H] = free[sample_distinct(1, H, len(free), g)[0]]
    config = {**cfg, "corruption": {"mode": "value", "seed": int(seed), "query_index": None}}
    return TaskBatch(tokens, batch.loss_mask.clone(), {k: v.clone() for k, v in batch.roles.items()},
                     batch.vocab_size, batch.task, config)


def single_token_words(model, words: list[str]) -> list[str]:
    """The words that are one token after a space (``" Paris"``) in ``model``'s tokenizer."""
    tok = model.require_tokenizer()
    return [w for w in words if len(tok.encode(" " + w, prepend_bos=False)) == 1]


def _token_at(offsets: list[tuple[int, int]], start: int, end: int, what: str) -> int:
    """The index of the one token covering characters [start, end)."""
    hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    if len(hits) != 1:
        raise ValueError(f"{what} spans {len(hits)} tokens, not one")
    return hits[0]


def _fact_prompt(tok, keys: list[str], values: list[str], q: int, bos: bool) -> tuple[list[int], dict[str, list[int]]]:
    """Token ids of one fact prompt and the token index of each labelled word."""
    text, spans = PREFIX, {"key": [], "value": []}
    for k, v in zip(keys, values):
        fact = FACT_TEMPLATE.format(key=k, value=v)
        base = len(text) + 1
        text += " " + fact
        spans["key"].append((base + fact.index(k), base + fact.index(k) + len(k)))
        vi = fact.index(v, fact.index(" "))
        spans["value"].append((base + vi, base + vi + len(v)))
    base = len(text) + 1
    text += " " + QUERY_TEMPLATE.format(key=keys[q])
    spans["query_key"] = [(base, base + len(keys[q]))]
    answer_start = len(text) + 1
    text += " " + values[q]
    spans["answer"] = [(answer_start, answer_start + len(values[q]))]
    ids, offsets = tok.encode_with_offsets(text, prepend_bos=bos)
    found = {role: [_token_at(offsets, a, b, f"{text[a:b]!r} in {text!r}") for a, b in s] for role, s in spans.items()}
    return ids, found


def fact_recall(model, n: int, n_facts: int = 3, seed: int = 0, prepend_bos: bool | None = None,
                names: list[str] | None = None, cities: list[str] | None = None) -> TaskBatch:
    """``n`` fact-recall prompts of ``n_facts`` facts each; module docstring."""
    tok = model.require_tokenizer()
    bos = _bos(model, prepend_bos) is not None
    names = single_token_words(model, names or NAMES)
    cities = single_token_words(model, cities or CITIES)
    if min(len(names), len(cities)) < n_facts + 1:
        raise ValueError(f"need {n_facts + 1} single-token names and cities, the tokenizer has "
                         f"{len(names)} and {len(cities)}")
    g = make_generator(seed)
    who = sample_distinct(n, n_facts, len(names), g)
    where = sample_distinct(n, n_facts, len(cities), g)
    asked = torch.randint(0, n_facts, (n,), generator=g)
    rows, found = [], []
    for i in range(n):
        ids, f = _fact_prompt(tok, [names[j] for j in who[i]], [cities[j] for j in where[i]], int(asked[i]), bos)
        rows.append(ids)
        found.append(f)
    if len({len(r) for r in rows}) != 1:
        raise ValueError("fact prompts tokenize to different lengths; give names and cities that are one token each")
    tokens = torch.tensor(rows, dtype=torch.int64)
    col = lambda role: torch.tensor([f[role] for f in found], dtype=torch.int64)  # noqa: E731
    q = asked[:, None]
    query = col("answer") - 1
    roles = {"key": col("key"), "value": col("value"), "queried_key": col("key").gather(1, q),
             "queried_value": col("value").gather(1, q), "query_key": col("query_key"), "query": query,
             "answer": col("answer"), "last": query.clone()}
    config = {"n_facts": n_facts, "seed": seed, "bos": bos,
              "key_tokens": [tok.encode(" " + w, prepend_bos=False)[0] for w in names],
              "value_tokens": [tok.encode(" " + w, prepend_bos=False)[0] for w in cities]}
    return TaskBatch(tokens, positions.mask_at(query, tokens.shape[1]), roles, model.cfg.vocab_size,
                     "fact_recall", config)


def corrupt_facts(batch: TaskBatch, mode: str, seed: int) -> TaskBatch:
    """The queried fact's city (``"value"``) or name (``"key"``) in context swapped for
    one that appears nowhere in the example; one token per example changes."""
    if batch.task != "fact_recall":
        raise ValueError(f"corrupt_facts takes a fact_recall batch, got {batch.task!r}")
    if mode not in ("key", "value"):
        raise ValueError(f"unknown corruption mode {mode!r}; valid modes: key, value")
    cands = torch.tensor(batch.config[f"{mode}_tokens"], dtype=torch.int64)
    pos = batch.roles[f"queried_{mode}"][:, 0]
    g = make_generator(seed)
    tokens = batch.tokens.clone()
    for row in range(tokens.shape[0]):
        free = cands[~torch.isin(cands, tokens[row])]
        if len(free) == 0:
            raise ValueError(f"no {mode} token absent from example {row} to substitute")
        tokens[row, pos[row]] = free[torch.randint(0, len(free), (1,), generator=g)]
    config = {**batch.config, "corruption": {"mode": mode, "seed": int(seed), "query_index": 0}}
    return TaskBatch(tokens, batch.loss_mask.clone(), {k: v.clone() for k, v in batch.roles.items()},
                     batch.vocab_size, batch.task, config)


def _repeated_for_length(model, n: int, seq_len: int, seed: int) -> TaskBatch:
    """Repeated tokens filling ``seq_len`` positions (BOS included)."""
    o = int(_bos(model, None) is not None)
    return repeated_tokens(model, n, (seq_len - o) // 2, seed)


def _facts_for_length(model, n: int, seq_len: int, seed: int) -> TaskBatch:
    """As many facts as fit ``seq_len`` tokens (at least 2)."""
    n_facts = 2
    while True:
        longer = fact_recall(model, 1, n_facts + 1, seed)
        if longer.seq_len > seq_len or n_facts + 2 > min(len(NAMES), len(CITIES)):
            return fact_recall(model, n, n_facts, seed)
        n_facts += 1


PROMPT_SETS = {"repeated_tokens": _repeated_for_length, "fact_recall": _facts_for_length}


def make_prompt_set(name: str, model, n: int, seq_len: int, seed: int = 0) -> TaskBatch:
    """``n`` prompts of the set ``name`` (``PROMPT_SETS``) of about ``seq_len`` tokens."""
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; valid prompt sets: {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[name](model, n, seq_len, seed)
