"""The image-folder train source: the batches of epoch_batches/rank_shard, decoded from the
files, whatever the worker count or number of ranks; training on it is the same run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from invprop.augment import CroppedImageFiles, sample_params
from invprop.batches import FolderImages, epoch_batches, rank_shard, train_source
from invprop.checkpoint import load_checkpoint
from invprop.config import AugmentConfig, Config, config_from_dict
from invprop.data import ImageFiles, Split, load_prepared
from invprop.errors import InvpropError
from invprop.stages.prepare import prepare
from invprop.training import train
from invprop.workspace import TrainingRun

# Train crops of 28 x 28 from 32 x 32 PNGs.
IMAGE_SIZE, WRITTEN_SIZE = 28, 32
BATCH_SIZE, SEED, EPOCH = 8, 3, 2


def folder_config(root: Path, **sections: dict) -> Config:
    params = {
        "data": {"name": "imagefolder", "root": str(root), "image_size": IMAGE_SIZE},
        "model": {"dim": 16},
        "pretrain": {"device": "cpu", "threads": 1},
        "transfer": {"targets": []},
    }
    for section, values in sections.items():
        params[section] = {**params.get(section, {}), **values}
    return config_from_dict(params)


@pytest.fixture
def folder(tmp_path: Path, writers) -> tuple[Path, dict[str, np.ndarray]]:
    """A train/ + val/ folder of RGB PNGs (27 train images, 3 classes), prepared into
    tmp_path/prepared; returns the prepared folder and the pixels written per file."""
    root = tmp_path / "raw"
    written = writers.image_folder(root / "train", {"a": 10, "b": 9, "c": 8}, size=WRITTEN_SIZE)
    writers.image_folder(root / "val", {"a": 2, "b": 2, "c": 2}, size=WRITTEN_SIZE, seed=7)
    out = tmp_path / "prepared"
    prepare(folder_config(root), "imagefolder", out, tmp_path / "report.json")
    return out, {f"train/{name}": pixels for name, pixels in written.items()}


def expected_crops(
    files: list[str], written: dict[str, np.ndarray], indices: torch.Tensor, cfg: Config
) -> torch.Tensor:
    """The batch cropped by hand: each written image in the model's channels, cut by
    torchvision's resized_crop (PIL path, bilinear) at the box drawn for its index."""
    from PIL import Image

    crops = []
    for i in indices.tolist():
        pixels = written[files[i]]
        image = Image.fromarray(pixels.transpose(1, 2, 0))
        image = image.convert("L" if cfg.data.channels == 1 else "RGB")
        p = sample_params(SEED, EPOCH, torch.tensor([i]), cfg.augment, *pixels.shape[1:])
        box = [int(v[0]) for v in (p.top, p.left, p.height, p.width)]
        size = [cfg.data.image_size] * 2
        crop = TF.resized_crop(image, *box, size, InterpolationMode.BILINEAR)
        crops.append(TF.pil_to_tensor(crop))
    return torch.stack(crops)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("channels", [3, 1])
def test_folder_source_yields_each_files_random_crop_in_epoch_order(
    folder, num_workers: int, channels: int
) -> None:
    out, written = folder
    prepared = load_prepared(out)
    cfg = folder_config(
        prepared.train.images.root,
        data={"channels": channels},
        pretrain={"num_workers": num_workers},
    )
    source = train_source(prepared, cfg, torch.device("cpu"))
    assert isinstance(source, FolderImages) and source.n == 27 and source.crops_in_workers
    assert source.labels.dtype == torch.int64
    assert source.labels.tolist() == [0] * 10 + [1] * 9 + [2] * 8

    got = list(source.batches(BATCH_SIZE, SEED, EPOCH))
    want = epoch_batches(27, BATCH_SIZE, SEED, EPOCH)
    assert len(got) == len(want) == 3
    for (images, indices), batch in zip(got, want, strict=True):
        assert torch.equal(indices, batch)
        assert images.dtype == torch.uint8
        assert images.shape == (len(batch), channels, IMAGE_SIZE, IMAGE_SIZE)
        reference = expected_crops(prepared.train.images.files, written, batch, cfg)
        assert torch.equal(images, reference)


def test_crops_come_from_the_whole_image_of_any_shape(tmp_path: Path) -> None:
    """Boxes are drawn at each file's own size and reach every border of it: nothing is
    cut away first (the old centre square of a 96 x 40 image lost 28 columns each side)."""
    from PIL import Image

    sizes = [(96, 40), (40, 96), (64, 64), (150, 100)]  # (width, height)
    for i, (w, h) in enumerate(sizes):
        pixels = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    files = ImageFiles(tmp_path, [f"{i}.png" for i in range(len(sizes))], (3, 18, 18))
    split = Split("train", files, np.zeros(len(sizes), dtype=np.int64))
    config = AugmentConfig(crop_scale=(0.08, 1.0))
    for i, (w, h) in enumerate(sizes):
        boxes = []
        for epoch in range(1, 301):
            crops = CroppedImageFiles(split, 3, 16, config, seed=0, epoch=epoch)
            p = sample_params(0, epoch, torch.tensor([i]), config, h, w)
            boxes.append([int(v[0]) for v in (p.top, p.left, p.height, p.width)])
            if epoch <= 3:  # the crop is torchvision's resized_crop of the whole image
                whole = Image.open(tmp_path / f"{i}.png").convert("RGB")
                ref = TF.resized_crop(whole, *boxes[-1], [16, 16], InterpolationMode.BILINEAR)
                assert torch.equal(crops[i][0], TF.pil_to_tensor(ref))
        top, left, box_h, box_w = torch.tensor(boxes).T
        assert top.min() == 0 and (top + box_h).max() == h
        assert left.min() == 0 and (left + box_w).max() == w


def test_shorter_side_resize_keeps_the_aspect_ratio_and_the_whole_image(tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.zeros((60, 120, 3), dtype=np.uint8)
    pixels[:, :4] = 255  # a white stripe on the left border survives the resize
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    split = Split("train", ImageFiles(tmp_path, ["wide.png"], (3, 18, 18)), np.zeros(1, np.int64))
    whole = CroppedImageFiles(split, 3, 16, AugmentConfig(), 0, 1, shorter_side=30)
    image = whole.whole_image(0)
    assert image.size == (60, 30)
    assert np.asarray(image)[:, 0].min() > 200
    assert CroppedImageFiles(split, 3, 16, AugmentConfig(), 0, 1).whole_image(0).size == (120, 60)


def test_rank_shards_concatenate_to_the_global_batch(folder) -> None:
    out, _ = folder
    prepared = load_prepared(out)
    cfg = folder_config(prepared.train.images.root, data={"channels": 3})
    source = train_source(prepared, cfg, torch.device("cpu"))
    whole = list(source.batches(BATCH_SIZE, SEED, EPOCH))
    shards = [list(source.batches(BATCH_SIZE, SEED, EPOCH, rank, 2)) for rank in (0, 1)]
    for step, (images, indices) in enumerate(whole):
        parts = [shards[rank][step] for rank in (0, 1)]
        assert torch.equal(parts[0][1], rank_shard(indices, 0, 2))
        assert torch.equal(torch.cat([p[1] for p in parts]), indices)
        assert torch.equal(torch.cat([p[0] for p in parts]), images)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_folder_batches_reach_the_gpu_pinned_and_unchanged(folder) -> None:
    out, _ = folder
    prepared = load_prepared(out)
    cfg = folder_config(prepared.train.images.root, pretrain={"num_workers": 2})
    on_cpu = train_source(prepared, cfg, torch.device("cpu"))
    on_gpu = train_source(prepared, cfg, torch.device("cuda"))
    pairs = zip(
        on_cpu.batches(BATCH_SIZE, SEED, EPOCH),
        on_gpu.batches(BATCH_SIZE, SEED, EPOCH),
        strict=True,
    )
    for (images, indices), (gpu_images, gpu_indices) in pairs:
        assert gpu_images.is_cuda and gpu_indices.is_cuda
        assert torch.equal(gpu_images.cpu(), images) and torch.equal(gpu_indices.cpu(), indices)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_undecodable_file_raises_an_error_naming_it(folder, num_workers: int) -> None:
    out, _ = folder
    prepared = load_prepared(out)
    bad = prepared.train.images.root / "train/b/img_004.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")  # broken after prepare checked it
    cfg = folder_config(prepared.train.images.root, pretrain={"num_workers": num_workers})
    source = train_source(prepared, cfg, torch.device("cpu"))
    with pytest.raises(InvpropError) as raised:
        for _ in source.batches(BATCH_SIZE, SEED, EPOCH):
            pass
    message = str(raised.value)
    assert message.startswith(f"{bad}: cannot decode image (")
    assert "\n" not in message  # one line, as the stages print errors, with or without workers


def test_training_on_a_folder_is_the_same_run_with_or_without_workers(
    folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    finals = []
    for num_workers in (0, 2):
        cfg = folder_config(
            tmp_path / "raw",
            data={"channels": 3, "image_size": 16},  # loads at 18 x 18: resized files
            pretrain={
                "epochs": 1,
                "batch_size": BATCH_SIZE,
                "n_background": 16,
                "n_pos": 8,
                "num_workers": num_workers,
                "snapshot_epochs": [],
            },
            embed={"batch_size": 10, "tags": ["final"]},
        )
        prepare(cfg, "imagefolder")  # -> data/prepared/imagefolder, where training reads
        run = tmp_path / f"workers_{num_workers}"
        summary = train(cfg, TrainingRun(run / "models", run / "live"))
        assert summary["train_images"] == 27 and summary["epochs"] == 1
        finals.append(load_checkpoint(run / "models/final.pt"))
    assert finals[0]["config"]["pretrain"]["num_workers"] == 0
    assert finals[1]["config"]["pretrain"]["num_workers"] == 2
    for key in ("model", "bank"):
        for name, value in finals[0][key].items():
            assert torch.equal(value, finals[1][key][name]), f"{key}.{name} differs"
