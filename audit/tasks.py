"""Tasks of the audit app."""
