"""The paper's self-contained experiments, each one readable file that trains its own models and writes its own
results: the 2-D spirals of Figures 1 and 2 (spiral), the MNIST flattening studies (flattening) and Table 8's synthetic
factors (synthetic)."""
