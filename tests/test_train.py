"""The pretrain loop: resume after SIGKILL is bit-identical, params changes start afresh,
non-finite losses stop the run and keep the last good checkpoint."""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import exact_table, same_training_state, states_equal

from invprop import training as train_module
from invprop.batches import batch_sizes, epoch_batches, rank_shard
from invprop.checkpoint import encoder_from_checkpoint, load_checkpoint, save_checkpoint
from invprop.config import Config, config_from_dict
from invprop.errors import InvpropError
from invprop.inference import extract
from invprop.stages.prepare import prepare
from invprop.training import learning_rate, train
from invprop.workspace import TrainingRun, prepared_dataset

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"name": "synthetic", "image_size": 16, "train_limit": 192, "test_limit": 48},
    "model": {"dim": 32},
    "pretrain": {
        "epochs": 3,
        "batch_size": 32,
        "n_background": 64,
        "n_pos": 8,
        "snapshot_epochs": [1],
        "threads": 1,
        "lr": 0.05,
    },
    "embed": {"tags": ["final"]},
    "transfer": {"targets": []},
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding params.yaml and the prepared tiny dataset; the test runs inside it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    prepare(tiny_config(), "synthetic")
    return tmp_path


def tiny_config(*overrides: str) -> Config:
    return config_from_dict(TINY, overrides)


def test_epoch_batches_cover_every_index_once_and_are_seeded() -> None:
    batches = epoch_batches(100, 32, seed=3, epoch=2)
    assert sorted(torch.cat(batches).tolist()) == list(range(100))
    assert all(16 <= len(b) <= 48 for b in batches)
    assert [len(b) for b in batches] == batch_sizes(100, 32) == [34, 33, 33]
    assert torch.equal(torch.cat(batches), torch.cat(epoch_batches(100, 32, seed=3, epoch=2)))
    assert not torch.equal(torch.cat(batches), torch.cat(epoch_batches(100, 32, seed=3, epoch=3)))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_shards_split_a_global_batch_in_rank_order(world_size: int) -> None:
    batch = torch.arange(100, 129)  # 29 indices: shares of 10/10/9 for three ranks
    shards = [rank_shard(batch, rank, world_size) for rank in range(world_size)]
    assert torch.equal(torch.cat(shards), batch)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_learning_rate_warms_up_then_follows_cosine() -> None:
    cfg = tiny_config("pretrain.epochs=10", "pretrain.warmup_epochs=2", "pretrain.lr=1.0")
    steps = 5
    assert learning_rate(cfg, 0, steps) == pytest.approx(1 / 10)
    assert learning_rate(cfg, 9, steps) == pytest.approx(1.0)
    assert learning_rate(cfg, 10, steps) == pytest.approx(1.0)
    assert learning_rate(cfg, 30, steps) == pytest.approx(0.5)
    assert learning_rate(cfg, 49, steps) == pytest.approx(0.5 * (1 + math.cos(39 / 40 * math.pi)))


def test_step_learning_rate_is_the_authors_adjust_learning_rate() -> None:
    """utils.py's adjust_learning_rate without --cos, written out: lr x rate for every
    milestone the 1-based epoch has reached."""

    def theirs(epoch: int, lr: float = 0.03, steps: str = "400,600,700") -> float:
        for milestone in map(int, steps.split(",")):
            lr *= 0.1 if epoch >= milestone else 1.0
        return lr

    cfg = tiny_config(
        "pretrain.epochs=800",
        "pretrain.lr=0.03",
        "pretrain.schedule=step",
        "pretrain.lr_milestones=[400, 600, 700]",
    )
    steps = 3
    for epoch in (1, 399, 400, 401, 599, 600, 700, 799):
        for step_in_epoch in range(steps):
            got = learning_rate(cfg, (epoch - 1) * steps + step_in_epoch, steps)
            assert got == pytest.approx(theirs(epoch)), epoch


def test_training_writes_checkpoints_and_curves(workdir: Path) -> None:
    summary = train(tiny_config())
    final = load_checkpoint("models/pretrain/final.pt")
    assert final["epoch"] == 3 and summary["epochs"] == 3
    assert load_checkpoint("models/pretrain/snapshots/epoch_0001.pt")["epoch"] == 1
    assert [row["epoch"] for row in final["history"]] == [1, 2, 3]
    bank = final["bank"]
    assert bank["vectors"].shape == (192, 32) and bank["neighbours"].shape == (192, 4)
    norms = bank["vectors"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert (bank["neighbours"] >= 0).all()
    assert (bank["neighbours"] != torch.arange(192).unsqueeze(1)).all()
    loss_tsv = (workdir / "dvclive/pretrain/plots/metrics/loss.tsv").read_text().splitlines()
    assert len(loss_tsv) == 1 + 3


@pytest.mark.parametrize("refresh", ["online", "bank", "clean"])
def test_table_refresh_and_its_purity_per_epoch(workdir: Path, refresh: str) -> None:
    cfg = tiny_config(f"pretrain.table_refresh={refresh}", "pretrain.epochs=2")
    summary = train(cfg)
    final = load_checkpoint("models/pretrain/final.pt")
    assert summary["table_purity"] == [row["table_purity"] for row in final["history"]]
    table = final["bank"]["neighbours"]
    prepared = prepared_dataset("synthetic")
    labels = prepared.train.labels
    same = (labels[table.numpy()] == labels[:, None]).mean()
    assert final["history"][-1]["table_purity"] == pytest.approx(same)
    for row in final["history"]:
        assert 0 <= row["table_purity"] <= 1
    assert (summary["table_seconds"] > 0) == (refresh != "online")
    if refresh == "online":
        return
    # Rebuilt after the last step, from the final bank or the final network's clean view.
    if refresh == "bank":
        source = final["bank"]["vectors"]
    else:
        encoder = encoder_from_checkpoint(final, "cpu")[0]
        _, source = extract(encoder, prepared.train, prepared.meta, cfg, "cpu")
        source = torch.nn.functional.normalize(source, dim=1)
    assert table.tolist() == exact_table(source.double().numpy(), 4).tolist()


def test_with_invp_off_the_table_is_refreshed_online_whatever_the_param(workdir: Path) -> None:
    """The baseline never uses its table, so it pays for no rebuild: the same run as with
    table_refresh online, table included."""
    off = ("pretrain.invp=false", "pretrain.epochs=1")
    runs = {name: TrainingRun(workdir / name, workdir / f"{name}-live") for name in ("a", "b")}
    online = train(tiny_config(*off, "pretrain.table_refresh=online"), runs["a"])
    clean = train(tiny_config(*off, "pretrain.table_refresh=clean"), runs["b"])
    assert clean["table_purity"] == online["table_purity"]
    assert clean["table_seconds"] == 0.0
    tables = [load_checkpoint(run.final)["bank"]["neighbours"] for run in runs.values()]
    assert torch.equal(*tables)


def test_sigkills_in_steps_and_inside_checkpoint_writes_lose_nothing(workdir: Path) -> None:
    """SIGKILL the pretrain stage four times: in a seeded-random training step and inside
    the writes of the snapshot, last.pt and final.pt, each cut at a seeded-random byte.
    After each kill every visible checkpoint is whole (the old one or none) and only a
    partial temporary file shows the cut; the last run ends equal to an uninterrupted run.
    TINY has 6 steps an epoch, 3 epochs and a snapshot at epoch 1."""
    reference = workdir / "reference"
    train(tiny_config(), TrainingRun(reference / "models", reference / "live"))

    draw = random.Random(8)
    work, out = workdir / "models/in_progress/pretrain", workdir / "models/pretrain"
    # (how the process dies, epoch of last.pt after it (None: no last.pt), what is cut)
    kills = [
        (["save", "epoch_0001.pt", f"{draw.uniform(0.05, 0.95):.3f}"], None, "epoch_0001.pt"),
        (["step", str(6 + draw.randint(1, 6))], 1, None),  # starts afresh: a step of epoch 2
        (["save", "last.pt", f"{draw.uniform(0.05, 0.95):.3f}"], 1, "last.pt"),  # epoch 2's
        (["save", "final.pt", f"{draw.uniform(0.05, 0.95):.3f}"], 3, "final.pt"),
    ]
    command = [sys.executable, str(ROOT / "tests/pretrain_killed_at.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's invprop
    for how, last_epoch, cut in kills:
        killed = subprocess.run([*command, *how], env=env, capture_output=True, text=True)
        assert killed.returncode == -signal.SIGKILL, (how, killed.stderr[-2000:])
        assert not out.exists(), how  # published only once training is done
        visible = [p for p in work.rglob("*.pt") if not p.name.startswith(".")]
        epochs = {p.name: load_checkpoint(p)["epoch"] for p in visible}  # each loads whole
        assert epochs.get("last.pt") == last_epoch, (how, epochs)
        assert "final.pt" not in epochs, how
        if cut is not None:
            if cut != "last.pt":  # the old last.pt stays visible, checked above
                assert cut not in epochs, (how, epochs)
            partial = list(work.rglob(f".{cut}.tmp-*"))
            assert len(partial) == 1 and partial[0].stat().st_size > 0, (how, partial)
            with pytest.raises(InvpropError, match="truncated or corrupt"):
                load_checkpoint(partial[0])

    finished = subprocess.run(
        [*command[:1], str(ROOT / "stages/pretrain.py")], env=env, capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resuming from epoch 3 of 3" in finished.stderr
    for name in ("final.pt", "snapshots/epoch_0001.pt"):
        assert same_training_state(
            load_checkpoint(reference / "models" / name), load_checkpoint(out / name)
        ), name
    assert [p.name for p in out.rglob(".*")] == [], "stray temporary files were left behind"
    assert not work.parent.exists(), "the finished run stays in models/in_progress"
    for curve in ("loss", "loss_invariance", "knn_bank_top1"):
        tsv = f"plots/metrics/{curve}.tsv"
        assert (workdir / "dvclive/pretrain" / tsv).read_text() == (
            reference / "live" / tsv
        ).read_text()


def test_changed_params_start_afresh_and_say_so(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(tiny_config("pretrain.epochs=2"))
    capsys.readouterr()
    train(tiny_config("pretrain.epochs=2", "pretrain.lr=0.01"))
    assert "params changed" in capsys.readouterr().err
    assert [r["epoch"] for r in load_checkpoint("models/pretrain/final.pt")["history"]] == [1, 2]


def test_bookkeeping_params_keep_the_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train(tiny_config("pretrain.epochs=2"))
    before = load_checkpoint("models/pretrain/final.pt")
    capsys.readouterr()
    train(tiny_config("pretrain.epochs=2", "pretrain.monitor_knn=false"))
    assert "resuming from epoch 2 of 2" in capsys.readouterr().err
    assert states_equal(before, load_checkpoint("models/pretrain/final.pt"))


def test_truncated_last_checkpoint_falls_back_to_snapshot(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(tiny_config("pretrain.epochs=2"))
    last = workdir / "models/pretrain/last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    capsys.readouterr()
    train(tiny_config("pretrain.epochs=2"))
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "epoch_0001.pt" in err
    assert load_checkpoint(last)["epoch"] == 2


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = train_module.ramp_weight

    def poisoned(epoch: int, ramp_epoch: int, lambda_inv: float) -> float:
        return float("nan") if epoch == 2 else real(epoch, ramp_epoch, lambda_inv)

    monkeypatch.setattr(train_module, "ramp_weight", poisoned)
    with pytest.raises(InvpropError, match=r"loss became nan in epoch 2.*epoch 1\) is kept"):
        train(tiny_config())
    assert load_checkpoint("models/in_progress/pretrain/last.pt")["epoch"] == 1
    assert not Path("models/pretrain").exists()


def test_background_larger_than_bank_is_refused_before_work(workdir: Path) -> None:
    with pytest.raises(InvpropError, match=r"pretrain\.n_background = 500 is larger than"):
        train(tiny_config("pretrain.n_background=500"))
    assert not Path("models").exists()


def test_pickled_payload_in_checkpoint_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # would run a command when unpickled
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"version": 1, "payload": Payload()}, path)
    with pytest.raises(InvpropError, match="refusing to load it"):
        load_checkpoint(path)


def test_checkpoint_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"version": 1, "epoch": 1})

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"version": 1, "epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_bytes_depend_only_on_their_content(tmp_path: Path) -> None:
    state = {"version": 1, "epoch": 3, "weights": torch.arange(10.0)}
    save_checkpoint(tmp_path / "a.pt", state)
    save_checkpoint(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    # Pickle refers back to objects by identity: a state built in training shares strings
    # and lists that the same state loaded from a file does not.
    mean = [0.5]
    built = {"epoch": 3, "history": [{"epoch": 3}], "a": mean, "b": mean}
    loaded = {"epoch": 3, "history": [{"".join(["ep", "och"]): 3}], "a": [0.5], "b": [0.5]}
    save_checkpoint(tmp_path / "built.pt", built)
    save_checkpoint(tmp_path / "loaded.pt", loaded)
    assert (tmp_path / "built.pt").read_bytes() == (tmp_path / "loaded.pt").read_bytes()


def test_sigterm_says_what_happened_and_the_rerun_resumes(workdir: Path) -> None:
    """A SLURM time limit or scancel sends SIGTERM: one line says so, the finished epochs
    stay in models/in_progress/ (no orchestrator clears it) and a rerun resumes there."""
    held = workdir / "held"
    command = [sys.executable, str(ROOT / "tests/pretrain_killed_at.py"), "hold", "1", str(held)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not held.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.exists(), process.stderr.read() if process.poll() is not None else "timed out"
    process.send_signal(signal.SIGTERM)
    err = process.stderr.read()
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert "invprop pretrain: stopped by SIGTERM after" in err
    assert "Traceback" not in err
    work = workdir / "models/in_progress/pretrain"
    assert load_checkpoint(work / "last.pt")["epoch"] == 1
    assert [p.name for p in work.rglob(".*")] == []  # no temporary file left behind
    finished = subprocess.run(command, env=env, capture_output=True, text=True)  # held exists
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resuming from epoch 1 of 3" in finished.stderr
    assert load_checkpoint(workdir / "models/pretrain/final.pt")["epoch"] == 3


def test_a_rerun_that_trains_the_same_writes_the_same_bytes(workdir: Path) -> None:
    """Checkpoints keep no timings: training again from scratch, and the rerun that finds
    the finished run and resumes at its end, write byte-identical files (DVC sees no
    change); the timings are in the stage's report."""
    summary = train(tiny_config())
    out = workdir / "models/pretrain"
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.pt"))}
    assert len(first) == 3  # last, final and the epoch-1 snapshot
    assert summary["seconds"] > 0 and summary["images_per_second"] > 0
    for row in load_checkpoint(out / "final.pt")["history"]:
        assert not set(row) & set(train_module.TIMING_KEYS), row
    resumed = train(tiny_config())  # the finished run of these params: nothing to train
    assert resumed["seconds"] == 0 and resumed["images_per_second"] is None
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.pt"))} == first
    shutil.rmtree(out)
    train(tiny_config())  # from scratch
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.pt"))} == first
