"""How much an intervention moves the model's answer, read at the query positions.

The logits read are those at role ``query`` (the position whose next token is the
answer; ``answer − 1`` for tasks without that role); the right answer is the token at
role ``answer`` of the *clean* batch (``corrupt`` keeps it in the corrupted batch).

Per example (averaged over its valid queries):

- ``logit_diff``: logit(answer) − logit(alt). ``alt`` is the corrupted batch's answer
  where it differs from the clean one (a value corruption: the substituted value at
  ``queried_value``, or a changed token at ``answer``); otherwise (key corruption,
  no corrupted batch) it is the best *other* token of the run being measured, so
  the logit difference is the answer's margin, max_{t≠answer} being read per run.
- ``p_answer``: softmax probability of the answer; ``logp_answer`` its log.
- ``kl``: KL(clean ‖ run), from the clean run's distribution at the same positions.
- ``accuracy``: 1 where the argmax is the answer.

Over a batch (``summarize``): the mean of each, and the restored fractions

    restored            = (p_patch − p_corr) / (p_clean − p_corr)      (of mean p_answer)
    restored_logit_diff = (LD_patch − LD_corr) / (LD_clean − LD_corr)  (of mean logit_diff)

taken of batch means (per-example denominators can be ~0), NaN when the clean and
corrupted means are equal. Noising (patching corrupted values into the clean run)
uses the same formulas, so 1 means "no effect" and 0 "fully broken" there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssmlens.interp.tasks.base import TaskBatch

ROW_METRICS = ("logit_diff", "p_answer", "logp_answer", "kl", "accuracy")
METRICS = ("restored", "restored_logit_diff", "logit_diff", "p_answer", "logp_answer", "kl", "accuracy")
_EPS = 1e-9


@dataclass
class AnswerSpec:
    """Where to read logits and what counts as right, per example: int64 ``[batch, Q]``."""

    query: Tensor  # positions whose logits are read (-1: no query in that column)
    answer: Tensor  # right answer token (-1: none)
    alt: Tensor  # contrast token for logit_diff (-1: best other token)

    def __post_init__(self) -> None:
        if not (self.query.shape == self.answer.shape == self.alt.shape) or self.query.ndim != 2:
            raise ValueError(f"query {tuple(self.query.shape)}, answer {tuple(self.answer.shape)} and alt "
                             f"{tuple(self.alt.shape)} must all be [batch, Q]")
        self.answer = torch.where(self.query >= 0, self.answer, torch.full_like(self.answer, -1))

    def select(self, ex: Tensor) -> "AnswerSpec":
        return AnswerSpec(self.query[ex], self.answer[ex], self.alt[ex])

    @property
    def last_position(self) -> Tensor:
        """int64 ``[batch]``: the last position read per example (-1 if none)."""
        return self.query.max(dim=1).values


def answer_spec(clean: TaskBatch, corrupted: TaskBatch | None = None, *, query_index: int | None = None,
                alt_tokens: Tensor | None = None) -> AnswerSpec:
    """The metric positions and tokens of a clean batch (module docstring).

    ``query_index`` keeps one query column (MQAR); by default the one the corrupted
    batch's ``config["corruption"]`` names, else every column. ``alt_tokens``
    (``[batch, Q]``, -1 = best other) overrides the contrast tokens.
    """
    answer_pos = clean.role("answer")
    query = clean.roles["query"].clone() if "query" in clean.roles else torch.where(
        answer_pos >= 0, answer_pos - 1, answer_pos)
    if query.shape != answer_pos.shape:
        raise ValueError(f"roles query {tuple(query.shape)} and answer {tuple(answer_pos.shape)} differ in shape")
    answer = clean.answer_tokens()
    if alt_tokens is not None:
        alt = torch.as_tensor(alt_tokens, dtype=torch.int64).reshape(answer.shape).clone()
    else:
        alt = torch.full_like(answer, -1)
        if corrupted is not None:
            alt = _counterfactual(clean, corrupted, answer)
    if query_index is None and corrupted is not None and query.shape[1] > 1:
        query_index = corrupted.config.get("corruption", {}).get("query_index")
    if query_index is not None:
        if not -query.shape[1] <= query_index < query.shape[1]:
            raise ValueError(f"query_index {query_index} out of range: {query.shape[1]} queries")
        sl = slice(query_index, query_index + 1 if query_index != -1 else None)
        query, answer, alt = query[:, sl], answer[:, sl], alt[:, sl]
    return AnswerSpec(query, answer, alt)


def _counterfactual(clean: TaskBatch, corrupted: TaskBatch, answer: Tensor) -> Tensor:
    """The corrupted run's answer where it differs from the clean one, else -1."""
    alt = torch.full_like(answer, -1)
    corr_answer = corrupted.answer_tokens()
    if corr_answer.shape == answer.shape:
        alt = torch.where(corr_answer != answer, corr_answer, alt)
    if "queried_value" in clean.roles and "queried_value" in corrupted.roles:
        a, b = clean.tokens_at("queried_value"), corrupted.tokens_at("queried_value")
        if a.shape == answer.shape == b.shape:
            alt = torch.where((alt < 0) & (a != b) & (b >= 0), b, alt)
    return torch.where(alt == answer, torch.full_like(alt, -1), alt)


def query_logits(logits: Tensor, query: Tensor) -> Tensor:
    """``[batch, pos, vocab]`` logits -> ``[batch, Q, vocab]`` at the query positions."""
    idx = query.clamp(min=0)[..., None].expand(-1, -1, logits.shape[-1])
    return logits.gather(1, idx)


def row_metrics(logits_q: Tensor, answer: Tensor, alt: Tensor, ref_logp: Tensor | None = None) -> dict[str, Tensor]:
    """Per-example metrics ``{name: [rows]}`` from logits ``[rows, Q, vocab]``.

    answer, alt: int64 ``[rows, Q]`` (-1 answer: column ignored; -1 alt: best other
    token). ref_logp: the clean run's log-probabilities ``[rows, Q, vocab]`` for KL.
    Computed in float64; an example without a valid query gives NaN.
    """
    logits = logits_q.detach().double()
    valid = answer >= 0
    ans = answer.clamp(min=0)[..., None]
    logp = logits.log_softmax(-1)
    la = logits.gather(-1, ans)[..., 0]
    best_other = logits.scatter(-1, ans, float("-inf")).max(-1).values
    lb = torch.where(alt >= 0, logits.gather(-1, alt.clamp(min=0)[..., None])[..., 0], best_other)
    out = {
        "logit_diff": la - lb,
        "p_answer": logp.gather(-1, ans)[..., 0].exp(),
        "logp_answer": logp.gather(-1, ans)[..., 0],
        "accuracy": (logits.argmax(-1) == answer).double(),
    }
    if ref_logp is not None:
        ref = ref_logp.double()
        out["kl"] = (ref.exp() * (ref - logp)).sum(-1)
    else:
        out["kl"] = torch.full_like(la, float("nan"))
    count = valid.sum(-1)
    return {k: torch.where(count > 0, (v * valid).sum(-1) / count.clamp(min=1), float("nan")) for k, v in out.items()}


def restored_fraction(patched: Tensor, clean: Tensor, corrupted: Tensor) -> Tensor:
    """(patched − corrupted) / (clean − corrupted); NaN where clean ≈ corrupted."""
    den = clean - corrupted
    frac = (patched - corrupted) / torch.where(den.abs() > _EPS, den, torch.ones_like(den))
    return torch.where(den.abs() > _EPS, frac, torch.full_like(frac, float("nan")))


def _nanmean(x: Tensor, dim: int = -1) -> Tensor:
    ok = ~torch.isnan(x)
    return torch.where(ok, x, 0).sum(dim) / ok.sum(dim).clamp(min=1)


def summarize(rows: dict[str, Tensor], clean: dict[str, Tensor], corrupted: dict[str, Tensor],
              per_example: bool = False) -> dict[str, Tensor]:
    """Metrics of interventions from per-example rows.

    rows: ``{name: [..., batch]}``; clean / corrupted: ``{name: [batch]}`` of the two
    reference runs. Returns ``{metric: [...]}`` for every name of ``METRICS`` (batch
    means), or ``[..., batch]`` with ``per_example`` (restored per example then).
    """
    if per_example:
        mean = {k: v for k, v in rows.items()}
        ref_clean, ref_corr = clean, corrupted
    else:
        mean = {k: _nanmean(v) for k, v in rows.items()}
        ref_clean = {k: _nanmean(v) for k, v in clean.items()}
        ref_corr = {k: _nanmean(v) for k, v in corrupted.items()}
    out = {
        "restored": restored_fraction(mean["p_answer"], ref_clean["p_answer"], ref_corr["p_answer"]),
        "restored_logit_diff": restored_fraction(mean["logit_diff"], ref_clean["logit_diff"],
                                                 ref_corr["logit_diff"]),
    }
    out.update({k: mean[k] for k in ROW_METRICS})
    return out


def baseline(values: dict[str, Tensor]) -> dict[str, float]:
    """Batch means of a reference run's row metrics, as plain floats (for attrs)."""
    return {k: float(_nanmean(v)) for k, v in values.items()}
