"""Apis of the audit app."""
