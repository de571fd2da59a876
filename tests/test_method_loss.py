"""InvP losses vs per-sample float64 Python references, plus a toy training run."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from invprop.method import (
    MemoryBank,
    Propagation,
    bank_similarities,
    instance_loss,
    invariance_loss,
    invp_loss,
    max_positives,
    propagate,
    propagate_exact,
    ramp_weight,
    select_positives,
    top_background,
)

FAST = settings(max_examples=30, deadline=None)


# ----------------------------------------------------------------- plain references


def ref_top(row: list[float], m: int) -> list[int]:
    return sorted(range(len(row)), key=lambda j: -row[j])[:m]


def ref_candidates(prop: Propagation, b: int) -> list[int]:
    """Valid candidates of row b as a list (duplicates kept, as in the concat form)."""
    return prop.ids[b][prop.mask[b]].tolist()


def ref_selected(row: list[float], cands: list[int], p: int, mode: str) -> list[float]:
    vals = sorted(row[c] for c in cands)
    return (vals if mode == "hard" else vals[::-1])[:p]


def ref_instance(row: list[float], a: int, m: int, tau: float) -> float:
    den = sum(math.exp(row[j] / tau) for j in ref_top(row, m))
    return -math.log(math.exp(row[a] / tau) / den)


def ref_invariance(
    row: list[float], a: int, m: int, cands: list[int], p: int, mode: str, tau: float, bg: str
) -> float:
    sel = ref_selected(row, cands, p, mode)
    if not sel:
        return 0.0
    num = sum(math.exp(v / tau) for v in sel)
    top = ref_top(row, m)
    if bg == "code":  # authors: sum over top-M minus E[i,i], whether or not i is in the top-M
        den = sum(math.exp(row[j] / tau) for j in top) - math.exp(row[a] / tau)
    elif bg == "code_inclusive":  # authors' --exclusive 0: that, plus E[i,i] again
        den = sum(math.exp(row[j] / tau) for j in top) - math.exp(row[a] / tau)
        den += math.exp(row[a] / tau)
    else:  # paper: (N_M minus all positives minus i) union N^h
        positives = set(cands)
        den = sum(math.exp(row[j] / tau) for j in top if j not in positives and j != a) + num
    return -math.log(num / den)


def make_case(
    seed: int, n: int = 40, b: int = 10, k: int = 3, p_unknown: float = 0.15, rank: int = 12
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sim [b, n] fp32 in [-1, 1], anchors [b], table [n, k] with -1 rows/entries).

    Odd rows have the anchor at similarity 1 (inside any top-M); even rows put it just below
    the other entry of index ``rank`` (0-based, descending): outside a top-M with M <= rank,
    but with an E[i,i] comparable to the background's.
    """
    rng = np.random.default_rng(seed)
    sim = torch.from_numpy(rng.uniform(-1, 1, size=(b, n))).float()
    anchors = torch.from_numpy(rng.choice(n, size=b, replace=False)).long()
    rows = torch.arange(b)
    sim[rows, anchors] = -2.0
    just_outside = sim.sort(dim=1, descending=True).values[:, rank] - 1e-3
    sim[rows, anchors] = torch.where(rows % 2 == 0, just_outside, 1.0)
    table = torch.from_numpy(rng.integers(0, n, size=(n, k))).long()
    table[torch.from_numpy(rng.random((n, k)) < p_unknown)] = -1
    table[anchors[0]] = -1  # one anchor without any positive
    return sim, anchors, table


# ----------------------------------------------------------------- similarities, top-M


def test_bank_similarities_fp32_from_bf16_and_under_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(6, 16, generator=g), dim=1)
    bank = F.normalize(torch.randn(50, 16, generator=g), dim=1)
    ref = emb.double() @ bank.double().t()
    s32 = bank_similarities(emb, bank)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), ref, rtol=0, atol=1e-6)
    emb16, bank16 = emb.bfloat16(), bank.bfloat16()
    s16 = bank_similarities(emb16, bank16)
    assert s16.dtype == torch.float32  # upcast first, then multiply in fp32
    torch.testing.assert_close(s16, emb16.float() @ bank16.float().t(), rtol=0, atol=1e-6)
    torch.testing.assert_close(s16, s32, rtol=0, atol=2e-2)  # bf16 rounding of the inputs only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s_ac = bank_similarities(emb, bank)
    assert s_ac.dtype == torch.float32
    torch.testing.assert_close(s_ac, s32, rtol=0, atol=1e-6)


def test_top_background_matches_sort() -> None:
    sim, _, _ = make_case(1)
    top = top_background(sim, 7)
    want = sim.sort(dim=1, descending=True)
    got_values, order = top.values.sort(dim=1, descending=True)  # N_M is a set: any order
    assert torch.equal(got_values, want.values[:, :7])
    assert torch.equal(top.ids.gather(1, order), want.indices[:, :7])
    assert torch.equal(sim.gather(1, top.ids), top.values)
    assert top.values.dtype == torch.float32
    with pytest.raises(ValueError):
        top_background(sim, sim.shape[1] + 1)


# ----------------------------------------------------------------- positive selection


@FAST
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["exact", "concat"]),
    st.sampled_from(["hard", "easy"]),
    st.integers(1, 3),
    st.integers(1, 3),
)
def test_select_positives_extremes(seed: int, prop_mode: str, mode: str, k: int, hops: int) -> None:
    sim, anchors, table = make_case(seed, n=20, b=6, k=k, p_unknown=0.3)
    prop = propagate(table, anchors, hops, prop_mode)
    c = max_positives(k, hops)
    p = int(np.random.default_rng(seed).integers(1, c + 1))
    ids, mask = select_positives(sim, prop, p, mode)
    assert ids.shape == mask.shape == (6, p)
    for b in range(6):
        row = sim[b].double().tolist()
        cands = ref_candidates(prop, b)
        count = min(p, len(cands))
        assert mask[b].tolist() == [True] * count + [False] * (p - count)  # masked, not padded
        picked = [row[i] for i in ids[b][mask[b]].tolist()]
        assert picked == ref_selected(row, cands, p, mode)  # least (hard) / most (easy) similar
        if prop_mode == "exact":
            assert len(set(ids[b][mask[b]].tolist())) == count  # never repeats a member
            assert anchors[b].item() not in ids[b][mask[b]].tolist()


def test_select_positives_concat_picks_duplicates_like_the_authors() -> None:
    # 0 <-> 1 <-> 2 fully connected: concat candidates of 0 are [1, 2, 0, 2, 0, 1]
    table = torch.tensor([[1, 2], [0, 2], [0, 1]])
    sim = torch.tensor([[0.9, 0.1, 0.5]])
    prop = propagate(table, torch.tensor([0]), 2, "concat")
    ids, mask = select_positives(sim, prop, 3, "hard")
    assert ids[0].tolist() == [1, 1, 2] and mask.all()
    ids, _ = select_positives(sim, prop, 2, "easy")
    assert ids[0].tolist() == [0, 0]  # the anchor itself is a candidate in the authors' code


def test_select_positives_rejects_bad_params() -> None:
    sim, anchors, table = make_case(0)
    prop = propagate_exact(table, anchors, 2)
    with pytest.raises(ValueError, match="n_pos"):
        select_positives(sim, prop, max_positives(3, 2) + 1, "hard")
    with pytest.raises(ValueError, match="positives mode"):
        select_positives(sim, prop, 2, "medium")


# ----------------------------------------------------------------- losses vs references


@pytest.mark.parametrize("tau", [0.07, 0.01])  # 0.01: exp(1/tau) overflows fp32 if done naively
def test_instance_loss_matches_reference(tau: float) -> None:
    sim, anchors, _ = make_case(2)
    m = 8
    bg_ids = top_background(sim, m).ids
    got = instance_loss(sim, anchors, bg_ids, tau)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    for b in range(sim.shape[0]):
        want = ref_instance(sim[b].double().tolist(), anchors[b].item(), m, tau)
        assert got[b].item() == pytest.approx(want, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("background", ["code", "code_inclusive", "paper"])
@pytest.mark.parametrize("prop_mode", ["exact", "concat"])
@pytest.mark.parametrize("mode", ["hard", "easy"])
@pytest.mark.parametrize("tau", [0.07, 0.01])
def test_invariance_loss_matches_reference(
    background: str, prop_mode: str, mode: str, tau: float
) -> None:
    sim, anchors, table = make_case(3)
    m, p, hops = 12, 5, 2
    prop = propagate(table, anchors, hops, prop_mode)
    bg_ids = top_background(sim, m).ids
    in_top = (bg_ids == anchors[:, None]).any(1)
    assert in_top.any() and (~in_top).any()  # both the in-top-M and the not-in-top-M case
    pos_ids, pos_mask = select_positives(sim, prop, p, mode)
    got = invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, tau, background)
    assert got.shape == (sim.shape[0],) and got.dtype == torch.float32
    assert torch.isfinite(got).all()
    for b in range(sim.shape[0]):
        row = sim[b].double().tolist()
        cands = ref_candidates(prop, b)
        want = ref_invariance(row, anchors[b].item(), m, cands, p, mode, tau, background)
        assert got[b].item() == pytest.approx(want, rel=1e-5, abs=1e-4), (b, cands)
    assert got[0].item() == 0.0  # anchor 0 has no positive


def test_code_mode_subtracts_anchor_term_outside_top_m() -> None:
    """Authors' arithmetic: sum_{N_M} E - E[i,i] even when i is not among the top M."""
    sim = torch.tensor([[0.49, 0.52, 0.51, 0.50, 0.10, -0.20]])  # anchor 0 is 4th: outside M=3
    table = torch.tensor([[4, 5], [0, 2], [0, 1], [0, 1], [0, 5], [0, 4]])
    anchors, tau, m = torch.tensor([0]), 0.1, 3
    prop = propagate_exact(table, anchors, 1)
    bg_ids = top_background(sim, m).ids
    assert 0 not in bg_ids[0].tolist()
    pos_ids, pos_mask = select_positives(sim, prop, 2, "hard")
    got = invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, tau, "code")
    e = [math.exp(v / tau) for v in sim[0].double().tolist()]
    want = -math.log((e[4] + e[5]) / (e[1] + e[2] + e[3] - e[0]))
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert abs(got.item() + math.log((e[4] + e[5]) / (e[1] + e[2] + e[3]))) > 0.1


def test_code_inclusive_mode_is_the_top_m_sum_with_or_without_the_anchor() -> None:
    """The authors' --exclusive 0 (objective.py:135): (sum_{N_M} E - E[i,i]) + E[i,i]."""
    sim = torch.tensor([[0.49, 0.52, 0.51, 0.50, 0.10, -0.20], [0.9, 0.52, 0.51, 0.5, 0.1, 0.0]])
    table = torch.tensor([[4, 5], [0, 2], [0, 1], [0, 1], [0, 5], [0, 4]])
    anchors, tau, m = torch.tensor([0, 0]), 0.1, 3  # row 0: anchor outside the top 3; row 1: in
    prop = propagate_exact(table, anchors, 1)
    bg_ids = top_background(sim, m).ids
    pos_ids, pos_mask = select_positives(sim, prop, 2, "hard")
    got = invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, tau, "code_inclusive")
    e = [[math.exp(v / tau) for v in row] for row in sim.double().tolist()]
    outside = -math.log((e[0][4] + e[0][5]) / (e[0][1] + e[0][2] + e[0][3]))
    inside = -math.log((e[1][4] + e[1][5]) / (e[1][0] + e[1][1] + e[1][2]))
    assert got.tolist() == pytest.approx([outside, inside], rel=1e-5)


def test_concat_duplicates_count_in_code_mode() -> None:
    table = torch.tensor([[1, 2], [0, 2], [0, 1], [0, 1], [2, 3]])
    sim = torch.tensor([[0.3, 0.2, 0.8, -0.5, 0.1]])
    anchors = torch.tensor([0])
    tau, m, p = 0.1, 4, 3
    prop = propagate(table, anchors, 2, "concat")
    bg_ids = top_background(sim, m).ids
    pos_ids, pos_mask = select_positives(sim, prop, p, "hard")
    # candidates [1, 2, 0, 2, 0, 1]: node 1 selected twice, then the anchor itself
    assert pos_ids[0].tolist() == [1, 1, 0]
    got = invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, tau, "code")
    e = [math.exp(s / tau) for s in sim[0].double().tolist()]
    want = -math.log((2 * e[1] + e[0]) / (e[2] + e[0] + e[1] + e[4] - e[0]))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_authors_eps_guard() -> None:
    sim, anchors, table = make_case(4)
    prop = propagate_exact(table, anchors, 2)
    bg_ids = top_background(sim, 10).ids
    pos_ids, pos_mask = select_positives(sim, prop, 4, "hard")
    tau, eps = 0.07, 1e-7
    got = instance_loss(sim, anchors, bg_ids, tau, eps=eps)
    inv = invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, tau, "code", eps=eps)
    for b in range(sim.shape[0]):
        row = sim[b].double().tolist()
        a = anchors[b].item()
        want = -math.log(math.exp(-ref_instance(row, a, 10, tau)) + eps)
        assert got[b].item() == pytest.approx(want, rel=1e-5, abs=1e-4)
        cands = ref_candidates(prop, b)
        if cands:
            ratio = math.exp(-ref_invariance(row, a, 10, cands, 4, "hard", tau, "code"))
            assert inv[b].item() == pytest.approx(-math.log(ratio + eps), rel=1e-5, abs=1e-4)
    assert (got <= -math.log(eps) + 1e-3).all()  # the guard caps the loss at -log(eps)


def test_no_positive_rows_and_empty_paper_background_have_finite_gradients() -> None:
    # anchor 0 reaches every other node; anchor 5 has an unknown row (no positives)
    table = torch.tensor([[1, 2], [3, 4], [0, 0], [4, 4], [3, 3], [-1, -1]])
    anchors = torch.tensor([0, 5])
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    emb = torch.randn(2, 4, generator=g, requires_grad=True)
    sim = bank_similarities(F.normalize(emb, dim=1), bank)
    prop = propagate_exact(table, anchors, 2)
    bg_ids = top_background(sim, 3).ids  # for anchor 0: only positives or itself -> empty
    pos_ids, pos_mask = select_positives(sim, prop, 2, "hard")
    total = 0
    for background in ["code", "code_inclusive", "paper"]:
        loss = invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, 0.07, background)
        assert torch.isfinite(loss).all() and loss[1].item() == 0.0
        total = total + loss.sum()
    paper = invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, 0.07, "paper")
    assert paper[0].item() == pytest.approx(0.0, abs=1e-6)  # background = N^h only
    total.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    assert emb.grad[1].abs().sum() == 0  # the row without positives gets no invariance gradient


def test_code_background_needs_two_entries() -> None:
    sim, anchors, table = make_case(0)
    prop = propagate_exact(table, anchors, 1)
    pos_ids, pos_mask = select_positives(sim, prop, 1, "hard")
    bg_ids = top_background(sim, 1).ids
    with pytest.raises(ValueError, match="n_background >= 2"):
        invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, 0.1, "code")
    with pytest.raises(ValueError, match="background mode"):
        invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, 0.1, "both")


def test_bf16_similarities_give_fp32_losses() -> None:
    g = torch.Generator().manual_seed(1)
    emb = F.normalize(torch.randn(8, 32, generator=g), dim=1)
    bank = MemoryBank(60, 32, 3)
    bank.init_from(torch.randn(60, 32, generator=g))
    anchors = torch.arange(0, 16, 2)
    prop = propagate_exact(bank.neighbours, anchors, 2)
    kw = dict(temperature=0.2, n_background=20, n_pos=4, weight=0.6, background="paper")
    out32 = invp_loss(bank.similarities(emb), anchors, prop, **kw)
    sim16 = bank_similarities(emb.bfloat16(), bank.vectors.bfloat16())
    out16 = invp_loss(sim16, anchors, prop, **kw)
    for a, b in zip(out16, out32, strict=True):
        assert a.dtype == torch.float32
        assert a.item() == pytest.approx(b.item(), abs=5e-2)
    # the loss functions upcast a bf16 similarity matrix before any exp/sum
    sim_b = bank.similarities(emb).bfloat16()
    bg_ids = top_background(sim_b, 20).ids
    pos_ids, pos_mask = select_positives(sim_b, prop, 4, "hard")
    got = instance_loss(sim_b, anchors, bg_ids, 0.2)
    assert got.dtype == torch.float32
    assert torch.equal(got, instance_loss(sim_b.float(), anchors, bg_ids, 0.2))
    for bg in ["code", "paper"]:
        args = (anchors, bg_ids, pos_ids, pos_mask, prop, 0.2, bg)
        got = invariance_loss(sim_b, *args)
        assert got.dtype == torch.float32
        assert torch.equal(got, invariance_loss(sim_b.float(), *args))
    outs = invp_loss(sim_b, anchors, prop, **kw), invp_loss(sim_b.float(), anchors, prop, **kw)
    for a, b in zip(*outs, strict=True):
        assert a.dtype == torch.float32 and a.item() == b.item()


# ----------------------------------------------------------------- combination, ramp


def test_invp_loss_combines_terms_and_skips_invariance_when_off() -> None:
    sim, anchors, table = make_case(5)
    prop = propagate_exact(table, anchors, 2)
    kw = dict(temperature=0.1, n_background=10, n_pos=3)
    off = invp_loss(sim, anchors, None, weight=0.0, **kw)
    assert off.invariance.item() == 0.0 and off.total.item() == off.instance.item()
    on = invp_loss(sim, anchors, prop, weight=0.6, **kw)
    bg_ids = top_background(sim, 10).ids
    ins = instance_loss(sim, anchors, bg_ids, 0.1).mean()
    pos_ids, pos_mask = select_positives(sim, prop, 3, "hard")
    inv = invariance_loss(sim, anchors, bg_ids, pos_ids, pos_mask, prop, 0.1, "code").mean()
    assert on.instance.item() == pytest.approx(ins.item())
    assert on.invariance.item() == pytest.approx(inv.item())
    assert on.total.item() == pytest.approx(ins.item() + 0.6 * inv.item())
    assert off.instance.item() == pytest.approx(ins.item())
    with pytest.raises(ValueError, match="Propagation"):
        invp_loss(sim, anchors, None, weight=0.6, **kw)
    # one gather in invp_loss: same gradient as the separate terms
    for background in ["code", "paper"]:
        s1, s2 = sim.clone().requires_grad_(True), sim.clone().requires_grad_(True)
        invp_loss(s1, anchors, prop, weight=0.6, background=background, **kw).total.backward()
        args = (anchors, bg_ids, pos_ids, pos_mask, prop, 0.1, background)
        sep = instance_loss(s2, anchors, bg_ids, 0.1).mean()
        (sep + 0.6 * invariance_loss(s2, *args).mean()).backward()
        assert s1.grad is not None and s2.grad is not None and s1.grad.abs().sum() > 0
        torch.testing.assert_close(s1.grad, s2.grad)


def test_ramp_weight_binary_from_epoch_one() -> None:
    assert ramp_weight(1, 30, 0.6) == 0.0
    assert ramp_weight(30, 30, 0.6) == 0.0
    assert ramp_weight(31, 30, 0.6) == 0.6
    assert ramp_weight(1, 0, 0.6) == 0.6
    with pytest.raises(ValueError):
        ramp_weight(0, 30, 0.6)


# ----------------------------------------------------------------- toy training


def test_toy_clusters_loss_falls_and_table_purity_improves() -> None:
    """4 clusters in 2 signal dims + 6 nuisance dims re-drawn by the augmentation."""
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    n_cl, per, d_sig, d_noise = 4, 60, 2, 6
    labels = torch.arange(n_cl).repeat_interleave(per)
    centers = torch.randn(n_cl, d_sig, generator=g) * 3
    x = torch.cat(
        [
            centers[labels] + 0.3 * torch.randn(len(labels), d_sig, generator=g),
            2.0 * torch.randn(len(labels), d_noise, generator=g),
        ],
        dim=1,
    )
    n = len(x)
    encoder = torch.nn.Linear(d_sig + d_noise, 8)
    opt = torch.optim.SGD(encoder.parameters(), lr=0.1, momentum=0.9)
    scale = torch.tensor([0.1] * d_sig + [2.0] * d_noise)
    bank = MemoryBank(n, 8, 4)
    with torch.no_grad():
        bank.init_from(encoder(x))

    def purity() -> float:
        return (labels[bank.neighbours] == labels[:, None]).float().mean().item()

    purity_before = purity()
    epoch_losses = []
    for _ in range(8):
        total = 0.0
        for idx in torch.randperm(n, generator=g).split(40):
            xb = x[idx] + scale * torch.randn(len(idx), x.shape[1], generator=g)
            v = F.normalize(encoder(xb), dim=1)
            sim = bank.similarities(v)
            prop = propagate_exact(bank.neighbours, idx, 2)
            out = invp_loss(sim, idx, prop, temperature=0.1, n_background=64, n_pos=8, weight=0.6)
            opt.zero_grad()
            out.total.backward()
            opt.step()
            bank.update(idx, v.detach(), sim.detach(), momentum=0.5)
            total += out.total.item() * len(idx)
        epoch_losses.append(total / n)
    assert np.mean(epoch_losses[-2:]) < np.mean(epoch_losses[:2]) - 0.5, epoch_losses
    assert purity() > purity_before + 0.1, (purity_before, purity())


# ----------------------------------------------------------------- CUDA, no host sync


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("background", ["code", "paper"])
def test_cuda_step_matches_cpu_without_sync(background: str) -> None:
    g = torch.Generator().manual_seed(0)
    bank = MemoryBank(500, 16, 4)
    bank.init_from(torch.randn(500, 16, generator=g))
    emb = F.normalize(torch.randn(32, 16, generator=g), dim=1)
    anchors = torch.randperm(500, generator=g)[:32]
    kw = dict(temperature=0.07, n_background=64, n_pos=10, weight=0.6, background=background)

    def step(bank: MemoryBank, emb: torch.Tensor, anchors: torch.Tensor) -> list[torch.Tensor]:
        emb = emb.clone().requires_grad_(True)
        sim = bank.similarities(emb)
        prop = propagate(bank.neighbours, anchors, 3, "exact")
        out = invp_loss(sim, anchors, prop, **kw)
        out.total.backward()
        bank.update(anchors, emb.detach(), sim.detach(), 0.5)
        return [*out, emb.grad, bank.vectors, bank.neighbours]

    want = step(copy.deepcopy(bank), emb, anchors)
    step(copy.deepcopy(bank).cuda(), emb.cuda(), anchors.cuda())  # warm-up: lazy init may sync
    bank_c, emb_c, anchors_c = copy.deepcopy(bank).cuda(), emb.cuda(), anchors.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = step(bank_c, emb_c, anchors_c)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-4)
