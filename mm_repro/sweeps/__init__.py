"""Sweeps: jobs from Hydra and the failure report (`jobs`), the packed launcher's grouping (`packed`), and packs
submitted as SLURM jobs (`cluster`)."""
