"""Apis of the updates app."""
