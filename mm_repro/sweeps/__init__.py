"""Sweeps: jobs from Hydra and the failure report (`jobs`), and the packed launcher's grouping (`packed`)."""
