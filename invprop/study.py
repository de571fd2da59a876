"""Seed studies: experiments queued and run by DVC, aggregated into one table.

A study is a set of DVC experiments that differ in `seed` and in the params of the variants
being compared; DVC runs them (`dvc exp run --queue -S ...`, then `dvc queue start`) and
keeps every finished one. This module reads them back from `dvc exp show --json` and
summarises, for each variant, a figure of `reports/evaluate.json` over seeds:

- mean ± standard deviation over the seeds (sample std, n-1);
- the paired difference against a named baseline variant: runs paired by `seed`, the mean
  difference and its Student-t 95% interval with n-1 degrees of freedom.

Variants. One experiment scores several representations, each under its own prefix of
evaluate.json (`invp`, `instance_discrimination`, `random_init`): with the baseline on, one
experiment trains InvP and instance discrimination with the same seed, so the pair shares
initialisation, augmentation draws and batch order. A variant is such a prefix plus the
params that tell its experiments apart from the other experiments of the study (`seed`
and the `evaluate.baselines` switches excluded: they choose what is scored, not what is
computed), e.g. `invp [pretrain.epochs=20]`.

Which randomness `seed` varies: network initialisation, augmentation draws and batch order
(`data.seed`, the same for every run of a study, fixes the data subsets, the validation part
of train and the linear probe's splits), so the seeds of a study compare like with like.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invprop import names
from invprop.config import flat_keys
from invprop.errors import InvpropError

__all__ = [
    "DEFAULT_FIGURES",
    "PairedDifference",
    "Run",
    "Summary",
    "paired_difference",
    "read_experiments",
    "runs_from_show",
    "study_table",
    "variant_labels",
]

# Keys that choose what evaluate scores, never what a run computes: left out of variants.
NOT_A_VARIANT = ("seed", "evaluate.baselines.")
# The figures a study shows by default: label -> key under a representation's prefix.
DEFAULT_FIGURES = {
    "kNN K=200, backbone features": "knn_clean/features/k200/top1",
    "kNN K=200, head embeddings": "knn_clean/embeddings/k200/top1",
    "kNN K=200, memory bank": "knn_bank/k200/top1",
    "linear probe": "linear/top1",
}


@dataclass(frozen=True)
class Run:
    """One finished experiment: its name, params (dotted keys) and evaluate figures."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def seed(self) -> int:
        return int(self.params["seed"])


@dataclass(frozen=True)
class PairedDifference:
    """Mean of variant - baseline over the seeds both have, with its Student-t interval
    (None when fewer than 2 pairs leave no spread to estimate)."""

    mean: float
    low: float | None
    high: float | None
    n: int


@dataclass(frozen=True)
class Summary:
    """One (figure, variant) row of a study table."""

    figure: str
    variant: str
    seeds: list[int]
    mean: float
    std: float | None
    is_baseline: bool
    difference: PairedDifference | None  # None for the baseline itself, or no shared seed

    def to_dict(self) -> dict[str, Any]:
        diff = self.difference
        return {
            "figure": self.figure,
            "variant": self.variant,
            "seeds": self.seeds,
            "mean": self.mean,
            "std": self.std,
            "is_baseline": self.is_baseline,
            "difference": None if diff is None else diff.__dict__,
        }


# ---------------------------------------------------------------------------------------
# Reading DVC's experiments


def runs_from_show(
    shown: list[dict[str, Any]], report: str
) -> tuple[list[Run], dict[str, list[str]]]:
    """Finished experiments of `dvc exp show --json` output, and the names of the others
    by state (queued, running, failed; "no evaluate report" for a finished one without
    the evaluate report, whose repo-relative path `report` keys DVC's metrics)."""
    runs: list[Run] = []
    pending: dict[str, list[str]] = defaultdict(list)
    for commit in shown:
        for exp_range in commit.get("experiments") or []:
            tip = exp_range["revs"][0]
            name = exp_range.get("name") or tip.get("name") or tip["rev"][:7]
            executor = exp_range.get("executor") or {}
            state = executor.get("state", "success")
            if state != "success" or tip.get("error"):
                pending["failed" if tip.get("error") else state].append(name)
                continue
            data = tip.get("data") or {}
            params = data.get("params", {}).get("params.yaml", {}).get("data")
            metrics = data.get("metrics", {}).get(report, {}).get("data")
            if not params or not metrics:
                pending["no evaluate report"].append(name)
                continue
            runs.append(Run(name, flat_keys(params), metrics))
    return runs, dict(pending)


def _dvc() -> str:
    beside = Path(sys.executable).parent / "dvc"
    found = str(beside) if beside.exists() else shutil.which("dvc")
    if found is None:
        raise InvpropError("dvc is not installed; a study reads its experiments with dvc")
    return found


def read_experiments(repo: Path, all_commits: bool = False) -> list[dict[str, Any]]:
    """`dvc exp show --json` of `repo`: the experiments of HEAD (or of every commit)."""
    if not repo.is_dir():
        raise InvpropError(f"{repo} is not a folder; give the DVC repository with --repo")
    args = [_dvc(), "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    result = subprocess.run(args, cwd=repo, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise InvpropError(
            f"`dvc exp show --json` failed in {repo}: {detail[-1] if detail else 'no output'}"
        )
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------------------
# Aggregating


def _varies(key: str) -> bool:
    return not any(key == skip or key.startswith(skip) for skip in NOT_A_VARIANT)


def variant_labels(runs: Sequence[Run]) -> dict[str, str]:
    """Run name -> the params that tell its experiment apart from the study's others
    ("" when every run shares them), e.g. "pretrain.epochs=20 pretrain.lambda_inv=1.0"."""
    keys = sorted({key for run in runs for key in run.params if _varies(key)})
    differing = [
        key
        for key in keys
        if len({json.dumps(run.params.get(key), sort_keys=True) for run in runs}) > 1
    ]
    return {
        run.name: " ".join(
            f"{key}={json.dumps(run.params.get(key), separators=(',', ':'))}" for key in differing
        )
        for run in runs
    }


def paired_difference(
    values: dict[int, float], baseline: dict[int, float], confidence: float = 0.95
) -> PairedDifference | None:
    """Mean of values[s] - baseline[s] over the seeds s both have, with a Student-t interval
    (n-1 degrees of freedom); None when they share no seed."""
    from scipy.stats import t

    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return PairedDifference(mean, None, None, n)
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n)


def _representations(runs: Sequence[Run], keys: Sequence[str]) -> list[str]:
    """Prefixes (invp, instance_discrimination, ...) that scored at least one of `keys`."""
    found = {
        name.split("/", 1)[0]
        for run in runs
        for name in run.metrics
        if any(name.endswith("/" + key) and name.count("/") == key.count("/") + 1 for key in keys)
    }
    order = {name: i for i, name in enumerate(["invp", *names.TRAINING_BASELINES])}
    return sorted(found, key=lambda prefix: (order.get(prefix, len(order)), prefix))


def study_table(
    runs: Sequence[Run],
    baseline: str,
    figures: dict[str, str] | None = None,
    split: str = "test",
) -> list[Summary]:
    """One Summary per (figure, variant): mean ± std over seeds and the paired difference
    against the variant named `baseline` (a full label, or a representation prefix that
    names exactly one variant). `split` "val" reads the validation-part figures."""
    if not runs:
        raise InvpropError(
            "no finished experiments to aggregate; queue them (dvc exp run --queue -S seed=N "
            "...), run them (dvc queue start) and wait for `dvc queue status` to show them done"
        )
    if split not in ("test", "val"):
        raise InvpropError(f"split {split!r} is not one of: test, val")
    figures = figures or DEFAULT_FIGURES
    keys = {label: (key if split == "test" else f"val/{key}") for label, key in figures.items()}
    labels = variant_labels(runs)
    # variant -> figure -> seed -> value
    values: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    where: dict[tuple[str, int], str] = {}
    for prefix in _representations(runs, list(keys.values())):
        for run in runs:
            variant = f"{prefix} [{labels[run.name]}]" if labels[run.name] else prefix
            scored = False
            for label, key in keys.items():
                value = run.metrics.get(f"{prefix}/{key}")
                if isinstance(value, int | float):
                    values[variant][label][run.seed] = float(value)
                    scored = True
            if not scored:
                continue
            other = where.setdefault((variant, run.seed), run.name)
            if other != run.name:
                raise InvpropError(
                    f"experiments {other} and {run.name} are both seed {run.seed} of "
                    f"{variant!r}; remove one (dvc exp remove NAME) or tell them apart by a param"
                )
    chosen = _baseline_variant(baseline, list(values))
    rows: list[Summary] = []
    for label in figures:
        for variant, by_figure in values.items():
            per_seed = by_figure.get(label)
            if not per_seed:
                continue
            seeds = sorted(per_seed)
            data = [per_seed[s] for s in seeds]
            mean = sum(data) / len(data)
            std = (
                math.sqrt(sum((v - mean) ** 2 for v in data) / (len(data) - 1))
                if len(data) > 1
                else None
            )
            diff = None
            if variant != chosen:
                diff = paired_difference(per_seed, values[chosen].get(label, {}))
            rows.append(Summary(label, variant, seeds, mean, std, variant == chosen, diff))
    return rows


def _baseline_variant(name: str, variants: list[str]) -> str:
    if name in variants:
        return name
    matching = [v for v in variants if v.split(" [", 1)[0] == name]
    if len(matching) == 1:
        return matching[0]
    listed = "; ".join(repr(v) for v in variants)
    if not matching:
        raise InvpropError(f"baseline {name!r} is not a variant of this study; variants: {listed}")
    raise InvpropError(
        f"baseline {name!r} names {len(matching)} variants; give one in full: {listed}"
    )
