#!/usr/bin/env bash
# The GPU checks and benchmarks, run in one go on a lent GPU machine (the device tool) whose image
# has torch but none of hamsweep's lighter dependencies: those travel as wheels in .devwheels/
# (pip download --python-version 3.12 ... pydantic pydantic_core annotated-types typing-inspection
# torchattacks duckdb). Output: the printed figures, and one trial folder under $OUT. Sized for the
# device's 15 minutes: about 10 on an H100-class GPU. Step 5 needs Ray, Optuna and the rest of
# hamsweep's dependencies on the device (ray's wheel alone outgrows what a run may carry): it is
# skipped, said so, where `import ray` fails.
#
#     bench/gpu_suite.sh            (on the GPU machine, from the repository root; OUT=/some/dir)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_suite}
mkdir -p "$out" /tmp/hamsweep-wheels
python3 -m pip install -q --no-index --no-deps --target /tmp/hamsweep-wheels .devwheels/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD:/tmp/hamsweep-wheels
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
step() { echo; echo "== $*"; local t=$SECONDS; "$@"; echo "($((SECONDS - t)) s, exit $?)"; }
# 1. the trial core end to end on CUDA: train, validate, checkpoint, test split with AutoAttack
step python3 -c "from hamsweep.cli import main; main()" train search_spaces/smoke.yaml --out "$out/trial" \
  --set train.device=cuda --set eval.autoattack=true --set eval.max_examples=200
# 2. HAM vs PGD-AT cost per epoch, paired batch by batch (the wall / pass ratio, goal <= 1.10)
step python3 bench/ham_cost.py --n 10000 --warm 3 --model small_cnn --device cuda
step python3 bench/ham_cost.py --n 10000 --warm 3 --model preact_resnet18 --device cuda
step python3 bench/ham_cost.py --n 10000 --warm 3 --model preact_resnet18 --device cuda --precision bf16 --channels-last
# 3. the on-device loader vs torchvision's DataLoader
step python3 bench/loader.py --n 20000 --repeats 3
# 4. issue 14: HAM / PGD-AT at the paper's batch size (PreActResNet-18, CIFAR-100 shape, K=10, M=3),
#    fp32 and bf16, without and with the kept AEs padded to a few batch shapes; TFLOP/s against peak
for prec in fp32 bf16; do
  for pad in "" --pad-buckets; do
    step python3 bench/ham_cost.py --n 5000 --warm 2 --model preact_resnet18 --classes 100 --batch 128 --device cuda \
      --precision $prec $([ $prec = bf16 ] && echo --channels-last) $pad
  done
done
# 5. issue 14: 1, 2 and 4 HAM trials packed onto the GPU through real sweeps (resources.gpu 1, 0.5, 0.25)
if python3 -c "import ray, optuna" 2>/dev/null; then
  step python3 bench/gpu_packing.py --packings 1,2,4 --train-size 4000 --epochs 1 --keep "$out/packing"
else
  echo; echo "== skipped bench/gpu_packing.py: ray or optuna is not installed on this machine"
fi
