"""mm_repro's Hydra launcher plugin (`hydra/launcher=packed`); Hydra finds plugins in the hydra_plugins namespace."""
