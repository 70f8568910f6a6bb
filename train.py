"""WVM training loop: `torchrun --nproc_per_node=N train.py [config.py] [--key=value ...]` (SPEC.md §6)."""
