"""The explorer page: its data against the graph artifact, and the page in headless Chromium."""

from __future__ import annotations

import json
import re
from contextlib import chdir
from pathlib import Path

import numpy as np
import pytest

from invprop import explorer
from invprop.config import config_from_dict

PARAMS = {
    "seed": 0,
    "data": {"name": "digits", "train_limit": 150, "test_limit": 30},
    "transfer": {"targets": []},
    "pretrain": {"epochs": 3, "snapshot_epochs": [2]},
    "embed": {"tags": ["final", "epoch_0002"]},
    "graph": {"k": 6},
    "propagate": {"k": 4, "hops": 2, "n_pos": 5},
    "report": {"explorer_points": 40, "explorer_neighbours": 5},
}
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Prepared digits; embeddings of two tags (pixels, and pixels with noise for the
    snapshot); the real graph stage on both."""
    from invprop.data import load_prepared
    from invprop.io import save_npz
    from invprop.stages import graph
    from invprop.stages.prepare import prepare
    from invprop.workspace import load_checked_graph

    root = tmp_path_factory.mktemp("explorer")
    cfg = config_from_dict(PARAMS)
    rng = np.random.default_rng(0)
    with chdir(root):
        prepare(cfg, "digits")
        data = load_prepared("data/prepared/digits")
        for tag, epoch, noise in (("final", 3, 0.0), ("epoch_0002", 2, 1.0)):
            arrays = {}
            for split in (data.train, data.test):
                pixels = np.asarray(split.images, dtype=np.float64).reshape(len(split), -1)
                vectors = unit(pixels + noise * rng.standard_normal(pixels.shape) * pixels.std())
                arrays[f"{split.name}_features"] = vectors
                arrays[f"{split.name}_embeddings"] = vectors
                arrays[f"{split.name}_labels"] = np.asarray(split.labels, dtype=np.int64)
            folder = Path("artifacts/embeddings") / tag
            folder.mkdir(parents=True)
            save_npz(folder / "embeddings.npz", arrays)
            meta = {
                "tag": tag,
                "dataset": "digits",
                "epoch": epoch,
                "checkpoint_sha256": "0" * 64,
                "num_classes": 10,
                "counts": {"train": len(data.train), "test": len(data.test)},
            }
            (folder / "meta.json").write_text(json.dumps(meta))
            graph.run(cfg, tag)
        Path("page").mkdir()
        graphs = {tag: load_checked_graph(tag)[::2] for tag in ("final", "epoch_0002")}
        page = explorer.write_explorer(cfg, Path("page"), data, graphs)
    return root, cfg, root / page


def page_data(page: Path) -> dict:
    text = page.read_text()
    found = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    assert found is not None
    return json.loads(found.group(1))


def test_page_data_matches_the_graph_and_propagation(workspace) -> None:
    from invprop.positive_sets import positives_of
    from invprop.workspace import load_checked_graph

    root, _, page = workspace
    data = page_data(page)
    assert data["tags"] == ["final", "epoch_0002"]
    assert data["epochs"] == {"final": 3, "epoch_0002": 2}
    assert len(data["sample"]) == 40 and data["sample"] == sorted(set(data["sample"]))
    with chdir(root):
        for tag in data["tags"]:
            graph, _, emb = load_checked_graph(tag)
            view = data["views"][tag]
            assert len(view["xy"]) == 40
            assert all(0 <= v <= 1 for point in view["xy"] for v in point)
            for anchor, shown in zip(data["sample"][:10], view["anchors"], strict=False):
                assert [j for j, _ in shown["n"]] == graph["ids"][anchor][:5].tolist()
                np.testing.assert_allclose(
                    [s for _, s in shown["n"]], graph["sims"][anchor][:5], atol=1e-4
                )
                found = positives_of(graph["ids"][:, :4], emb.train_vectors, anchor, 2, 5)
                assert shown["h"] == [
                    [int(j), int(h)] for j, h in zip(found.ids, found.hop, strict=True)
                ]
                assert [j for j, _ in shown["p"]] == found.hard_ids.tolist()
    # every thumbnail the panel asks for is in the sprite sheet
    wanted = set(data["sample"])
    for view in data["views"].values():
        for shown in view["anchors"]:
            wanted |= {j for j, _ in shown["n"]} | {j for j, _ in shown["p"]}
    assert set(data["thumbs"]["ids"]) == wanted
    assert data["thumbs"]["sheet"].startswith("data:image/png;base64,")
    # nothing the page loads comes from elsewhere
    assert not re.search(r"(src|href)=\"?(https?:)?//", page.read_text())


def _chromium():
    """A headless Chromium driven by Selenium, or a skip that says what is missing."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "no Chromium: apt-get install chromium chromium-driver (make test does, where "
            "apt is usable)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    return webdriver, options, Service(str(CHROMEDRIVER))


def test_page_in_headless_chromium(workspace, tmp_path) -> None:
    webdriver, options, service = _chromium()
    from selenium.webdriver.common.by import By

    root, _, page = workspace
    data = page_data(page)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(page.as_uri())
        circles = driver.find_elements(By.CSS_SELECTOR, "#map circle")
        assert len(circles) == 40
        anchor = data["sample"][7]
        with np.load(root / "artifacts/graph/final/graph.npz") as graph:
            expected = {tag: None for tag in data["tags"]}
            expected["final"] = graph["ids"][anchor][:5].tolist()
        with np.load(root / "artifacts/graph/epoch_0002/graph.npz") as graph:
            expected["epoch_0002"] = graph["ids"][anchor][:5].tolist()

        driver.find_element(By.CSS_SELECTOR, f'#map circle[data-id="{anchor}"]').click()
        shown = driver.find_elements(By.CSS_SELECTOR, "#neighbours li")
        assert [int(li.get_attribute("data-id")) for li in shown] == expected["final"]
        labels = data["labels"]
        for li in shown:  # green frame: same class as the anchor
            same = labels[int(li.get_attribute("data-id"))] == labels[anchor]
            assert li.get_attribute("class") == ("right" if same else "wrong")
        hops = driver.find_elements(By.CSS_SELECTOR, "#hops [data-hop]")
        assert [h.get_attribute("data-hop") for h in hops] == ["1", "2"]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#hard li")) == len(
            data["views"]["final"]["anchors"][7]["p"]
        )
        driver.save_screenshot(str(tmp_path / "explorer.png"))

        driver.find_element(By.CSS_SELECTOR, '#tags button[data-tag="epoch_0002"]').click()
        shown = driver.find_elements(By.CSS_SELECTOR, "#neighbours li")
        assert [int(li.get_attribute("data-id")) for li in shown] == expected["epoch_0002"]
        assert "epoch_0002" in driver.find_element(By.ID, "anchor").text
        assert driver.get_log("browser") == []  # no script errors
    finally:
        driver.quit()
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
