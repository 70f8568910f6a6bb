"""WVM evaluation: VOC metrics, Suboptimal-Value-Bench, Expert-VOC, trajectory scoring, data weighting (SPEC.md §7-8)."""
