"""The explorer page: `reports/explorer/index.html`, written by the report stage.

One self-contained static page (no server, no network, no build step): the data and the
thumbnails are inlined as JSON and one PNG sprite sheet, and `explorer.html` beside this
module holds the plain JavaScript that draws them. It shows, for a seeded sample of
`report.explorer_points` train images (the graph's ids are train ids):

- a 2-D map (t-SNE of the sample's embeddings) coloured by class, one per tag;
- on click, the image with its `report.explorer_neighbours` nearest neighbours in the
  graph, the positives propagation reaches at each hop (same class or not), the P hard
  positives it would train on, and their similarities;
- a switch between the final model and each snapshot epoch of `embed.tags`.

Neighbours and positives come from `invprop.positive_sets.positives_of` over the graph
artifact, the code of the propagate stage and of `invprop graph neighbours`. Thumbnails
are kept for the anchors, the neighbours shown and the hard positives; hop members are
coloured squares. The page grows with the sample size (at most 1 + tags x (neighbours +
P) thumbnails of ~0.55 KB each per image for Fashion-MNIST), so `report.explorer_points`
keeps it small.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from invprop.config import Config
from invprop.errors import InvpropError
from invprop.logs import get_logger, track
from invprop.positive_sets import positives_of

LOG = get_logger("report")
TEMPLATE = Path(__file__).with_name("explorer.html")
SHEET_COLUMNS = 64
DATA_MARK = "/*EXPLORER_DATA*/"


def sample_ids(n: int, count: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of min(count, n) train ids."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(count, n), replace=False))


def map_2d(vectors: np.ndarray, seed: int) -> np.ndarray:
    """[m, 2] positions in [0, 1]: t-SNE of the rows (PCA for fewer than 5 rows)."""
    x = np.asarray(vectors, dtype=np.float32)
    if len(x) < 5:
        xy = PCA(n_components=2).fit_transform(x) if len(x) > 2 else np.zeros((len(x), 2))
    else:
        perplexity = min(30.0, (len(x) - 1) / 3)
        # one thread, as the report's maps: sums in a fixed order, the same page every run
        with threadpool_limits(1):
            xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    span = np.ptp(xy, axis=0)
    return (xy - xy.min(axis=0)) / np.where(span > 0, span, 1)


def anchor_view(
    graph_ids: np.ndarray,
    graph_sims: np.ndarray,
    vectors: np.ndarray,
    anchor: int,
    cfg: Config,
    shown: int,
) -> dict[str, list[list[float]]]:
    """What the page shows for one anchor and tag (sims rounded to 4 places):
    n: [[id, sim]] nearest neighbours; h: [[id, hop]] propagated positives by hop;
    p: [[id, sim]] the hard positives, hardest first."""
    p = cfg.propagate
    k = min(p.k, graph_ids.shape[1])
    found = positives_of(graph_ids[:, :k], vectors, anchor, p.hops, p.n_pos)
    keep = graph_ids[anchor] >= 0
    near = list(zip(graph_ids[anchor][keep][:shown], graph_sims[anchor][keep][:shown], strict=True))
    return {
        "n": [[int(j), round(float(s), 4)] for j, s in near],
        "h": [[int(j), int(h)] for j, h in zip(found.ids, found.hop, strict=True)],
        "p": [
            [int(j), round(float(s), 4)]
            for j, s in zip(found.hard_ids, found.hard_sims, strict=True)
        ],
    }


def sprite_sheet(images: Any, ids: list[int]) -> str:
    """The images `ids` (uint8 [C, H, W] each) as one PNG grid, a data: URI."""
    first = np.asarray(images[ids[0]])
    channels, height, width = first.shape
    rows = -(-len(ids) // SHEET_COLUMNS)
    sheet = np.zeros((rows * height, SHEET_COLUMNS * width, channels), np.uint8)
    for slot, index in enumerate(ids):
        r, c = divmod(slot, SHEET_COLUMNS)
        tile = np.asarray(images[index]).transpose(1, 2, 0)
        sheet[r * height : (r + 1) * height, c * width : (c + 1) * width] = tile
    buffer = io.BytesIO()
    Image.fromarray(sheet[..., 0] if channels == 1 else sheet).save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def explorer_data(cfg: Config, prepared: Any, graphs: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Everything the page draws, as plain data (see the module docstring). `graphs` maps
    each tag to its graph arrays (ids, sims) and embeddings (n, vectors, meta), checked to
    belong together; `prepared` is the dataset they embed."""
    r = cfg.report
    labels = np.asarray(prepared.train.labels, dtype=np.int64)
    sample = sample_ids(len(labels), r.explorer_points, cfg.seed)
    views: dict[str, Any] = {}
    epochs: dict[str, Any] = {}
    thumbs = {int(i) for i in sample}
    for tag, (graph, emb) in graphs.items():
        if emb.n != len(labels):
            raise InvpropError(
                f"the {tag} embeddings hold {emb.n} train rows but the prepared "
                f"{cfg.data.name} data has {len(labels)}; rerun embed@{tag}"
            )
        anchors = [
            anchor_view(
                graph["ids"], graph["sims"], emb.train_vectors, int(a), cfg, r.explorer_neighbours
            )
            for a in track(sample, f"explorer {tag}", unit="anchors", logger=LOG)
        ]
        for view in anchors:
            thumbs.update(j for j, _ in view["n"])
            thumbs.update(j for j, _ in view["p"])
        xy = map_2d(emb.train_vectors[sample], cfg.seed)
        views[tag] = {"xy": np.round(xy, 4).tolist(), "anchors": anchors}
        epochs[tag] = emb.meta.get("epoch")
    sheet_ids = sorted(thumbs)
    _, height, width = prepared.shape
    return {
        "dataset": cfg.data.name,
        "classes": list(prepared.classes),
        "labels": labels.tolist(),
        "tags": list(graphs),
        "epochs": epochs,
        "sample": sample.tolist(),
        "k": cfg.propagate.k,
        "hops": cfg.propagate.hops,
        "n_pos": cfg.propagate.n_pos,
        "thumbs": {
            "ids": sheet_ids,
            "height": height,
            "width": width,
            "columns": SHEET_COLUMNS,
            "sheet": sprite_sheet(prepared.train.images, sheet_ids),
        },
        "views": views,
    }


def render_page(data: dict[str, Any]) -> str:
    """The page: the template with the data inlined (`</` escaped so no string ends the
    script element)."""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return TEMPLATE.read_text().replace(DATA_MARK, payload)


def write_explorer(
    cfg: Config, folder: Path, prepared: Any, graphs: dict[str, tuple[Any, Any]]
) -> Path:
    """Write `folder`/index.html for the tags of `graphs` (see explorer_data), in order."""
    data = explorer_data(cfg, prepared, graphs)
    page = render_page(data)
    path = folder / "index.html"
    path.write_text(page)
    LOG.info(
        f"explorer: {len(data['sample'])} images, tags {', '.join(graphs)}: "
        f"{len(page) / 1e6:.2f} MB"
    )
    return path
