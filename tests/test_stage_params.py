"""Every param a stage reads is one its dvc.yaml entry tracks (and so the Snakefile's rule,
tests/test_pipeline_dag.py): otherwise a change to it leaves the stage's artifact cached as
up to date although the stage would now compute something else.

What a stage reads is observed, not declared: the tiny pipeline's stages run in this process
on a config whose every section records each key read (`to_dict` reads every key of the
sections it dumps). So it covers the code paths the tiny params take (array data, CPU,
every stage and baseline); a read only a GPU or an image folder makes is not observed.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dvc_pipeline import dvc_stages, tiny_params
from test_stage_deps import stage_function_name

from invprop.checkpoint import training_hash
from invprop.config import Config, config_from_dict
from invprop.pipeline import STAGE_NAMES, run_stage

ROOT = Path(__file__).resolve().parents[1]

# Reads that cannot change an artifact's content, by the function that makes them, each
# for a stated reason.
NOT_COMPUTING = {
    # Fails, naming the mismatch, when a checkpoint's data section differs from the params
    # (a stage that passes it computes the same as if it were absent).
    "check_compatible": "a check that raises or passes",
    # Only logs a note when the checkpoint was trained with other params.
    "training_hash": "compared, and the difference only logged",
}
# Keys that set how a stage runs, never what it computes.
NOT_COMPUTING_KEYS = {
    # DataLoader workers decode image folders in the order one process would
    # (tests/test_data_imagefolder.py), so the batches are the same bytes.
    "pretrain.num_workers": "decoding workers",
}


def _reads_skipped() -> bool:
    """True when the read in progress is made inside a NOT_COMPUTING function."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in NOT_COMPUTING:
            return True
        frame = frame.f_back
    return False


def _recording_class(cls: type, prefix: str, reads: set[str]) -> type:
    """A subclass of config section `cls` whose field reads add `prefix + name` to `reads`
    (`dataclasses.replace` builds the same class, so a replaced config keeps recording)."""
    names = {f.name for f in dataclasses.fields(cls)}

    def __getattribute__(self: Any, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name in names and not dataclasses.is_dataclass(value) and not _reads_skipped():
            reads.add(prefix + name)
        return value

    return type(f"Recording{cls.__name__}", (cls,), {"__getattribute__": __getattribute__})


def recording(section: Any, reads: set[str], prefix: str = "") -> Any:
    """A copy of `section` (a Config or one of its parts) that adds every key read to `reads`."""
    with_reads = object.__new__(_recording_class(type(section), prefix, reads))
    for f in dataclasses.fields(section):
        value = object.__getattribute__(section, f.name)
        if dataclasses.is_dataclass(value):
            value = recording(value, reads, f"{prefix}{f.name}.")
        object.__setattr__(with_reads, f.name, value)
    return with_reads


def untracked(reads: set[str], tracked: frozenset[str]) -> set[str]:
    """The keys of `reads` that no tracked key covers ("data" covers "data.seed")."""
    covered = tracked | set(NOT_COMPUTING_KEYS)
    return {key for key in reads if not any(key == t or key.startswith(t + ".") for t in covered)}


def test_recording_sees_reads_through_replace_and_to_dict() -> None:
    reads: set[str] = set()
    cfg = recording(Config(), reads)
    assert cfg.pretrain.epochs == Config().pretrain.epochs
    assert reads == {"pretrain.epochs"}
    changed = dataclasses.replace(cfg, seed=3)
    reads.clear()
    assert changed.evaluate.linear.max_iter == Config().evaluate.linear.max_iter
    assert changed.seed == 3
    assert reads == {"evaluate.linear.max_iter", "seed"}
    reads.clear()
    changed.to_dict()
    assert "report.anchors" in reads and "data.seed" in reads
    reads.clear()
    training_hash(changed)  # a NOT_COMPUTING function
    assert reads == set()
    # A tracked section covers its keys, a key name's prefix does not ("seeds" is not "seed").
    found = {"data.seed", "data.name", "seed", "pretrain.num_workers"}
    assert untracked(found, frozenset({"data", "seeds"})) == {"seed"}


@pytest.fixture(scope="module")
def stage_reads(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[set[str], frozenset[str]]]:
    """Each dvc.yaml stage of the tiny pipeline, run in this process in dependency order:
    the keys it read, and the keys dvc.yaml tracks for it."""
    from dvc.repo import Repo

    workspace = tmp_path_factory.mktemp("stage_params")
    params = tiny_params(ROOT)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (workspace / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    Repo.init(str(workspace), no_scm=True)
    stages = dvc_stages(workspace)
    order = sorted(stages, key=lambda name: STAGE_NAMES.index(stage_function_name(name)))
    cfg = config_from_dict(params)
    found = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workspace)
        for name in order:
            reads: set[str] = set()
            args = shlex.split(stages[name].cmd)[2:]  # python stages/<stage>.py ARGS
            run_stage(stage_function_name(name), recording(cfg, reads), args)
            found[name] = (reads, stages[name].params)
    return found


def test_every_param_a_stage_reads_is_tracked(
    stage_reads: dict[str, tuple[set[str], frozenset[str]]],
) -> None:
    assert {stage_function_name(name) for name in stage_reads} == set(STAGE_NAMES)
    missed = {name: sorted(untracked(*found)) for name, found in stage_reads.items()}
    assert {name: keys for name, keys in missed.items() if keys} == {}
    # The recording saw each stage read the params that define its work.
    assert {"pretrain.lr", "pretrain.n_pos", "model.head"} <= stage_reads["pretrain"][0]
    assert {"graph.k", "propagate.k"} <= stage_reads["graph@final"][0]
    assert {"evaluate.knn_k", "evaluate.linear.c_grid"} <= stage_reads["evaluate"][0]
