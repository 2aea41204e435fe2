"""Services of the cards app."""
