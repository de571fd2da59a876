# The invprop pipeline for Snakemake: the same stages, commands, inputs, outputs and
# params as dvc.yaml (tests/test_pipeline_dag.py proves it).
#   snakemake --cores 2                                          # everything
#   snakemake --workflow-profile profiles/local                  # all cores, failed logs shown
#   snakemake --cores 2 --config 'pretrain={epochs: 8}'          # one override
#   snakemake --cores 2 --configfile presets/ablation-concat.yaml
# Every job writes its output to logs/<job>.log. Wall time and peak memory go into each
# stage's reports/<stage>.json, written by the stage itself for both orchestrators: a
# `benchmark:` file would be an output to Snakemake, so every workspace DVC built would look
# incomplete to it (and --touch does not create one).
from snakemake.utils import min_version

from invprop.config import config_from_dict, restore_types, save_params
from invprop.slurm import status_problem

min_version("9.0")


configfile: "params.yaml"


# Overrides (--config, --configfile) change `config`, while the stages read a params file.
# So the resolved config, typed again (--config reads nested values as strings) and
# validated, is written to one file that every command passes with --params, and the rules
# track its values: each job computes with exactly the params Snakemake records.
RESOLVED = config_from_dict(restore_types(config))
config.update(RESOLVED.to_dict())
PARAMS = save_params(RESOLVED, ".snakemake/invprop/params.yaml")

DATA = config["data"]["name"]
TARGETS = config["transfer"]["targets"]
TAGS = config["embed"]["tags"]
# pretrain.processes > 1: the training rules start DDP with one process per GPU; with
# pretrain.nodes > 1, one SLURM job spans that many nodes with `processes` GPUs on each
# (--gres counts per node, --gpus the whole job).
TRAINING_GPUS = config["pretrain"]["processes"]
TRAINING_NODES = config["pretrain"]["nodes"]
if TRAINING_NODES == 1:
    TRAINING_RESOURCES = {"gpu": TRAINING_GPUS}
else:
    TRAINING_RESOURCES = {
        "nodes": TRAINING_NODES,
        "gres": f"gpu:{TRAINING_GPUS}",
        "tasks_per_gpu": 1,
    }
PREPARED = f"data/prepared/{DATA}"


def tracked(*keys):
    """The params a rule reads, by dotted key: Snakemake reruns the rule when they change."""
    values = {}
    for key in keys:
        node = config
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def one_of(names):
    """A wildcard constraint matching exactly these names."""
    return "|".join(names) or "^$"


# Snakemake's SLURM executor polls a job-status command (sacct or squeue) and waits
# forever when it cannot answer, e.g. sacct on a cluster without accounting: stop at once.
onstart:
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.cli_prefix == "slurm":
        settings = workflow.executor_settings
        problem = status_problem(
            settings.status_command, settings.init_seconds_before_status_checks
        )
        if problem:
            raise WorkflowError(problem)


# Light rules run on the submitting machine, never queued as cluster jobs.
localrules:
    all,
    prepare,
    prepare_target,
    propagate,
    report,


rule all:
    input:
        PREPARED,
        expand("data/prepared/{target}", target=TARGETS),
        "reports/pretrain.json",
        expand("artifacts/propagation/{tag}", tag=TAGS),
        "reports/evaluate.json",
        "reports/transfer.json",
        "reports/report.md",


rule prepare:
    input:
        "stages/prepare.py",
        "invprop/bounds.py",
        "invprop/data",
        "invprop/io.py",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/stages/prepare.py",
        "invprop/workspace.py",
    output:
        directory(PREPARED),
        f"reports/prepare_{DATA}.json",
    params:
        tracked=tracked("data"),
    log:
        "logs/prepare.log",
    shell:
        "python stages/prepare.py {DATA} --params {PARAMS} > {log} 2>&1"


rule prepare_target:
    input:
        "stages/prepare.py",
        "invprop/bounds.py",
        "invprop/data",
        "invprop/io.py",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/stages/prepare.py",
        "invprop/workspace.py",
    output:
        directory("data/prepared/{target}"),
        "reports/prepare_{target}.json",
    wildcard_constraints:
        target=one_of(TARGETS),
    params:
        tracked=tracked(
            "data.name",
            "data.seed",
            "data.image_size",
            "data.channels",
            "data.download",
            "transfer.roots",
        ),
    log:
        "logs/prepare_target_{target}.log",
    shell:
        "python stages/prepare.py {wildcards.target} --params {PARAMS} > {log} 2>&1"


rule pretrain:
    input:
        "stages/pretrain.py",
        "invprop/augment.py",
        "invprop/batches.py",
        "invprop/bounds.py",
        "invprop/checkpoint.py",
        "invprop/data",
        "invprop/distributed.py",
        "invprop/inference.py",
        "invprop/io.py",
        "invprop/knn_classifier.py",
        "invprop/method",
        "invprop/models",
        "invprop/neighbour_search.py",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/slurm.py",
        "invprop/stages/pretrain.py",
        "invprop/training.py",
        "invprop/workspace.py",
        PREPARED,
    output:
        # Training resumes from models/in_progress/, which Snakemake does not manage.
        directory("models/pretrain"),
        "reports/pretrain.json",
        directory("dvclive/pretrain/plots/metrics"),
    params:
        tracked=tracked("seed", "data", "model", "augment", "pretrain", "embed.batch_size"),
    resources:
        **TRAINING_RESOURCES,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    log:
        "logs/pretrain.log",
    shell:
        "python stages/pretrain.py --params {PARAMS} > {log} 2>&1"


# The baseline InvP is measured against: the same recipe with pretrain.invp false.
# Trains only when evaluate.baselines.instance_discrimination is on (invprop/stages/instance_discrimination.py).
rule instance_discrimination:
    input:
        "stages/instance_discrimination.py",
        "invprop/augment.py",
        "invprop/baselines.py",
        "invprop/batches.py",
        "invprop/bounds.py",
        "invprop/checkpoint.py",
        "invprop/data",
        "invprop/distributed.py",
        "invprop/inference.py",
        "invprop/io.py",
        "invprop/knn_classifier.py",
        "invprop/method",
        "invprop/models",
        "invprop/neighbour_search.py",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/slurm.py",
        "invprop/stages/instance_discrimination.py",
        "invprop/training.py",
        "invprop/workspace.py",
        PREPARED,
    output:
        directory("models/instance_discrimination"),
        directory("artifacts/embeddings/instance_discrimination"),
        "reports/instance_discrimination.json",
        directory("dvclive/instance_discrimination/plots/metrics"),
    params:
        tracked=tracked(
            "seed",
            "data",
            "model",
            "augment",
            "pretrain",
            "embed.batch_size",
            "evaluate.baselines.instance_discrimination",
        ),
    resources:
        **TRAINING_RESOURCES,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    log:
        "logs/instance_discrimination.log",
    shell:
        "python stages/instance_discrimination.py --params {PARAMS} > {log} 2>&1"


rule embed:
    input:
        "stages/embed.py",
        "invprop/augment.py",
        "invprop/bounds.py",
        "invprop/checkpoint.py",
        "invprop/data",
        "invprop/inference.py",
        "invprop/io.py",
        "invprop/models",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/stages/embed.py",
        "invprop/workspace.py",
        "models/pretrain",
        PREPARED,
    output:
        directory("artifacts/embeddings/{tag}"),
        "reports/embed_{tag}.json",
    wildcard_constraints:
        tag=one_of(TAGS),
    params:
        tracked=tracked(
            "data.name",
            "data.image_size",
            "data.channels",
            "augment.mean",
            "augment.std",
            "embed.batch_size",
            "pretrain.device",
            "pretrain.precision",
            "pretrain.channels_last",
        ),
    resources:
        gpu=1,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    log:
        "logs/embed_{tag}.log",
    shell:
        "python stages/embed.py {wildcards.tag} --params {PARAMS} > {log} 2>&1"


rule graph:
    input:
        "stages/graph.py",
        "invprop/bounds.py",
        "invprop/data",
        "invprop/io.py",
        "invprop/neighbour_search.py",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/stages/graph.py",
        "invprop/workspace.py",
        "artifacts/embeddings/{tag}",
    output:
        directory("artifacts/graph/{tag}"),
        "reports/graph_{tag}.json",
    wildcard_constraints:
        tag=one_of(TAGS),
    params:
        tracked=tracked("seed", "graph", "propagate.k"),
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    log:
        "logs/graph_{tag}.log",
    shell:
        "python stages/graph.py {wildcards.tag} --params {PARAMS} > {log} 2>&1"


rule propagate:
    input:
        "stages/propagate.py",
        "invprop/bounds.py",
        "invprop/checkpoint.py",
        "invprop/data",
        "invprop/io.py",
        "invprop/method",
        "invprop/models",
        "invprop/positive_sets.py",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/stages/propagate.py",
        "invprop/workspace.py",
        "artifacts/graph/{tag}",
        "artifacts/embeddings/{tag}",
        "models/pretrain",
        PREPARED,
    output:
        directory("artifacts/propagation/{tag}"),
        "reports/propagate_{tag}.json",
    wildcard_constraints:
        tag=one_of(TAGS),
    params:
        tracked=tracked("data.name", "propagate"),
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    log:
        "logs/propagate_{tag}.log",
    shell:
        "python stages/propagate.py {wildcards.tag} --params {PARAMS} > {log} 2>&1"


rule evaluate:
    input:
        "stages/evaluate.py",
        "invprop/augment.py",
        "invprop/bounds.py",
        "invprop/checkpoint.py",
        "invprop/data",
        "invprop/inference.py",
        "invprop/io.py",
        "invprop/knn_classifier.py",
        "invprop/linear.py",
        "invprop/models",
        "invprop/neighbour_search.py",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/stages/evaluate.py",
        "invprop/workspace.py",
        "artifacts/embeddings/final",
        "models/pretrain",
        "artifacts/embeddings/instance_discrimination",
        "models/instance_discrimination",
        PREPARED,
    output:
        "reports/evaluate.json",
    params:
        tracked=tracked(
            "seed",
            "data.name",
            "data.seed",
            "augment.mean",
            "augment.std",
            "pretrain.device",
            "evaluate",
        ),
    resources:
        gpu=1,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    log:
        "logs/evaluate.log",
    shell:
        "python stages/evaluate.py --params {PARAMS} > {log} 2>&1"


rule transfer:
    input:
        "stages/transfer.py",
        "invprop/augment.py",
        "invprop/batches.py",
        "invprop/bounds.py",
        "invprop/checkpoint.py",
        "invprop/data",
        "invprop/inference.py",
        "invprop/io.py",
        "invprop/linear.py",
        "invprop/models",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/stages/transfer.py",
        "invprop/workspace.py",
        "models/pretrain",
        PREPARED,
        expand("data/prepared/{target}", target=TARGETS),
    output:
        directory("artifacts/transfer"),
        "reports/transfer.json",
    params:
        tracked=tracked(
            "seed",
            "data.name",
            "data.seed",
            "data.image_size",
            "data.channels",
            "augment.mean",
            "augment.std",
            "augment.shorter_side",
            "transfer",
            "evaluate.linear",
            "evaluate.baselines.random_init",
            "pretrain.device",
            "pretrain.threads",
            "pretrain.precision",
            "pretrain.channels_last",
            "embed.batch_size",
        ),
    resources:
        gpu=1,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    log:
        "logs/transfer.log",
    shell:
        "python stages/transfer.py --params {PARAMS} > {log} 2>&1"


rule report:
    input:
        "stages/report.py",
        "invprop/bounds.py",
        "invprop/data",
        "invprop/explorer.html",
        "invprop/explorer.py",
        "invprop/figures.py",
        "invprop/io.py",
        "invprop/method",
        "invprop/neighbourhood.py",
        "invprop/positive_sets.py",
        "invprop/registry.py",
        "invprop/sampling.py",
        "invprop/stages/report.py",
        "invprop/tables.py",
        "invprop/workspace.py",
        # The stage-times table lists every stage run; the reports of the runs per target
        # and per tag come with an artifact below (prepare_target's through transfer.json),
        # as in dvc.yaml, which cannot list them one by one.
        "reports/evaluate.json",
        "reports/transfer.json",
        "reports/pretrain.json",
        "reports/instance_discrimination.json",
        f"reports/prepare_{DATA}.json",
        "reports/embed_final.json",
        "reports/graph_final.json",
        "reports/propagate_final.json",
        "dvclive/pretrain/plots/metrics",
        # every tag's embeddings and graph: the explorer page switches between them
        expand("artifacts/embeddings/{tag}", tag=TAGS),
        "artifacts/embeddings/instance_discrimination",
        expand("artifacts/graph/{tag}", tag=TAGS),
        expand("artifacts/propagation/{tag}", tag=TAGS),
        PREPARED,
    output:
        report("reports/report.md", category="Report"),
        directory("reports/explorer"),
        directory("reports/plots"),
        "reports/report.json",
        report(
            directory("reports/figures"),
            patterns=["{name}.png"],
            category="Figures",
            labels={"figure": "{name}"},
        ),
    params:
        tracked=tracked(
            "seed", "data.name", "embed.tags", "propagate", "report", "transfer.targets"
        ),
    log:
        "logs/report.log",
    shell:
        "python stages/report.py --params {PARAMS} > {log} 2>&1"
