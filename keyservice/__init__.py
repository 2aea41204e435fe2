"""The bank key service (docs/keyservice.md): a separate, Django-free process that holds one
bank's SCP03 master keys in the bank's PKCS#11 token, opens secure channels with the bank's
security domains for the platform, and wraps only what the bank's policy allows.

It imports the standard library, ``cryptography``, ``pkcs11`` (python-pkcs11) and ``gp`` only.
"""
