"""Apis of the cards app."""
