"""The bank's code signing (issue 18, docs/keyservice.md "DAP"): the token's ``dap`` key signs a
Load File Data Block hash only after the bank approved that hash with
``python -m keyservice sign-release``. The approval is a journal entry (hash-chained, appended
under flock while the service runs), so every signature the service makes has its approval
before it in the same chain.
"""

from __future__ import annotations

import sys

from keyservice.journal import Journal

APPROVED = "dap_approved"
SIGNED = "dap_signed"


def approve(journal: Journal, lfdb_sha256: bytes, by: str) -> dict[str, object]:
    """Record the bank's approval to sign ``lfdb_sha256`` (what ``sign-release`` does)."""
    if len(lfdb_sha256) != 32:
        raise ValueError("a Load File Data Block hash is the SHA-256 of the block: 32 bytes")
    if not by.strip():
        raise ValueError("name who approves (--by)")
    return journal.append(
        session="",
        card="",
        sd_aid="",
        action=APPROVED,
        commands=[],
        lfdb_sha256=lfdb_sha256.hex(),
        by=by,
        outcome="approved",
        reason="",
    )


def approval_of(journal: Journal, lfdb_sha256: bytes) -> dict[str, object] | None:
    """The latest approval of ``lfdb_sha256`` in the journal, or None."""
    wanted = lfdb_sha256.hex()
    found = None
    for entry in journal.entries(0, limit=sys.maxsize):
        if entry.get("action") == APPROVED and entry.get("lfdb_sha256") == wanted:
            found = entry
    return found
