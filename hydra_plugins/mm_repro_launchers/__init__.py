"""mm_repro's Hydra plugins: the launchers `hydra/launcher=packed` and `packed_slurm`, and the sweeper behind
`python -m mm_repro plan` (`hydra/sweeper=plan`). Hydra finds plugins in the hydra_plugins namespace."""
