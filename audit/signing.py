"""The log's checkpoint signing key, injected: audit signs through whoever holds keys.

The key lives in key custody (``issuers.log_signing.CustodyCheckpointSigner``, registered by
``issuers.apps.IssuersConfig.ready``). Custody records its own events in this log, so ``audit`` sits
below ``issuers`` and never imports it (docs/ARCHITECTURE.md, "Layers"): it sees only this protocol.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class CheckpointSigner(Protocol):
    """The log's Ed25519 signing key, as the log uses it: the private half never leaves its holder."""

    def ensure_key(self) -> None:
        """Create the key pair if there is none (once; creating it appends entries to the log)."""

    def public_key(self) -> Ed25519PublicKey | None:
        """The log's public key, or None while there is no key (never creates one)."""

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature of ``message`` by the log's key (which must exist)."""


class SignerNotConfigured(RuntimeError):
    """No checkpoint signer was registered (the app that holds the log's key is not installed)."""


_signer: CheckpointSigner | None = None


def register_signer(signer: CheckpointSigner) -> None:
    """Install the signer the log uses (called once, from the key holder's app config)."""
    global _signer
    _signer = signer


def checkpoint_signer() -> CheckpointSigner:
    if _signer is None:
        raise SignerNotConfigured("no checkpoint signer registered (audit.signing.register_signer)")
    return _signer


class LogSigningKey:
    """The registered signer as the key a note is signed with (:class:`audit.checkpoint.NoteSigningKey`)."""

    def __init__(self, signer: CheckpointSigner) -> None:
        public_key = signer.public_key()
        if public_key is None:
            raise SignerNotConfigured("the log has no signing key yet (ensure_key first)")
        self._signer = signer
        self._public_key = public_key

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(data)

    def public_key(self) -> Ed25519PublicKey:
        return self._public_key
