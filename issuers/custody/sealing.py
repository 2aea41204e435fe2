"""Channel-state sealing: a secure channel's session state (it holds session keys) is stored between
relay round trips only encrypted under the organisation's KEK, bound to a context (the job id).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ecard.errors import ServiceError
from issuers.custody.kek import ensure_org_kek
from issuers.custody_models import KeyEncryptionKey
from issuers.keyvault import KekUnavailableError, UnwrapError, encode_aad, get_backend
from issuers.models import Organization


def _state_aad(org: Organization, context: str, kek_version: int) -> bytes:
    return encode_aad("ecard-channel-state", 1, org.pk, context, kek_version)


def seal_channel_state(org: Organization, state: Mapping[str, Any], *, context: str) -> bytes:
    """Encrypt a channel's :meth:`session_state` (it holds session keys) under the organisation's KEK,
    bound to ``context`` (e.g. the card job id), for storing between relay round trips.

    The blob names its KEK version; after a KEK rotation older blobs no longer open (the
    session is restarted, as after any secure channel failure).
    """
    if not context:
        raise ServiceError("a channel state needs a context (e.g. the job id)", field="context")
    kek = ensure_org_kek(org)
    plaintext = json.dumps(dict(state), sort_keys=True, separators=(",", ":")).encode()
    inner = get_backend(kek.backend).wrap(kek.ref, plaintext, _state_aad(org, context, kek.version))
    return b"\x01" + kek.version.to_bytes(4, "big") + inner


def open_channel_state(org: Organization, blob: bytes, *, context: str) -> dict[str, Any]:
    """Inverse of :func:`seal_channel_state`; :class:`CustodyError` if it does not open."""
    blob = bytes(blob)
    if len(blob) < 6 or blob[0] != 0x01:
        raise UnwrapError("malformed sealed channel state")
    version = int.from_bytes(blob[1:5], "big")
    kek = KeyEncryptionKey.objects.filter(organization=org, version=version).first()
    if kek is None or kek.state == KeyEncryptionKey.State.DESTROYED:
        raise KekUnavailableError(f"the KEK v{version} of {org.slug} that sealed this channel state is gone")
    plaintext = get_backend(kek.backend).unwrap(kek.ref, blob[5:], _state_aad(org, context, version))
    try:
        state = json.loads(plaintext)
    except ValueError:
        raise UnwrapError("sealed channel state does not parse") from None
    if not isinstance(state, dict):
        raise UnwrapError("sealed channel state is not an object")
    return state
