# The invprop pipeline for Snakemake: the same stages, commands, inputs, outputs and
# params as dvc.yaml (tests/test_pipeline_dag.py proves it).
#   snakemake --cores 2                                   # everything
#   snakemake --cores 2 --workflow-profile profiles/local  # without mtime reruns
configfile: "params.yaml"

DATA = config["data"]["name"]
TARGETS = config["transfer"]["targets"]
TAGS = config["embed"]["tags"]
# pretrain.processes > 1: the training rules start DDP with one process per GPU.
TRAINING_GPUS = config["pretrain"]["processes"]
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
        "invprop/data",
    output:
        directory(PREPARED),
        f"reports/prepare_{DATA}.json",
    params:
        tracked=tracked("data"),
    shell:
        "python stages/prepare.py {DATA}"


rule prepare_target:
    input:
        "stages/prepare.py",
        "invprop/data",
    output:
        directory("data/prepared/{target}"),
        "reports/prepare_{target}.json",
    wildcard_constraints:
        target=one_of(TARGETS),
    params:
        tracked=tracked(
            "data.seed", "data.image_size", "data.channels", "data.download", "transfer.roots"
        ),
    shell:
        "python stages/prepare.py {wildcards.target}"


rule pretrain:
    input:
        "stages/pretrain.py",
        "invprop/train.py",
        "invprop/data/loader.py",
        "invprop/method",
        "invprop/models.py",
        "invprop/augment.py",
        PREPARED,
    output:
        # update(): kept between runs, so training resumes from last.pt.
        update(directory("models/pretrain")),
        "reports/pretrain.json",
        directory("dvclive/pretrain/plots/metrics"),
    params:
        tracked=tracked("seed", "data", "model", "augment", "pretrain", "embed.batch_size"),
    resources:
        gpu=TRAINING_GPUS,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    shell:
        "python stages/pretrain.py"


# The baseline InvP is measured against: the same recipe with pretrain.invp false.
# Trains only when evaluate.baselines.instance_discrimination is on (invprop/baseline.py).
rule instance_discrimination:
    input:
        "stages/instance_discrimination.py",
        "invprop/baseline.py",
        "invprop/train.py",
        "invprop/data/loader.py",
        "invprop/method",
        "invprop/models.py",
        "invprop/augment.py",
        "invprop/embed.py",
        PREPARED,
    output:
        update(directory("models/instance_discrimination")),
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
        gpu=TRAINING_GPUS,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    shell:
        "python stages/instance_discrimination.py"


rule embed:
    input:
        "stages/embed.py",
        "invprop/embed.py",
        "models/pretrain",
        PREPARED,
    output:
        directory("artifacts/embeddings/{tag}"),
        "reports/embed_{tag}.json",
    wildcard_constraints:
        tag=one_of(TAGS),
    params:
        tracked=tracked("data.image_size", "data.channels", "embed.batch_size", "pretrain.precision"),
    resources:
        gpu=1,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    shell:
        "python stages/embed.py {wildcards.tag}"


rule graph:
    input:
        "stages/graph.py",
        "invprop/graph.py",
        "invprop/neighbours.py",
        "artifacts/embeddings/{tag}",
    output:
        directory("artifacts/graph/{tag}"),
        "reports/graph_{tag}.json",
    wildcard_constraints:
        tag=one_of(TAGS),
    params:
        tracked=tracked("seed", "graph", "propagate.k"),
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    shell:
        "python stages/graph.py {wildcards.tag}"


rule propagate:
    input:
        "stages/propagate.py",
        "invprop/propagation.py",
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
        tracked=tracked("propagate"),
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    shell:
        "python stages/propagate.py {wildcards.tag}"


rule evaluate:
    input:
        "stages/evaluate.py",
        "invprop/evaluate.py",
        "invprop/knn.py",
        "invprop/linear.py",
        "artifacts/embeddings/final",
        "models/pretrain",
        "artifacts/embeddings/instance_discrimination",
        "models/instance_discrimination",
        PREPARED,
    output:
        "reports/evaluate.json",
    params:
        tracked=tracked("seed", "data.seed", "evaluate"),
    resources:
        gpu=1,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    shell:
        "python stages/evaluate.py"


rule transfer:
    input:
        "stages/transfer.py",
        "invprop/transfer.py",
        "invprop/linear.py",
        "invprop/data/loader.py",
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
            "transfer",
            "evaluate.linear",
            "evaluate.baselines.random_init",
            "pretrain.precision",
            "embed.batch_size",
        ),
    resources:
        gpu=1,
    threads: workflow.cores  # Snakemake sets OMP_NUM_THREADS from this
    shell:
        "python stages/transfer.py"


rule report:
    input:
        "stages/report.py",
        "invprop/report.py",
        "invprop/inspect.py",
        "reports/evaluate.json",
        "reports/transfer.json",
        "reports/pretrain.json",
        f"reports/prepare_{DATA}.json",
        "reports/embed_final.json",
        "reports/graph_final.json",
        "reports/propagate_final.json",
        "dvclive/pretrain/plots/metrics",
        "artifacts/embeddings/final",
        "artifacts/graph/final",
        "artifacts/propagation/final",
        PREPARED,
    output:
        report("reports/report.md", category="Report"),
        report(
            directory("reports/figures"),
            patterns=["{name}.png"],
            category="Figures",
            labels={"figure": "{name}"},
        ),
    params:
        tracked=tracked("seed", "data.name", "propagate", "report"),
    shell:
        "python stages/report.py"
