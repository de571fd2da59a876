# The invprop pipeline for Snakemake: the same stages, commands, inputs, outputs and
# params as dvc.yaml (tests/test_pipeline_dag.py proves it).
#   snakemake --cores 2                          # everything
#   snakemake --cores 2 --config seed=1          # one override (written to the stages' params)
configfile: "params.yaml"

DATA = config["data"]["name"]
TARGETS = config["transfer"]["targets"]


def tracked(*keys):
    """The params a rule reads, by dotted key: Snakemake reruns the rule when they change."""
    values = {}
    for key in keys:
        node = config
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


rule all:
    input:
        f"data/prepared/{DATA}",
        expand("data/prepared/{target}", target=TARGETS),


rule prepare:
    input:
        "stages/prepare.py",
        "invprop/data",
    output:
        directory(f"data/prepared/{DATA}"),
        f"reports/prepare_{DATA}.json",
    params:
        tracked=tracked("seed", "data"),
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
        target="|".join(TARGETS) or "^$",
    params:
        tracked=tracked("seed", "data.image_size", "data.channels", "data.download", "transfer.roots"),
    shell:
        "python stages/prepare.py {wildcards.target}"
