"""Training, by role. A run's config checked (`checks`); what it trains with built (`builders`): its model, data,
optimizer and schedule (`optim`), the step (`step`: draw, mix, forward, loss, backward) and the test figures
(`scoring`), wrapped by a trainer (`trainers`: one run alone, or a pack); its random streams (`randomness`), its
device (`devices`), DDP (`distributed`). The loop (`loop`) runs a session (`session`: its runs, where they are in
the epoch, `cursor`, and when they checkpoint, `checkpointing`), stops on a signal (`signals`), and writes each
run's records (`run`) into a directory it owns (`ownership`)."""
