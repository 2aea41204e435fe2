"""Admin of the cards app."""
