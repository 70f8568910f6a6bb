"""Dataset readers and clip sampling for WVM training and evaluation (SPEC.md §3.4, §5, §9)."""
