"""The value stream of WVM (SPEC.md §3.2-3.3): ValueConfig and ValueDiT."""
