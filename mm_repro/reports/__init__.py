"""Readers of run records: the paper's tables beside ours (tables), any sweep summarised by setup (summary), and
their figures (figures)."""
