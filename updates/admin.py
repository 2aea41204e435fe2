"""Admin of the updates app."""
