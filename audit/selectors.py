"""Selectors of the audit app."""
