"""Flow-matching conventions of WVM (SPEC.md §4)."""
