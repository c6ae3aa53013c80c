"""The trainers: what the training loop asks of the runs one process trains together (`Trainer`), and its two
implementations: one run alone (single.SingleTrainer) and several runs packed as one model (packed.PackedTrainer)."""
