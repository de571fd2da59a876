"""One image's neighbours and propagated positives, as data and as a PNG grid.

Shared by `invprop graph neighbours`, `invprop propagate show` and the report stage.
"""

from __future__ import annotations

from pathlib import Path
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


def _image(prepared: Any, index: int) -> Any:
    array = np.asarray(prepared.train.images[index])  # uint8 (C, H, W)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _spread(entries: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Up to ``count`` entries evenly spaced through a similarity-sorted list (ends kept)."""
    if len(entries) <= count:
        return entries
    picks = sorted({round(i * (len(entries) - 1) / (count - 1)) for i in range(count)})
    return [entries[i] for i in picks]


def draw_grid(
    result: dict[str, Any],
    prepared: Any,
    out: Path,
    show: int,
    metadata: dict[str, Any] | None = None,
) -> None:
    """A PNG: one row each for the neighbours, the positives of each hop and the hard ones;
    every image titled with its class and similarity, framed green (same label) or red.
    `metadata` goes to savefig (e.g. {"Software": None} for byte-stable PNGs)."""
    if prepared is None:
        raise InvpropError(
            "the PNG needs the prepared images (data/prepared/<dataset>), which are missing; "
            "run the prepare stage or drop --out"
        )
    # matplotlib only when a PNG is asked for, and pyplot after the file-only Agg backend
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, list[dict[str, Any]]]] = []
    if "neighbours" in result:
        rows.append(("nearest", result["neighbours"][:show]))
    for hop in result["positives_by_hop"]:
        rows.append((f"hop {hop['hop']}\n({hop['size']})", _spread(hop["members"], show)))
    rows.append((f"hard\n({len(result['hard'])})", result["hard"][:show]))
    cols = show + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.35 * cols, 1.6 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for r, (name, entries) in enumerate(rows):
        head = axes[r, 0]
        if r == 0:
            image = _image(prepared, result["index"])
            head.imshow(image, cmap="gray" if image.ndim == 2 else None)
            head.set_title(f"#{result['index']}\n{result['class']}", fontsize=7, fontweight="bold")
        head.set_ylabel(name, fontsize=8)
        for c, entry in enumerate(entries, start=1):
            ax = axes[r, c]
            image = _image(prepared, entry["id"])
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.set_title(f"{entry['class']}\n{entry['sim']:.3f}", fontsize=6)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("tab:green" if entry["same_label"] else "tab:red")
                spine.set_linewidth(2)
    fig.suptitle(
        f"{result['tag']}: image {result['index']} ({result['class']}), k={result['k']}, "
        f"hops={result['hops']}, P={result['n_pos']}; green = same label",
        fontsize=8,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, metadata=metadata)
    plt.close(fig)
