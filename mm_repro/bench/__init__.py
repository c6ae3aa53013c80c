"""`bench`: our step and epoch measured against a re-implementation of the official pipeline (`measure`,
`official`, `throughput`)."""
