"""One image's neighbours and propagated positives, as data (`invprop.figures.draw_grid`
draws them).

Shared by `invprop graph neighbours`, `invprop propagate show` and the report stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from invprop.bounds import max_positives
from invprop.config import PropagateConfig
from invprop.errors import InvpropError
from invprop.positive_sets import positives_of

if TYPE_CHECKING:
    from invprop.data import PreparedDataset
    from invprop.workspace import EmbeddingSet

# widest positive set one inspection walks (k + k^2 + ... + k^hops slots)
MAX_WIDTH = 1 << 22


def _class_name(classes: list[str] | None, label: int) -> str:
    if label < 0:
        return "unlabelled"
    if classes and label < len(classes):
        return str(classes[label])
    return str(label)


def _entry(node: int, sim: float, labels: Any, anchor_label: int, classes: Any, **extra: Any):
    label = int(labels[node])
    return {
        "id": int(node),
        "label": label,
        "class": _class_name(classes, label),
        "sim": float(sim),
        "same_label": bool(label >= 0 and label == anchor_label),
        **extra,
    }


def _purity(entries: list[dict[str, Any]]) -> float | None:
    return sum(e["same_label"] for e in entries) / len(entries) if entries else None


def inspect_anchor(
    tag: str,
    graph: dict[str, np.ndarray],
    emb: EmbeddingSet,
    prepared: PreparedDataset | None,
    index: int,
    hops: int | None,
    params: PropagateConfig,
    neighbours: bool,
) -> dict[str, Any]:
    """One train image of embeddings `tag` (its graph and embeddings, checked to belong
    together): its graph neighbours (when `neighbours`), its propagated positives per hop
    (`hops`, default params.hops) and its hard and easy positives, each with class (from
    `prepared`; numbers without it) and similarity."""
    n = graph["ids"].shape[0]
    if not 0 <= index < n:
        raise InvpropError(
            f"index {index} is out of range: the train split has {n} images (0..{n - 1})"
        )
    p = params
    hops = p.hops if hops is None else hops
    k = min(p.k, graph["ids"].shape[1])
    if hops < 1 or max_positives(k, hops) > MAX_WIDTH:
        raise InvpropError(
            f"--hops {hops} is out of range for k = {k}: use 1 to "
            f"{max(h for h in range(1, 64) if max_positives(k, h) <= MAX_WIDTH)}"
        )
    classes = prepared.classes if prepared is not None else None
    labels = emb.train_labels
    own = int(labels[index])
    found = positives_of(graph["ids"][:, :k], emb.train_vectors, index, hops, p.n_pos)
    result: dict[str, Any] = {
        "tag": tag,
        "index": index,
        "label": own,
        "class": _class_name(classes, own),
        "k": k,
        "hops": hops,
        "n_pos": p.n_pos,
    }
    if neighbours:
        result["neighbours"] = [
            _entry(j, s, labels, own, classes, rank=r + 1)
            for r, (j, s) in enumerate(zip(graph["ids"][index], graph["sims"][index], strict=True))
            if j >= 0
        ]
    by_hop = []
    for h in range(1, hops + 1):
        at = found.hop == h
        order = np.argsort(-found.sims[at], kind="stable")
        members = [
            _entry(j, s, labels, own, classes)
            for j, s in zip(found.ids[at][order], found.sims[at][order], strict=True)
        ]
        by_hop.append(
            {"hop": h, "size": len(members), "purity": _purity(members), "members": members}
        )
    result["positives_by_hop"] = by_hop
    for kind in ("hard", "easy"):
        ids, sims = getattr(found, f"{kind}_ids"), getattr(found, f"{kind}_sims")
        result[kind] = [_entry(j, s, labels, own, classes) for j, s in zip(ids, sims, strict=True)]
        result[f"{kind}_purity"] = _purity(result[kind])
    return result
