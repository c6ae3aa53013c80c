"""Training: one step (`step`), the trainers (`step.Trainer`: one run, or a pack in `packed`), the session and its
cursor (`session`), the loop (`loop`), what builds them (`builders`), each run's records and take-over (`runs`),
devices, random streams and signals (`runtime`), and DDP (`distributed`)."""
