"""The transparency log: entries, checkpoints, proofs, export, verifier."""
