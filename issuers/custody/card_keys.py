"""Card keys: ISD keys diversified on demand from the agency's master (never stored), and host-side
secure channels keyed from a stored key set (the static keys never leave the call).
"""

from __future__ import annotations

from typing import Literal

from ecard.errors import ServiceError
from gp.keys import StaticKeys, diversify
from gp.scp import SCP02, SCP03
from issuers.custody.keysets import Algorithm, Purpose, load_secret_key, load_static_keys
from issuers.custody_models import KeySet
from issuers.keyvault import CustodyError
from issuers.models import Organization

_SCHEME_ALGORITHM = {"kdf3": Algorithm.AES, "emv": Algorithm.DES3, "visa2": Algorithm.DES3}


def card_isd_keys(
    agency: Organization,
    card_cin: str,
    kdd: bytes,
    scheme: Literal["kdf3", "emv", "visa2"] = "kdf3",
    *,
    kvn: int | None = None,
) -> StaticKeys:
    """The card's ISD static keys, diversified on demand from the agency's master (never stored).

    ``kdd`` is the key diversification data (bytes 0..9 of the INITIALIZE UPDATE response); the
    derivation depends on it alone, ``card_cin`` names the card for the caller's records;
    ``kvn`` selects the master's KVN (default: the highest active one for the scheme's algorithm).
    The returned keys carry the master's KVN. For secure-channel code in services/tasks only.
    """
    if not agency.is_agency:
        raise ServiceError("card ISD keys are diversified from the agency's master only", field="agency")
    algorithm = _SCHEME_ALGORITHM.get(scheme)
    if algorithm is None:
        raise ServiceError(f"unknown diversification scheme {scheme!r}", field="scheme")
    masters = KeySet.objects.filter(
        organization=agency,
        purpose=Purpose.DIVERSIFICATION_MASTER,
        algorithm=algorithm,
        state=KeySet.State.ACTIVE,
        card_cin="",
        sd_aid="",
    )
    if kvn is not None:
        masters = masters.filter(kvn=kvn)
    master = masters.order_by("-kvn").first()
    if master is None:
        raise CustodyError(f"no active {algorithm} diversification master for {agency.slug}")
    return diversify(scheme, load_secret_key(master), bytes(kdd), master.kvn)


# ---------------------------------------------------------------------------
# secure channels: session-level material for the channel code


def open_secure_channel(
    keyset: KeySet,
    *,
    security_level: int | None = None,
    host_challenge: bytes | None = None,
    i: int = 0x55,
    s16: bool = False,
    sd_aid: bytes | None = None,
) -> SCP02 | SCP03:
    """A host-side secure channel (:class:`gp.scp.SCP03` for AES, :class:`gp.scp.SCP02` for 3DES)
    keyed from a stored ``scp_static`` key set; the static keys never leave this call.

    ``security_level`` defaults to 0x33 (SCP03) / 0x03 (SCP02); ``i`` is the SCP02 option.
    For the secure-channel code in services and tasks only.
    """
    keys = load_static_keys(keyset)
    if keyset.algorithm == Algorithm.AES:
        return SCP03(keys, 0x33 if security_level is None else security_level, host_challenge, s16=s16, sd_aid=sd_aid)
    return SCP02(keys, 0x03 if security_level is None else security_level, host_challenge, i=i, sd_aid=sd_aid)
