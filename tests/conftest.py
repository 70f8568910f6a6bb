import os
import sys

# tests import the top-level modules (model, data, ...) the way the scripts do
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on the CPU interpreter in tests

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Triton must be loaded before MuJoCo first renders (tests/test_sim.py): importing it after Mesa's llvmpipe
# has loaded its LLVM segfaults in triton/knobs.py, whatever order pytest collects the files in.
import kernels  # noqa: E402,F401


def spoil_frames(mp4):
    """Overwrite an mp4's frame data (its mdat box) with 0xff: the header still reads, no frame decodes."""
    raw = bytearray(mp4.read_bytes())
    at = raw.index(b"mdat")
    end = at - 4 + int.from_bytes(raw[at - 4:at], "big")
    raw[at + 4:end] = b"\xff" * (end - at - 4)
    mp4.write_bytes(bytes(raw))
