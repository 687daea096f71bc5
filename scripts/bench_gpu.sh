#!/usr/bin/env bash
# The GPU numbers of docs/performance.md, in one go (about 8 minutes by default): issue 16's CIFAR
# steps eager and compiled against a floor run in the same mode, and real CIFAR-shaped epochs
# (live teacher, warm teacher-output cache, eager and compiled objective). The older parts: the
# step benchmark on a larger pair at ImageNet size and on the CPU section's pair, each with
# torchdistill beside kdzoo, then real epochs through `kdzoo run` (PARTS="big small epochs").
#
#   pip install -e '.[bench]' && bash scripts/bench_gpu.sh        # results in runs/bench-gpu/
#   COMPILE=1 bash scripts/bench_gpu.sh                            # also times the torch.compile option
#   FASHION_ROOT=/usr/share/datasets/fashion-mnist bash scripts/bench_gpu.sh   # epochs on Fashion-MNIST
#
# DEVICE=cpu SMALL=1 runs the same sequence tiny on the CPU (a dry run of this script).
set -euo pipefail
out=${OUT:-runs/bench-gpu}
kdzoo=${KDZOO:-kdzoo}
device=${DEVICE:-cuda}
mkdir -p "$out"
export KDZOO_CACHE="$out/cache"

if [[ -n "${SMALL:-}" ]]; then
    big=(--teacher test_resnet --student test_efficientnet --img-size 32 --batch 8 --rounds 2 --steps 1)
    small=(--teacher test_resnet --student test_efficientnet --img-size 32 --batch 8 --rounds 2 --steps 1)
    epochs=(--set train.epochs=1 --set teacher.model=test_resnet --set student.model=test_efficientnet
            --set teacher.train.epochs=1 --set data.train_limit=256)
else
    big=(--teacher resnet50 --student resnet18 --img-size 224 --batch 128 --rounds 7 --steps 5)
    small=(--teacher resnet18 --student resnet10t --img-size 32 --batch 256 --rounds 7 --steps 10)
    epochs=(--set train.epochs=3 --set teacher.model=resnet18 --set student.model=resnet10t
            --set teacher.train.epochs=2 --set data.batch_size=256)
fi
# real epochs on Fashion-MNIST (60k images) when FASHION_ROOT holds its four .gz files, else on digits
if [[ -n "${FASHION_ROOT:-}" ]]; then
    epochs+=(--set data.name=fashion_mnist --set data.root="$FASHION_ROOT" --set data.img_size=28)
fi
# no augmentation in any run: the teacher-output cache needs fixed inputs, and all runs see the same
epochs+=(--set data.augment=false --set train.device="$device")

if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; fi
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"

# cifar: issue 16's targets -- each stack at 32 px, batch 64, eager and compiled, against the floor run
# in the same mode (kdzoo bench's "x the floor's in the same mode" line); then real CIFAR-shaped epochs
# (scripts/gpu_epochs.py). PAIRS=wrn adds wrn_40_2 -> wrn_16_2; big/small/epochs are the older parts.
parts=${PARTS:-cifar cifar_epochs}  # e.g. PARTS="cifar cifar_epochs compile_sweep big small epochs"
if [[ -n "${SMALL:-}" ]]; then
    cifar_pairs=("test_resnet test_resnet")
    cifar=(--img-size 32 --batch 8 --rounds 2 --steps 1)
    cifar_epochs=(--samples 256 --epochs 1 --teacher test_resnet --student test_resnet)
else
    cifar_pairs=("resnet32x4 resnet8x4")
    [[ ${PAIRS:-} == *wrn* ]] && cifar_pairs+=("wrn_40_2 wrn_16_2")
    cifar=(--img-size 32 --batch 64 --rounds 7 --steps 20)
    cifar_epochs=(--samples 50000 --epochs 2)
fi
if [[ " $parts " == *" cifar "* ]]; then
    for pair in "${cifar_pairs[@]}"; do
        read -r teacher student <<<"$pair"
        $kdzoo bench --device "$device" --teacher "$teacher" --student "$student" "${cifar[@]}" \
            --methods kd,fitnets,at,rkd,kd+at+rkd --options compile_objective,reduce_overhead \
            --json "$out/bench_cifar_$student.json" | tee "$out/bench_cifar_$student.md"
    done
fi
if [[ " $parts " == *" cifar_epochs "* ]]; then
    python3 scripts/gpu_epochs.py --device "$device" "${cifar_epochs[@]}" --out "$out/epochs" |
        tee "$out/cifar_epochs.md"
fi
# compile_sweep: every method's objective compiled with CUDA graphs, one tiny epoch each (no fallback)
if [[ " $parts " == *" compile_sweep "* ]]; then
    python3 scripts/compile_sweep.py --device "$device" --mode reduce-overhead | tee "$out/compile_sweep.md"
fi
if [[ $parts == *big* ]]; then
    $kdzoo bench --device "$device" "${big[@]}" --options channels_last,bf16,fp16 --torchdistill \
        --json "$out/bench_big.json" | tee "$out/bench_big.md"
fi
if [[ $parts == *small* ]]; then
    $kdzoo bench --device "$device" "${small[@]}" --torchdistill --json "$out/bench_small.json" |
        tee "$out/bench_small.md"
fi
[[ " $parts " == *" epochs "* ]] || exit 0

epoch_rates() {  # images/s of each training epoch, from a run's metrics.jsonl
    python3 - "$1" "$2" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{sys.argv[2]:>16}: images/s per epoch", [round(r["train"]["images_per_s"]) for r in rows])
PY
}
# the student alone (scratch) and KD with a live teacher, through one `kdzoo compare`
$kdzoo compare --methods kd --seeds 1 --out "$out/compare" "${epochs[@]}" >/dev/null
epoch_rates "$out/compare/runs/scratch-seed0/metrics.jsonl" "student only"
epoch_rates "$out/compare/runs/kd-seed0/metrics.jsonl" "kd, live teacher"
run() {
    local name=$1; shift
    $kdzoo run -q --method kd --set train.out_dir="$out/runs" --set train.name="$name" "${epochs[@]}" "$@" >/dev/null
    epoch_rates "$out/runs/$name/metrics.jsonl" "$name"
}
run kd-cache-fill --set teacher.cache=true
run kd-cache-warm --set teacher.cache=true
run kd-fp16-cl --set train.precision=fp16 --set train.channels_last=true
run kd-augment --set data.augment=true  # random crops and flips, made on the device

# torch.compile last: compiling both models takes minutes, and a cut-off here loses nothing above
if [[ -n "${COMPILE:-}" ]]; then
    timeout 240 $kdzoo bench --device "$device" "${big[@]}" --methods kd --options compile \
        --json "$out/bench_compile.json" | tee "$out/bench_compile.md" || echo "compile bench did not finish in 240 s"
fi
