#!/bin/bash
# Every check that needs a CUDA GPU, in one command (a few minutes on one H200), each step's log in LOG_DIR:
#   1. tests/test_kernels.py with the Triton kernels compiled (TRITON_INTERPRET=0), not interpreted
#   2. bench/bench_kernels.py: each kernel against its PyTorch path at Wan2.2-TI2V-5B sizes, times and errors
#   3. bench/bench_train.py --gpu: training steps of the paper's widths (bf16, fused AdamW, checkpointing), MFU
#   4. train.py end to end on the GPU (FSDP2 on one process, bf16, Triton kernels), then eval.py --score with it
#      on the GPU and on the CPU
#   5. tests/test_wvm.py and tests/test_train.py with the GPU visible (train.py picks it)
#
#   bash bench/gpu.sh [LOG_DIR]        # from the repository root
set -u
log=${1:-gpu-logs}
mkdir -p "$log"
tmp=$(mktemp -d)
step() {  # step NAME SECONDS CMD...: run with a time limit, log to LOG_DIR/NAME.log, say how it ended
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$log/$name.log" 2>&1
    echo "== $name: exit $? in $((SECONDS - t0)) s"
    tail -n 25 "$log/$name.log"
}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

step kernels_test 120 env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py
step bench_kernels 90 python3 bench/bench_kernels.py
step bench_train 150 python3 bench/bench_train.py --gpu

python3 - "$tmp" > "$log/e2e_data.log" 2>&1 <<'EOF'
import sys
import torch
import encode_text
from sim import write_lerobot
from tests.test_train import block_episodes  # the tests' block sliding right, with the robot's state

root = sys.argv[1]
write_lerobot(f"{root}/ds", block_episodes(6), fps=8, codec="libx264")
tok, enc = encode_text.tiny_random_encoder(32)
encode_text.build_cache(["push the block right", "slide the block"], tok, enc, f"{root}/text", dtype=torch.float32,
                        text_len=16, encoder={"id": "tiny:32", "flags": "--tiny_random 32 --text_len 16"})
EOF
echo "== e2e data: exit $?"
step e2e_train 60 python3 -m torch.distributed.run --standalone --nproc_per_node=1 train.py --data="$tmp/ds" \
    --text_cache="$tmp/text" --out_dir="$tmp/run" --resolution=32 --size=tiny --parallel=fsdp --max_steps=40 \
    --batch_size=4 --micro_batch=2 --warmup=2 --lr=1e-3 --ckpt_every=20 --num_workers=0 --log_every=10 --state=observation.state
step e2e_score_gpu 30 python3 eval.py --score "$tmp/ds" --ckpt "$tmp/run" --text_cache "$tmp/text" --out "$tmp/gpu"
step e2e_score_cpu 30 python3 eval.py --score "$tmp/ds" --ckpt "$tmp/run" --text_cache "$tmp/text" --out "$tmp/cpu" --device cpu
ls -R "$tmp/gpu" | head -20
python3 - "$tmp" <<'EOF'
import glob, sys
import numpy as np
import pyarrow.parquet as pq
root = sys.argv[1]
for gpu in sorted(glob.glob(f"{root}/gpu/**/*.parquet", recursive=True)):
    cpu = gpu.replace(f"{root}/gpu", f"{root}/cpu")
    a, b = pq.read_table(gpu), pq.read_table(cpu)
    for col in a.column_names:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind == "f":
            print(f"{gpu[len(root):]} {col}: max |gpu - cpu| {np.nanmax(np.abs(x - y)):.4f} "
                  f"(values {np.nanmin(x):.3f} .. {np.nanmax(x):.3f})")
            if col == "progress" and (np.nanmin(x) >= 1 or np.nanmax(x) <= 0):  # clipped to [0, 1]: nothing compared
                print(f"  {col}: every value clipped to {np.nanmin(x):.0f}: this comparison says nothing")
EOF
step tests_gpu 240 python3 -m pytest -q -p no:cacheprovider tests/test_wvm.py tests/test_train.py
rm -rf "$tmp"
