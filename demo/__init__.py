"""Demo and load data: the ``seed_demo`` and ``seed_load`` management commands.

The top layer of the platform (docs/ARCHITECTURE.md, "Layers"): it builds its worlds through the
services of every app below it, and nothing imports it.
"""
