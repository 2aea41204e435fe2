"""Selectors of the cards app."""
