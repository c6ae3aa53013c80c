"""What reads records or trains its own small models: the paper's tables (`tables`), the evaluations of a trained run
(`evaluate`, `measures`) and the 2-D spiral (`spiral`)."""
