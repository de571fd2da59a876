"""The pipeline's stages, side by side, each module named as its DVC stage.

Each module's `run(cfg, *args)` is what `stages/<name>.py`, `invprop stage <name>`, DVC
and Snakemake call (invprop.pipeline). A stage imports the primitives and
invprop.workspace, never another stage.
"""
