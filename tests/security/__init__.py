"""Security tests: one module per class of problem (issue 9), plus the tenant-isolation matrix and the fuzz pass."""
