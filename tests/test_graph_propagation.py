"""Graph and propagate stages, their statistics and the CLI, against plain Python references."""

from __future__ import annotations

import json
import shutil
from contextlib import chdir
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from conftest import bfs_reference, exact_table, write_bank_checkpoint
from typer.testing import CliRunner

from invprop.cli import bank as bank_cli
from invprop.cli import graph as graph_cli
from invprop.cli import propagate as propagate_cli
from invprop.cli.common import OneLineErrors
from invprop.config import config_from_dict
from invprop.errors import InvpropError
from invprop.positive_sets import bank_stats, propagation_stats
from invprop.stages import graph as graph_stage
from invprop.stages import propagate as propagation
from invprop.stages.graph import gini, in_degree_stats, label_purity_at_k

# ---------------------------------------------------------------------------------------
# Plain references


def concat_walk(table: np.ndarray, anchor: int, hops: int) -> list[int]:
    """The authors' candidate list: neighbour lists appended hop by hop, nothing removed."""
    out, frontier = [], [anchor]
    for _ in range(hops):
        frontier = [int(v) for u in frontier for v in table[u] if v >= 0]
        out += frontier
    return out


def share_same(members, labels, anchor) -> float:
    return sum(labels[m] == labels[anchor] for m in members) / len(members)


def reference_stats(table, vectors, labels, hops, n_pos):
    """Per-hop sizes and purities by direct counting (see the propagation module doc)."""
    n = len(table)
    sims = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    rows = []
    for h in range(1, hops + 1):
        sets = {"size": [], "purity": [], "hard": [], "easy": [], "new": []}
        purity = {key: [] for key in ("all", "hard", "easy", "new")}
        for i in range(n):
            dist = bfs_reference(table, i, hops)
            within = [v for v, d in dist.items() if d <= h]
            new = [v for v, d in dist.items() if d == h]
            by_sim = sorted(within, key=lambda v, i=i: sims[i, v])
            chosen = {
                "all": within,
                "hard": by_sim[:n_pos],
                "easy": by_sim[::-1][:n_pos],
                "new": new,
            }
            for key, members in chosen.items():
                sets["size" if key == "all" else key].append(len(members))
                if labels[i] >= 0 and members:
                    purity[key].append(share_same(members, labels, i))
        mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
        rows.append(
            {
                "hop": h,
                "cumulative": {
                    "size": mean(sets["size"]),
                    "purity": mean(purity["all"]),
                    "hard_size": mean(sets["hard"]),
                    "hard_purity": mean(purity["hard"]),
                    "easy_size": mean(sets["easy"]),
                    "easy_purity": mean(purity["easy"]),
                },
                "new": {"size": mean(sets["new"]), "purity": mean(purity["new"])},
            }
        )
    return rows


def random_table(n, k, seed, holes=0.1):
    rng = np.random.default_rng(seed)
    table = rng.integers(0, n, (n, k))
    table[rng.random((n, k)) < holes] = -1
    table[rng.integers(0, n, 2)] = -1  # whole rows never filled
    return table


def assert_close_nested(got, want):
    if isinstance(want, dict):
        assert set(got) == set(want)
        for key in want:
            assert_close_nested(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_close_nested(g, w)
    elif want is None:
        assert got is None
    else:
        assert got == pytest.approx(want, abs=1e-9)


# ---------------------------------------------------------------------------------------
# Statistics against direct counts


@pytest.mark.parametrize(("n", "k", "hops", "seed"), [(40, 3, 3, 0), (60, 2, 4, 1), (25, 5, 2, 2)])
def test_stage_bfs_sets_equal_a_bfs_reference(n, k, hops, seed):
    table = random_table(n, k, seed)
    vectors = np.random.default_rng(seed).standard_normal((n, 6)).astype(np.float32)
    _, csr = propagation_stats(table, vectors, None, hops, 3, collect=True, chunk=7)
    assert csr["indptr"].shape == (n + 1,)
    for i in range(n):
        row = slice(csr["indptr"][i], csr["indptr"][i + 1])
        got = dict(zip(csr["ids"][row].tolist(), csr["hop"][row].tolist(), strict=True))
        assert got == bfs_reference(table, i, hops)
        assert np.all(np.diff(csr["hop"][row]) >= 0)  # ordered by hop


@pytest.mark.parametrize(("n_pos", "seed"), [(3, 0), (7, 1), (39, 2)])
def test_hard_and_easy_positives_are_least_and_most_similar(n_pos, seed):
    n, k, hops = 50, 3, 3
    table = random_table(n, k, seed)
    vectors = np.random.default_rng(seed + 10).standard_normal((n, 8)).astype(np.float32)
    sims = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    _, csr = propagation_stats(table, vectors, None, hops, n_pos, collect=True, chunk=16)
    for i in range(n):
        by_sim = sorted(bfs_reference(table, i, hops), key=lambda v, i=i: sims[i, v])
        hard = csr["hard_ids"][csr["hard_indptr"][i] : csr["hard_indptr"][i + 1]].tolist()
        easy = csr["easy_ids"][csr["easy_indptr"][i] : csr["easy_indptr"][i + 1]].tolist()
        assert hard == by_sim[:n_pos]
        assert easy == by_sim[::-1][:n_pos]


@pytest.mark.parametrize(
    ("k", "hops", "n_pos", "seed"), [(3, 3, 4, 0), (2, 2, 3, 1), (4, 2, 20, 2), (2, 2, 5, 3)]
)
def test_per_hop_sizes_and_purity_equal_a_direct_count(k, hops, n_pos, seed):
    n = 45
    rng = np.random.default_rng(seed)
    table = random_table(n, k, seed)
    vectors = rng.standard_normal((n, 5)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    labels[rng.random(n) < 0.2] = -1  # some unlabelled anchors and members
    stats, _ = propagation_stats(table, vectors, labels, hops, n_pos, chunk=8)
    assert_close_nested(stats["per_hop"], reference_stats(table, vectors, labels, hops, n_pos))
    assert stats["labelled"] == int((labels >= 0).sum())


def test_unlabelled_data_gives_no_purity():
    table = random_table(20, 2, 0)
    stats, _ = propagation_stats(table, np.eye(20, dtype=np.float32), np.full(20, -1), 2, 2)
    assert stats["per_hop"][0]["cumulative"]["purity"] is None
    assert stats["per_hop"][0]["cumulative"]["size"] > 0


def test_label_purity_at_k_and_in_degree_equal_a_direct_count():
    rng = np.random.default_rng(3)
    n, k = 30, 5
    ids = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
    ids[4, 3:] = -1  # an approximate index that found only 3
    labels = rng.integers(0, 3, n)
    labels[[0, 9]] = -1
    got = label_purity_at_k(ids, labels)
    for kk in range(1, k + 1):
        shares = []
        for i in range(n):
            first = [j for j in ids[i, :kk] if j >= 0]
            if labels[i] >= 0 and first:
                shares.append(share_same(first, labels, i))
        assert got[kk - 1] == pytest.approx(np.mean(shares))
    degree = in_degree_stats(ids, labels)
    counts = [sum(int(j == node) for row in ids for j in row) for node in range(n)]
    assert degree["max"] == max(counts)
    assert degree["never_neighbour"] == sum(c == 0 for c in counts)
    assert degree["hubs"][0]["in_degree"] == max(counts)
    assert degree["hubs"][0]["label"] == labels[degree["hubs"][0]["id"]]
    assert degree["percentiles"]["50"] == pytest.approx(np.median(counts))


def test_gini():
    assert gini(np.array([3, 3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)
    assert gini(np.zeros(5)) == 0.0


def test_bank_stats_equal_a_direct_count():
    n, k, hops = 36, 3, 3
    table = random_table(n, k, 4)
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((n, 6)) * rng.uniform(0.5, 2.0, (n, 1))
    labels = rng.integers(0, 4, n)
    state = {
        "epoch": 7,
        "bank": {
            "vectors": torch.tensor(vectors, dtype=torch.float32),
            "neighbours": torch.tensor(table),
        },
    }
    stats = bank_stats(state, labels, hops, chunk=5)
    walks = [concat_walk(table, i, hops) for i in range(n)]
    repeats = sum(
        sum(1 for j, v in enumerate(walk) if v == i or v in walk[:j])
        for i, walk in enumerate(walks)
    )
    assert stats["concat_candidates"] == sum(len(w) for w in walks)
    assert stats["concat_duplicate_rate"] == pytest.approx(repeats / stats["concat_candidates"])
    filled = [i for i in range(n) if (table[i] >= 0).any()]
    assert stats["coverage"] == pytest.approx(len(filled) / n)
    purity = np.mean([share_same([j for j in table[i] if j >= 0], labels, i) for i in filled])
    assert stats["neighbour_purity"] == pytest.approx(purity)
    norms = np.linalg.norm(vectors, axis=1)
    assert stats["norms"]["max"] == pytest.approx(norms.max(), rel=1e-5)
    assert stats["norms"]["min"] == pytest.approx(norms.min(), rel=1e-5)
    assert stats["epoch"] == 7
    with pytest.raises(InvpropError, match="3 labels for 36 nodes"):
        bank_stats(state, labels[:3], hops)
    with pytest.raises(InvpropError, match="no memory bank"):
        bank_stats({"model": {}}, None, hops)


def test_mismatched_table_and_vectors_are_errors():
    with pytest.raises(InvpropError, match="do not fit"):
        propagation_stats(random_table(10, 2, 0), np.ones((9, 3), np.float32), None, 2, 2)
    table = random_table(10, 2, 0)
    table[3, 0] = 10
    with pytest.raises(InvpropError, match="outside"):
        propagation_stats(table, np.ones((10, 3), np.float32), None, 2, 2)


# ---------------------------------------------------------------------------------------
# Stages end to end on a tiny workspace: digits (150 train images), pixel "embeddings"

PARAMS = {
    "seed": 0,
    "data": {"name": "digits", "train_limit": 150, "test_limit": 50},
    "transfer": {"targets": []},
    "pretrain": {"epochs": 3, "snapshot_epochs": [1, 2]},
    "graph": {"k": 8},
    "propagate": {"k": 4, "hops": 3, "n_pos": 10},
}


def unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(folder: Path, train: np.ndarray, labels: np.ndarray, counts=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "embeddings.npz",
        train_features=train,
        train_embeddings=train,
        train_labels=labels,
        test_features=train[:5],
        test_embeddings=train[:5],
        test_labels=labels[:5],
    )
    meta = {
        "tag": folder.name,
        "dataset": "digits",
        "checkpoint_sha256": "0" * 64,
        "counts": counts or {"train": len(labels), "test": 5},
    }
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Prepared digits, embeddings, three checkpoints; graph and propagate stages run."""
    from invprop.data import load_prepared
    from invprop.stages.prepare import prepare

    root = tmp_path_factory.mktemp("workspace")
    cfg = config_from_dict(PARAMS)
    with chdir(root):
        (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
        prepare(cfg, "digits")
        train = load_prepared("data/prepared/digits").train
        labels = np.asarray(train.labels)
        pixels = unit(np.asarray(train.images, dtype=np.float64).reshape(len(labels), -1))
        write_embeddings(Path("artifacts/embeddings/final"), pixels, labels)
        rng = np.random.default_rng(0)
        banks = {}
        for epoch, noise, tag in (
            (1, 2.0, "epoch_0001"),
            (2, 0.5, "epoch_0002"),
            (3, 0.1, "final"),
        ):
            vectors = unit(pixels + noise * rng.standard_normal(pixels.shape) / 8)
            table = exact_table(vectors, 4)
            if epoch == 1:
                table[::2] = -1  # half the rows never visited
            banks[tag] = (vectors, table)
            path = Path("models/pretrain") / (
                "final.pt" if tag == "final" else f"snapshots/epoch_{epoch:04d}.pt"
            )
            write_bank_checkpoint(path, epoch, vectors, table, cfg)
        graph_stats = graph_stage.run(cfg, "final")
        prop_stats = propagation.run(cfg, "final")
    return {
        "root": root,
        "cfg": cfg,
        "labels": labels,
        "pixels": pixels,
        "banks": banks,
        "graph_stats": graph_stats,
        "prop_stats": prop_stats,
    }


def test_graph_stage_writes_graph_and_stats(workspace):
    root, labels, pixels = workspace["root"], workspace["labels"], workspace["pixels"]
    with np.load(root / "artifacts/graph/final/graph.npz") as data:
        ids, sims = data["ids"], data["sims"]
        assert ids.shape == sims.shape == (150, 8) and ids.dtype == np.int64
        np.testing.assert_array_equal(data["labels"], labels)
    want_ids = exact_table(pixels.astype(np.float64), 8)
    assert (ids == want_ids).mean() > 0.99
    stats = json.loads((root / "artifacts/graph/final/stats.json").read_text())
    returned = json.loads(json.dumps(workspace["graph_stats"]))
    # the artifact holds no timings or device (those go to the report)
    assert stats == {k: v for k, v in returned.items() if k not in graph_stage.RUN_KEYS}
    assert "seconds" not in stats and "seconds" in returned
    direct = [
        np.mean([np.mean(labels[ids[i, :kk]] == labels[i]) for i in range(150)]) for kk in (1, 8)
    ]
    assert stats["purity_at_k"][0] == pytest.approx(direct[0])
    assert stats["purity_at_k"][7] == pytest.approx(direct[1])
    assert stats["purity_at_k"][0] > 0.8  # digits pixels: near neighbours share the digit
    assert stats["backend"] == "faiss" and stats["index"] == "flat" and stats["recall"] is None
    assert stats["embeddings"]["dataset"] == "digits"
    assert sum(h["in_degree"] > 0 for h in stats["in_degree"]["hubs"]) == 10
    report = json.loads((root / "reports/graph_final.json").read_text())
    assert report["purity_at_1"] == stats["purity_at_k"][0]
    assert report["embeddings_sha256"] == stats["embeddings"]["sha256"]


def test_propagate_stage_writes_csr_and_per_hop_stats(workspace):
    root, labels, pixels = workspace["root"], workspace["labels"], workspace["pixels"]
    with np.load(root / "artifacts/graph/final/graph.npz") as data:
        table = data["ids"][:, :4]
    with np.load(root / "artifacts/propagation/final/positives.npz") as data:
        csr = {key: data[key] for key in data.files}
    for i in (0, 17, 149):
        row = slice(csr["indptr"][i], csr["indptr"][i + 1])
        assert dict(
            zip(csr["ids"][row].tolist(), csr["hop"][row].tolist(), strict=True)
        ) == bfs_reference(table, i, 3)
        hard = csr["hard_ids"][csr["hard_indptr"][i] : csr["hard_indptr"][i + 1]]
        assert len(hard) == min(10, row.stop - row.start)
    stats = json.loads((root / "artifacts/propagation/final/stats.json").read_text())
    want = reference_stats(table, pixels, labels, 3, 10)
    assert_close_nested(stats["per_hop"], want)
    report = json.loads((root / "reports/propagate_final.json").read_text())
    assert report["purity"]["hard"] == pytest.approx(want[-1]["cumulative"]["hard_purity"])
    assert report["new_purity_per_hop"] == [row["new"]["purity"] for row in stats["per_hop"]]


def test_propagate_stage_tracks_purity_against_epoch(workspace):
    stats, labels = workspace["prop_stats"], workspace["labels"]
    epochs = stats["epochs"]
    assert [e["tag"] for e in epochs] == ["epoch_0001", "epoch_0002", "final"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[0]["coverage"] == pytest.approx(0.5)
    assert epochs[2]["coverage"] == 1.0
    for entry in epochs:
        vectors, table = workspace["banks"][entry["tag"]]
        want = reference_stats(table, vectors, labels, 3, 10)[-1]["cumulative"]
        assert entry["purity"]["all"] == pytest.approx(want["purity"])
        assert entry["purity"]["hard"] == pytest.approx(want["hard_purity"])
        assert entry["purity"]["easy"] == pytest.approx(want["easy_purity"])
        assert entry["size"]["all"] == pytest.approx(want["size"])
    # cleaner banks (less noise) give purer positives
    assert epochs[2]["purity"]["all"] > epochs[1]["purity"]["all"]


def test_rerunning_the_stages_gives_identical_artifacts(workspace, tmp_path):
    from invprop.io import file_sha256

    files = ("artifacts/graph/final/graph.npz", "artifacts/propagation/final/positives.npz")
    before = [file_sha256(workspace["root"] / f) for f in files]
    shutil.copytree(workspace["root"], tmp_path / "ws")
    with chdir(tmp_path / "ws"):
        graph_stage.run(workspace["cfg"], "final")
        propagation.run(workspace["cfg"], "final")
        assert [file_sha256(f) for f in files] == before


def test_graph_from_other_embeddings_is_refused(workspace, tmp_path):
    shutil.copytree(workspace["root"], tmp_path / "ws")
    with chdir(tmp_path / "ws"):
        folder = Path("artifacts/embeddings/final")
        write_embeddings(folder, workspace["pixels"][::-1].copy(), workspace["labels"][::-1].copy())
        with pytest.raises(InvpropError, match="was not built from"):
            propagation.run(workspace["cfg"], "final")
        write_embeddings(folder, workspace["pixels"][:100], workspace["labels"][:100])
        with pytest.raises(InvpropError, match="N=150"):
            propagation.run(workspace["cfg"], "final")


def test_graph_narrower_than_propagate_k_is_refused(workspace, tmp_path):
    shutil.copytree(workspace["root"], tmp_path / "ws")
    wide = config_from_dict(
        PARAMS | {"graph": {"k": 12}, "propagate": {"k": 10, "hops": 2, "n_pos": 5}}
    )
    with chdir(tmp_path / "ws"), pytest.raises(InvpropError, match="has only k = 8"):
        propagation.run(wide, "final")


def test_graph_stage_input_errors(workspace, tmp_path):
    cfg = workspace["cfg"]
    with chdir(tmp_path):
        with pytest.raises(InvpropError, match=r"embeddings folder .* not found"):
            graph_stage.run(cfg, "final")
        with pytest.raises(InvpropError, match="not 'final' or 'epoch_NNNN'"):
            graph_stage.run(cfg, "../x")
        folder = Path("artifacts/embeddings/final")
        write_embeddings(folder, workspace["pixels"], workspace["labels"], {"train": 99, "test": 5})
        with pytest.raises(InvpropError, match=r"counts\.train = 99"):
            graph_stage.run(cfg, "final")
        write_embeddings(folder, workspace["pixels"], workspace["labels"][:-1])
        with pytest.raises(InvpropError, match="they must match"):
            graph_stage.run(cfg, "final")
        write_embeddings(folder, workspace["pixels"][:6], workspace["labels"][:6])
        with pytest.raises(InvpropError, match=r"graph\.k = 8"):
            graph_stage.run(cfg, "final")
        assert not Path("artifacts/graph").exists()


# ---------------------------------------------------------------------------------------
# CLI

cli = typer.Typer(cls=OneLineErrors)  # the root app's one-line usage errors
cli.add_typer(graph_cli.app, name="graph")
cli.add_typer(propagate_cli.app, name="propagate")
cli.add_typer(bank_cli.app, name="bank")


def invoke(root: Path, *args: str):
    with chdir(root):
        return CliRunner().invoke(cli, list(args))


def test_cli_graph_neighbours_json_matches_the_artifacts(workspace):
    root = workspace["root"]
    result = invoke(root, "graph", "neighbours", "17", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    with np.load(root / "artifacts/graph/final/graph.npz") as g:
        assert [e["id"] for e in data["neighbours"]] == g["ids"][17].tolist()
    with np.load(root / "artifacts/propagation/final/positives.npz") as p:
        row = slice(p["indptr"][17], p["indptr"][18])
        stored = dict(zip(p["ids"][row].tolist(), p["hop"][row].tolist(), strict=True))
        hard = p["hard_ids"][p["hard_indptr"][17] : p["hard_indptr"][18]].tolist()
    shown = {e["id"]: hop["hop"] for hop in data["positives_by_hop"] for e in hop["members"]}
    assert shown == stored
    assert [e["id"] for e in data["hard"]] == hard
    assert data["class"] == str(workspace["labels"][17])
    for hop in data["positives_by_hop"]:
        if hop["members"]:
            assert hop["purity"] == pytest.approx(
                np.mean([e["same_label"] for e in hop["members"]])
            )


def test_cli_writes_a_png_grid(workspace, tmp_path):
    out = tmp_path / "grid.png"
    result = invoke(workspace["root"], "graph", "neighbours", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out2 = tmp_path / "show.png"
    result = invoke(workspace["root"], "propagate", "show", "3", "--hops", "2", "--out", str(out2))
    assert result.exit_code == 0, result.output
    assert out2.stat().st_size > 1000


def test_cli_propagate_stats_and_show(workspace):
    root = workspace["root"]
    result = invoke(root, "propagate", "stats", "--json")
    assert result.exit_code == 0, result.output
    assert (
        json.loads(result.output)["per_hop"]
        == json.loads((root / "artifacts/propagation/final/stats.json").read_text())["per_hop"]
    )
    table = invoke(root, "propagate", "stats")
    assert table.exit_code == 0, table.output
    assert "Propagated positives of the final embeddings" in table.output
    stats = json.loads((root / "artifacts/propagation/final/stats.json").read_text())
    # the report's table: purity in percent, rounded
    assert f"{100 * stats['per_hop'][0]['cumulative']['purity']:.1f}" in table.output
    assert "Positive purity within" in table.output  # and against epoch
    result = invoke(root, "propagate", "show", "5", "--hops", "1", "--json")
    data = json.loads(result.output)
    assert [h["hop"] for h in data["positives_by_hop"]] == [1]
    with np.load(root / "artifacts/graph/final/graph.npz") as g:
        assert {e["id"] for e in data["positives_by_hop"][0]["members"]} == set(
            g["ids"][5, :4].tolist()
        )
    assert "neighbours" not in data


def test_cli_bank_stats(workspace, tmp_path):
    root = workspace["root"]
    torch.save({"version": 1, "epoch": 0, "model": {}}, tmp_path / "nobank.pt")
    result = invoke(root, "bank", "stats", str(tmp_path / "nobank.pt"))
    assert result.exit_code == 2 and "no memory bank" in result.output
    result = invoke(root, "bank", "stats", "models/pretrain/snapshots/epoch_0001.pt", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["coverage"] == pytest.approx(0.5)
    assert data["labels_from"] == str(Path("data/prepared/digits"))
    assert 0 < data["neighbour_purity"] <= 1
    assert 0 <= data["concat_duplicate_rate"] < 1
    assert invoke(root, "bank", "stats", "models/pretrain/final.pt").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("graph", "neighbours", "150", "--json"), "out of range"),
        (("graph", "neighbours", "--", "-1"), "out of range"),
        (("graph", "neighbours", "0", "--tag", "epoch_0002"), "not a tag of artifacts/graph: "),
        (("propagate", "stats", "--tag", "epoch_0001"), "not a tag of artifacts/propagation: "),
        (("propagate", "show", "1", "--tag", "nonsense"), "'nonsense' is not a tag"),
        (("propagate", "show", "1", "--hops", "0"), "--hops 0 is out of range"),
        (("propagate", "show", "1", "--hops", "40"), "use 1 to 10"),
        (("bank", "stats", "params.yaml"), "params.yaml is not a torch checkpoint"),
        (("bank", "stats", "missing.pt"), "checkpoint not found"),
    ],
)
def test_cli_user_errors_are_one_line(workspace, args, message):
    result = invoke(workspace["root"], *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_stage_entry_points(workspace, tmp_path, monkeypatch, capsys):
    """What `python stages/graph.py final` runs (registered here in case pipeline.py lags)."""
    from invprop import pipeline

    monkeypatch.setitem(pipeline.STAGES, "graph", "invprop.stages.graph:run")
    monkeypatch.setitem(pipeline.STAGES, "propagate", "invprop.stages.propagate:run")
    shutil.copytree(workspace["root"], tmp_path / "ws")
    with chdir(tmp_path / "ws"):
        assert pipeline.main("graph", ["final"]) == 0
        assert pipeline.main("propagate", ["final", "--set", "propagate.hops=2"]) == 0
        stats = json.loads(Path("artifacts/propagation/final/stats.json").read_text())
        assert stats["hops"] == 2 and len(stats["per_hop"]) == 2
        assert pipeline.main("graph", ["epoch_0002"]) == 2
    assert "embeddings folder artifacts/embeddings/epoch_0002 not found" in capsys.readouterr().err
