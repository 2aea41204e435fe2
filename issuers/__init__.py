"""Organisations (agency, banks, regulators), memberships and roles, key custody."""
