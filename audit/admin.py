"""Admin of the audit app."""
