#!/usr/bin/env bash
# The whole GPU check in one go (sized for 6 minutes of one H100): CUDA tests; the training
# step's images/s at batch 128/256/512 in bf16, in fp32 and compiled, with the fmnist-gpu
# preset (ResNet-18-CIFAR, MLP head, 32x32, 60k bank, InvP loss on), and over a 1.28M bank;
# the top-M, augmentation and image-folder benchmarks; then the 20-epoch quality pair on
# Fashion-MNIST with fmnist-gpu (InvP and instance discrimination, both bf16), scored by
# kNN (K = 200) and the linear probe, with wall times. Figures print as JSON lines, each
# with its device; progress and logs go to stderr. Run from the repository root:
#   bash bench/gpu_check.sh > gpu_check.jsonl
#   bash bench/gpu_check.sh --tiny --fashion-mnist DIR   # the same steps on the CPU, tiny
#
# --tiny rehearses the steps on the CPU in a minute or two (CI runs it,
# tests/test_gpu_check.py): the CUDA tests skipped, a few steps of each benchmark on tiny
# banks, batches and images (the augmentation's, without its network timings), the small
# CNN instead of ResNet-18, two epochs of the pair on 100 images.
#
# Needs torch, torchvision, numpy, scipy, scikit-learn, PyYAML, Pillow, typer and rich (all
# on the lent GPU machines), and no dvc, dvclive, Snakemake or faiss. Fashion-MNIST is read
# from --fashion-mnist DIR (default .carry/fashion-mnist, else the Debian package's
# /usr/share/datasets/fashion-mnist): the four idx .gz files, 30 MB. To take them to a
# machine that has no copy, put them in .carry/ (git ignores it) and carry that folder:
#   mkdir -p .carry/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .carry/fashion-mnist/
# Tracked files and the carry folder together are about 32 MB.
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:-.}"
tiny=0
fmnist=""
while (($#)); do
    case "$1" in
        --tiny) tiny=1 ;;
        --fashion-mnist) fmnist="$2"; shift ;;
        *) echo "usage: bash bench/gpu_check.sh [--tiny] [--fashion-mnist DIR]" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z "$fmnist" ]]; then
    fmnist=.carry/fashion-mnist
    [[ -d "$fmnist" ]] || fmnist=/usr/share/datasets/fashion-mnist
fi
[[ -d "$fmnist" ]] || { echo "no Fashion-MNIST folder $fmnist; pass --fashion-mnist DIR" >&2; exit 2; }

preset=presets/fmnist-gpu.yaml
pair_epochs=(--set pretrain.epochs=20 --set pretrain.ramp_epoch=5)
if ((tiny)); then
    device=cpu
    # Each benchmark's smallest meaningful run; the small CNN keeps the compiled step short.
    step=(--steps 2 --warmup 1 --set model.backbone=small_cnn --set pretrain.n_background=64)
    compile_warmup=1
    step_sizes=(8); step_bank=256; big_bank=512
    topm=(--sizes 2000 --batch 8 --m 64 --prop-n 2000 --repeats 1 --warmup 0)
    augment=(--batch-size 8 --iters 1 --repeats 1 --warmup 0 --only augment)
    folder=(--images 16 --side 48 --image-size 32 --batch-size 8 --repeats 1 --workers 0 1
        --augment-workers 1)
    pair_epochs=(--set pretrain.epochs=2 --set pretrain.ramp_epoch=1)
    pair_tiny=(--set model.backbone=small_cnn --set data.train_limit=100
        --set data.test_limit=50 --set pretrain.batch_size=32 --set pretrain.n_background=64
        --set pretrain.warmup_epochs=1 --set evaluate.linear.max_iter=20
        --set pretrain.device=cpu)
else
    device=cuda
    python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.__version__, torch.cuda.get_device_name(0))" >&2
    step=(--steps 50 --warmup 10)
    compile_warmup=20  # the compilation, and the first steps after it
    step_sizes=(128 256 512); step_bank=60000; big_bank=1281167
    topm=()
    augment=()
    folder=(--threads 8 --workers 0 4 8 12 --augment-workers 12)
    pair_tiny=()
    # The CUDA tests need pytest and hypothesis (bring them as wheels if the machine lacks them).
    if python -c "import pytest, hypothesis" 2>/dev/null; then
        python -m pytest -q -m cuda -p no:cacheprovider tests/test_method_loss.py \
            tests/test_method_propagate.py tests/test_augment.py tests/test_knn.py \
            tests/test_loader.py >&2
    else
        echo "skipping the CUDA tests: pytest or hypothesis is not installed" >&2
    fi
fi

throughput() {
    python bench/pretrain_throughput.py --device "$device" --preset "$preset" "${step[@]}" "$@"
}
throughput --batch-sizes "${step_sizes[@]}" --bank-size "$step_bank"
throughput --batch-sizes "${step_sizes[0]}" --bank-size "$step_bank" --set pretrain.precision=fp32
throughput --batch-sizes "${step_sizes[0]}" --bank-size "$step_bank" --set pretrain.compile=true \
    --warmup "$compile_warmup"
throughput --batch-sizes "${step_sizes[1]:-${step_sizes[0]}}" --bank-size "$big_bank"
python bench/topm_bank.py --devices "$device" "${topm[@]}"
python bench/augment_throughput.py --device "$device" "${augment[@]}"
# The image-folder source (issue 9): JPEGs decoded in workers, pinned, then augmented on the device.
python bench/imagefolder_throughput.py --device "$device" "${folder[@]}"
# The quality pair: InvP and instance discrimination, bf16, 20 epochs, kNN and linear probe.
python bench/quality_pair.py --preset "$preset" --data-root "$fmnist" "${pair_epochs[@]}" \
    --set pretrain.precision=bf16 --set 'pretrain.snapshot_epochs=[]' \
    --set 'embed.tags=[final]' "${pair_tiny[@]}"
