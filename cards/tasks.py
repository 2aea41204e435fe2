"""Tasks of the cards app."""
