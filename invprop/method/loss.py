"""InvP losses as pure functions of a similarity matrix S = v @ V^T (B x n).

With E = exp(S / tau) and N_M(i) the M most similar bank entries of row i:

- instance:   L_ins = -log( E[i,i] / sum_{j in N_M(i)} E[i,j] )
- invariance: L_inv = -log( sum_{p in N^h(i)} E[i,p] / D(i) ), N^h(i) = the P hardest (or
  easiest) members of the propagated set, and D(i) the authors' code (sum_{N_M} E - E[i,i],
  or sum_{N_M} E with their --exclusive 0) or the paper's background (see
  :func:`invariance_loss`).

Everything is computed in float32 (inputs are cast first) and in log space (logsumexp), which
is the same function as the authors' ratio of exponentials without its overflow at small tau.
Nothing here synchronises the host, so it can run inside a CUDA training step.

Reference for the authors' arithmetic: ``InvariancePropagationLoss.forward`` in objective.py
of WangFeng18/InvariancePropagation (lines 109-146 at cad924e; the same arithmetic at
602add6 and on their 2020 branch, bd8f5f77dc9809db8e66b4071768e059a9204f73). Their
``-log(ratio + 1e-7)`` guard (lines 115, 132, 135) is the ``eps`` argument here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from invprop import names
from invprop.method.propagation import Propagation
from invprop.registry import Registry

__all__ = [
    "BACKGROUND_MODES",
    "POSITIVE_MODES",
    "Background",
    "InvPLoss",
    "TopM",
    "bank_similarities",
    "instance_loss",
    "invariance_loss",
    "invp_loss",
    "ramp_weight",
    "select_positives",
    "top_background",
]

# pretrain.positives -> whether the most similar members are taken (easy) or the least (hard).
POSITIVE_MODES: Registry[bool] = Registry("positives mode", names.POSITIVES)
POSITIVE_MODES.add("hard", False)
POSITIVE_MODES.add("easy", True)


class TopM(NamedTuple):
    """Top-M entries of each row: values [B, M] (descending) and their bank ids [B, M]."""

    values: Tensor
    ids: Tensor


class InvPLoss(NamedTuple):
    """Batch means: total = instance + weight * invariance (scalar tensors)."""

    total: Tensor
    instance: Tensor
    invariance: Tensor


def bank_similarities(embeddings: Tensor, bank: Tensor) -> Tensor:
    """S = embeddings @ bank^T in float32, [B, d] x [n, d] -> [B, n].

    Expects L2-normalised embeddings (the bank rows are normalised after their first update).
    Autocast is switched off and inputs are upcast, so bf16 embeddings still give fp32 S.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        return embeddings.float() @ bank.float().t()


def top_background(sim: Tensor, m: int) -> TopM:
    """The M most similar bank entries of each row (N_M), in no particular order.

    sim: [B, n]; returns TopM(values [B, M] fp32, ids LongTensor [B, M]). Every use of N_M
    is a sum or a membership test, so the sort the authors ask of `topk` is skipped: it is
    a fifth of the step's top-M cost on the CPU (bench/topm_bank.py).
    """
    if not 1 <= m <= sim.shape[1]:
        raise ValueError(f"n_background must be in [1, n={sim.shape[1]}], got {m}")
    values, ids = sim.float().topk(m, dim=1, largest=True, sorted=False)
    return TopM(values, ids)


def select_positives(
    sim: Tensor, prop: Propagation, n_pos: int, mode: str = "hard"
) -> tuple[Tensor, Tensor]:
    """N^h: the P members of each propagated set with the lowest (hard) or highest (easy) S.

    sim: [B, n]; prop: Propagation [B, C]; returns (ids LongTensor [B, P], mask BoolTensor
    [B, P]), ordered hardest-first (hard) or easiest-first (easy). Rows with fewer than P
    valid members use all of them and mask the rest (masked ids are 0 or a member; never the
    anchor padded in). The selection runs on the candidate list as is, like the authors'
    ``pos_sim.topk(min(n_pos, C), largest=False)``: with ``concat`` propagation a duplicated
    candidate can be selected several times and the anchor itself can be selected. Unlike the
    authors (who take min(P, C)), P > C is an error (docs/method.md, "Edge rules").
    """
    easy = POSITIVE_MODES[mode]
    c = prop.ids.shape[1]
    if not 1 <= n_pos <= c:
        raise ValueError(f"n_pos must be in [1, {c}] (largest positive set), got {n_pos}")
    cand = sim.detach().float().gather(1, prop.ids)
    cand = cand.masked_fill(~prop.mask, -math.inf if easy else math.inf)  # masked sort last
    slot = cand.topk(n_pos, dim=1, largest=easy, sorted=True).indices
    return prop.ids.gather(1, slot), prop.mask.gather(1, slot)


def _masked_logsumexp(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """logsumexp over masked entries of each row, and whether the row has any.

    Rows with no entry get a finite placeholder (never -inf), so their gradient is finite and
    the caller can zero them with ``torch.where`` without producing NaN.
    """
    has_any = mask.any(dim=1)
    x = x.masked_fill(~mask, -math.inf)
    x = torch.where(has_any.unsqueeze(1), x, 0.0)
    return torch.logsumexp(x, dim=1), has_any


def _neg_log(log_ratio: Tensor, eps: float) -> Tensor:
    """-log(ratio + eps) from log(ratio); eps = 1e-7 is the authors' guard, 0 by default."""
    if eps == 0:
        return -log_ratio
    return -torch.logaddexp(log_ratio, torch.full_like(log_ratio, math.log(eps)))


def _instance_from_logits(self_logit: Tensor, bg_logits: Tensor, eps: float) -> Tensor:
    """L_ins [B] from logits S/tau: self [B] and background [B, M]."""
    return _neg_log(self_logit - torch.logsumexp(bg_logits, dim=1), eps)


def instance_loss(
    sim: Tensor, anchors: Tensor, bg_ids: Tensor, temperature: float, eps: float = 0.0
) -> Tensor:
    """L_ins [B] = -log( E[i,i] / sum_{j in N_M(i)} E[i,j] ), E = exp(S / tau).

    sim: [B, n]; anchors: LongTensor [B] (bank index of each row); bg_ids: [B, M] = N_M.
    As in the authors' code, E[i,i] is in the denominator only when i is among the top M.
    """
    logits = sim.float().gather(1, torch.cat([anchors.unsqueeze(1), bg_ids], 1)) / temperature
    return _instance_from_logits(logits[:, 0], logits[:, 1:], eps)


def _membership(query: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """BoolTensor [B, M]: query[b, j] is a valid member of row b of (ids, mask) [B, C].

    Sort + searchsorted per row: O(B * (M + C)) memory instead of the B x M x C broadcast
    compare (44M bools at B=128, M=4096, C=84).
    """
    keys = torch.where(mask, ids, -1).sort(dim=1).values  # -1 never matches a bank id
    query = query.contiguous()
    pos = torch.searchsorted(keys, query).clamp_(max=keys.shape[1] - 1)
    return keys.gather(1, pos) == query


class Background(NamedTuple):
    """What a background mode's denominator D(i) may use, for a batch of B anchors."""

    self_logit: Tensor  # [B] S[i,i] / tau
    logits: Tensor  # [B, M] S / tau over N_M(i)
    ids: Tensor  # [B, M] N_M(i), bank ids
    is_self: Tensor  # [B, M] which N_M entries are the anchor i
    log_num: Tensor  # [B] log of the numerator, sum over the selected positives N^h(i)
    prop: Propagation  # [B, C] the full propagated sets


# pretrain.background -> log D(i) [B] (see invariance_loss).
BACKGROUND_MODES: Registry[Callable[[Background], Tensor]] = Registry(
    "background mode", names.BACKGROUNDS
)


@BACKGROUND_MODES.register("code")
def _code_background(bg: Background) -> Tensor:
    if bg.ids.shape[1] < 2:
        raise ValueError("background='code' needs n_background >= 2")
    log_others = torch.logsumexp(bg.logits.masked_fill(bg.is_self, -math.inf), dim=1)
    # i outside N_M: every bg term >= E[i,i], so E[i,i]/sum <= 1/M and log1p is safe
    frac = torch.where(bg.is_self.any(dim=1), 0.0, torch.exp(bg.self_logit - log_others))
    return log_others + torch.log1p(-frac)


@BACKGROUND_MODES.register("code_inclusive")
def _code_inclusive_background(bg: Background) -> Tensor:
    return torch.logsumexp(bg.logits, dim=1)


@BACKGROUND_MODES.register("paper")
def _paper_background(bg: Background) -> Tensor:
    drop = _membership(bg.ids, bg.prop.ids, bg.prop.mask) | bg.is_self
    log_bg, has_bg = _masked_logsumexp(bg.logits, ~drop)
    return torch.where(has_bg, torch.logaddexp(log_bg, bg.log_num), bg.log_num)


def _invariance_from_logits(
    self_logit: Tensor,
    bg_logits: Tensor,
    pos_logits: Tensor,
    anchors: Tensor,
    bg_ids: Tensor,
    pos_mask: Tensor,
    prop: Propagation,
    background: str,
    eps: float,
) -> Tensor:
    """L_inv [B] from logits S/tau: self [B], background [B, M], selected positives [B, P]."""
    log_denominator = BACKGROUND_MODES[background]
    is_self = bg_ids == anchors.unsqueeze(1)
    log_num, has_pos = _masked_logsumexp(pos_logits, pos_mask)
    log_den = log_denominator(Background(self_logit, bg_logits, bg_ids, is_self, log_num, prop))
    loss = _neg_log(log_num - log_den, eps)
    return torch.where(has_pos, loss, 0.0)


def invariance_loss(
    sim: Tensor,
    anchors: Tensor,
    bg_ids: Tensor,
    pos_ids: Tensor,
    pos_mask: Tensor,
    prop: Propagation,
    temperature: float,
    background: str = "code",
    eps: float = 0.0,
) -> Tensor:
    """L_inv [B] = -log( sum_{p in N^h(i)} E[i,p] / D(i) ); rows without positives give 0.

    sim: [B, n]; anchors: [B]; bg_ids: [B, M] = N_M; pos_ids/pos_mask: [B, P] = N^h from
    :func:`select_positives`; prop: the full propagated sets [B, C] (used by ``paper``).

    - ``code`` (authors' ``exclusive`` default): D = sum_{j in N_M} E[i,j] - E[i,i], E[i,i]
      subtracted even when i is not in the top M; duplicate positives count as often as they
      were selected. The numerator may then exceed D (ratio > 1, negative loss). Needs M >= 2.
      Computed as the sum over N_M without i, minus E[i,i] only when i is outside N_M (no
      cancellation; identical value).
    - ``code_inclusive`` (authors' ``--exclusive 0``, objective.py:135 at cad924e):
      D = sum_{j in N_M} E[i,j], the anchor's term included when i is among the top M (their
      ``(sum_{N_M} E - E[i,i]) + E[i,i]``); positives count as in ``code``.
    - ``paper``: D = sum over B(i) = (N_M(i) minus all propagated positives minus i) union
      N^h(i), i.e. the background part plus the numerator itself, so the ratio is <= 1. With
      ``concat`` propagation the N^h part is the multiset used in the numerator.
    """
    idx = torch.cat([anchors.unsqueeze(1), bg_ids, pos_ids], 1)
    logits = sim.float().gather(1, idx) / temperature
    m = bg_ids.shape[1]
    return _invariance_from_logits(
        logits[:, 0], logits[:, 1 : m + 1], logits[:, m + 1 :],
        anchors, bg_ids, pos_mask, prop, background, eps,
    )  # fmt: skip


def invp_loss(
    sim: Tensor,
    anchors: Tensor,
    prop: Propagation | None,
    *,
    temperature: float,
    n_background: int,
    n_pos: int,
    weight: float,
    positives: str = "hard",
    background: str = "code",
    eps: float = 0.0,
) -> InvPLoss:
    """L = mean(L_ins) + weight * mean(L_inv) for one batch (losses use the OLD bank/table).

    sim: [B, n] from :func:`bank_similarities`; anchors: [B]; prop: Propagation of the
    anchors (may be None when weight == 0). weight = lambda * w(epoch) (see
    :func:`ramp_weight`); with weight 0 the invariance term is not computed and reported as 0.
    Rows without positives contribute 0 to the invariance mean (which divides by B).
    All logits are read from ``sim`` with one gather, so the backward pass writes a single
    dense [B, n] gradient (655 MB at n = 1.28M) instead of one per term.
    """
    sim = sim.float()
    bg_ids = top_background(sim.detach(), n_background).ids
    idx = [anchors.unsqueeze(1), bg_ids]
    invp_on = weight != 0
    if invp_on:
        if prop is None:
            raise ValueError("invp_loss needs a Propagation when weight != 0")
        pos_ids, pos_mask = select_positives(sim, prop, n_pos, positives)
        idx.append(pos_ids)
    logits = sim.gather(1, torch.cat(idx, 1)) / temperature
    self_logit, bg_logits = logits[:, 0], logits[:, 1 : n_background + 1]
    instance = _instance_from_logits(self_logit, bg_logits, eps).mean()
    if not invp_on:
        return InvPLoss(instance, instance, torch.zeros_like(instance))
    invariance = _invariance_from_logits(
        self_logit, bg_logits, logits[:, n_background + 1 :],
        anchors, bg_ids, pos_mask, prop, background, eps,
    ).mean()  # fmt: skip
    return InvPLoss(instance + weight * invariance, instance, invariance)


def ramp_weight(epoch: int, ramp_epoch: int, lambda_inv: float) -> float:
    """Binary ramp-up: 0 while epoch <= ramp_epoch (epochs count from 1), lambda_inv after.

    As the authors' code: main.py at WangFeng18/InvariancePropagation@cad924e counts epochs
    from 1 (``range(start_epoch, max_epoch)``, ``start_epoch = 1``) and weights the term by
    ``BinaryRampUp(i_epoch, 30) = int(i_epoch > 30)``, so it starts at epoch 31, i.e.
    ramp_epoch + 1 here (docs/method.md's rule).
    """
    if epoch < 1:
        raise ValueError(f"epochs count from 1, got {epoch}")
    return float(lambda_inv) if epoch > ramp_epoch else 0.0
