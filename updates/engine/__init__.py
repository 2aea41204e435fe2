"""The OTA session engine's pure part (sans-I/O, no Django): phases and their transition table
(:mod:`~updates.engine.phases`), and the protocol vocabulary (:mod:`~updates.engine.protocol`).

``updates.ota`` is the runner: it loads what the engine needs from the database, keeps the
engine's state in ``CardSession``, and applies what an exchange changes in one transaction.
An import-linter contract (``pyproject.toml``) keeps this package free of Django and the apps.
"""
