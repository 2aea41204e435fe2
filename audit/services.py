"""Services of the audit app."""
