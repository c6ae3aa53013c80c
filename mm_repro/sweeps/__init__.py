"""Sweeps: jobs from Hydra and the failure report (`jobs`), the packed launcher's grouping (`packed`), packs
submitted as SLURM jobs (`cluster`), and a sweep's plan before it runs (`plan`)."""
