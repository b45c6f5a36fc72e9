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

taken of batch means, or per example with ``per_example``. Noising (patching corrupted
values into the clean run) uses the same formulas, so 1 means "no effect" and 0
"fully broken" there.

A ratio is formed only where its denominator means something. A metric's scale is
what the corruption does to it: ``s = mean_i |clean_i − corrupted_i|`` over the
batch's examples, in the metric's own units (probability for ``restored``, logits for
``restored_logit_diff``). A gap (per example, or of the batch means) below

    min_gap = max(GAP_FRACTION · s, GAP_FLOOR)        GAP_FRACTION = 0.1, GAP_FLOOR = 1e-6

gives NaN, not a number: an example the corruption barely moved, or a batch whose
per-example effects cancel (a random model: logit-difference gaps of ±2 whose mean is
0.06 gave ``restored_logit_diff`` of 25 and more). A kept ratio is then at most 10×
its numerator measured in units of the corruption's typical effect; the floor keeps
float32 noise out. ``exclusion_attrs`` gives ``<ratio>_min_gap`` and
``<ratio>_excluded`` for a result's ``attrs``: the examples left without a ratio
(counted per example; all valid examples when the ratio of batch means is undefined,
else 0). Means over examples skip NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssmlens.interp.tasks.base import TaskBatch

ROW_METRICS = ("logit_diff", "p_answer", "logp_answer", "kl", "accuracy")
METRICS = ("restored", "restored_logit_diff", "logit_diff", "p_answer", "logp_answer", "kl", "accuracy")
RATIOS = {"restored": "p_answer", "restored_logit_diff": "logit_diff"}  # restored fraction -> its metric
GAP_FRACTION = 0.1  # a denominator below this fraction of the corruption's mean effect gives NaN
GAP_FLOOR = 1e-6  # ... and one below this in any case (float32 noise of logits of order 10)


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


def min_gap(clean: Tensor, corrupted: Tensor) -> float:
    """The smallest |clean − corrupted| a restored fraction divides by (module docstring):
    ``GAP_FRACTION`` of the mean |clean_i − corrupted_i| over the examples (rows ``[batch]``
    of one metric; NaN rows skipped), and at least ``GAP_FLOOR``."""
    scale = float(nanmean((clean.double() - corrupted.double()).abs().reshape(-1)))
    return max(GAP_FRACTION * scale, GAP_FLOOR) if scale == scale else GAP_FLOOR


def restored_fraction(patched: Tensor, clean: Tensor, corrupted: Tensor, min_gap: float = GAP_FLOOR) -> Tensor:
    """(patched − corrupted) / (clean − corrupted); NaN where |clean − corrupted| is below
    ``min_gap`` (or NaN)."""
    den = clean - corrupted
    ok = den.abs() >= min_gap
    frac = (patched - corrupted) / torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok, frac, torch.full_like(frac, float("nan")))


def nanmean(x: Tensor, dim: int = -1) -> Tensor:
    """Mean over ``dim`` skipping NaN (NaN where every value is NaN)."""
    ok = ~torch.isnan(x)
    count = ok.sum(dim)
    mean = torch.where(ok, x, 0).sum(dim) / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


def excluded_count(clean: Tensor, corrupted: Tensor, gap: float, per_example: bool) -> int:
    """Examples left without a ratio, from the rows ``[batch]`` of one metric: those whose
    own gap is below ``gap`` (``per_example``); else every valid example when the gap of
    the batch means is below it, and none otherwise."""
    diff = clean.double() - corrupted.double()
    valid = ~torch.isnan(diff)
    if per_example:
        return int((valid & (diff.abs() < gap)).sum())
    mean_gap = float(nanmean(clean.double()) - nanmean(corrupted.double()))
    return 0 if abs(mean_gap) >= gap else int(valid.sum())


def exclusion_attrs(clean: dict[str, Tensor], corrupted: dict[str, Tensor], per_example: bool) -> dict[str, float]:
    """``{<ratio>_min_gap, <ratio>_excluded}`` for each restored fraction of ``RATIOS``, from
    the reference runs' rows ``{metric: [batch]}``: what a result's ``attrs`` keep."""
    out: dict[str, float] = {}
    for ratio, base in RATIOS.items():
        gap = min_gap(clean[base], corrupted[base])
        out[f"{ratio}_min_gap"] = gap
        out[f"{ratio}_excluded"] = excluded_count(clean[base], corrupted[base], gap, per_example)
    return out


def summarize(rows: dict[str, Tensor], clean: dict[str, Tensor], corrupted: dict[str, Tensor],
              per_example: bool = False) -> dict[str, Tensor]:
    """Metrics of interventions from per-example rows.

    rows: ``{name: [..., batch]}``; clean / corrupted: ``{name: [batch]}`` of the two
    reference runs. Returns ``{metric: [...]}`` for every name of ``METRICS`` (batch
    means), or ``[..., batch]`` with ``per_example`` (restored per example then). A ratio
    whose denominator is below ``min_gap`` is NaN (``exclusion_attrs`` counts them).
    """
    if per_example:
        mean = {k: v for k, v in rows.items()}
        ref_clean, ref_corr = clean, corrupted
    else:
        mean = {k: nanmean(v) for k, v in rows.items()}
        ref_clean = {k: nanmean(v) for k, v in clean.items()}
        ref_corr = {k: nanmean(v) for k, v in corrupted.items()}
    # the threshold comes from the per-example rows in both modes (module docstring)
    out = {ratio: restored_fraction(mean[base], ref_clean[base], ref_corr[base], min_gap(clean[base], corrupted[base]))
           for ratio, base in RATIOS.items()}
    out.update({k: mean[k] for k in ROW_METRICS})
    return out


def baseline(values: dict[str, Tensor]) -> dict[str, float]:
    """Batch means of a reference run's row metrics, as plain floats (for attrs)."""
    return {k: float(nanmean(v)) for k, v in values.items()}
