#!/usr/bin/env bash
# The whole GPU check in one go (a few minutes on one H100): CUDA tests, the training-step
# throughput for batch 128/256/512 with the fmnist-gpu preset (ResNet-18-CIFAR, MLP head,
# 32x32, 60k bank, InvP loss on), the step against bank size, the top-M, augmentation
# and image-folder benchmarks. Run from the repository root with a torch that sees the GPU, e.g.
#   PYTHONPATH=. bash bench/gpu_check.sh > gpu_check.jsonl
# It needs no dvc, Snakemake or faiss; it does need PyYAML (and numpy), which travel as
# wheels when the GPU machine lacks them. Figures print as JSON lines, each with its device.
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-.}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.__version__, torch.cuda.get_device_name(0))" >&2
# The CUDA tests need pytest and hypothesis (bring them as wheels if the machine lacks them).
if python -c "import pytest, hypothesis" 2>/dev/null; then
    python -m pytest -q -m cuda -p no:cacheprovider tests/test_method_loss.py \
        tests/test_method_propagate.py tests/test_augment.py tests/test_knn.py \
        tests/test_loader.py >&2
else
    echo "skipping the CUDA tests: pytest or hypothesis is not installed" >&2
fi
python bench/pretrain_throughput.py --device cuda --preset presets/fmnist-gpu.yaml \
    --batch-sizes 128 256 512 --bank-size 60000 --steps 50 --warmup 10
python bench/pretrain_throughput.py --device cuda --preset presets/fmnist-gpu.yaml \
    --batch-sizes 128 --bank-size 60000 --steps 50 --warmup 10 --set pretrain.precision=fp32
python bench/pretrain_throughput.py --device cuda --preset presets/fmnist-gpu.yaml \
    --batch-sizes 128 --bank-size 60000 --steps 50 --warmup 20 --set pretrain.compile=true
python bench/pretrain_throughput.py --device cuda --preset presets/fmnist-gpu.yaml \
    --batch-sizes 256 --bank-size 1281167 --steps 20 --warmup 5
python bench/topm_bank.py --devices cuda
python bench/augment_throughput.py --device cuda
# The image-folder source (issue 9): JPEGs decoded in workers, pinned, then augmented on the GPU.
python bench/imagefolder_throughput.py --device cuda --threads 8 --workers 0 4 8 12 \
    --augment-workers 12
