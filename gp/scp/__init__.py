"""GlobalPlatform secure channels SCP02 and SCP03 (sans-I/O), host and card side.

* :mod:`gp.scp.common`: what both share (:class:`SecurityLevel`, :class:`ChannelState`,
  :class:`SecuredResponse`, the secure messaging helpers).
* :mod:`gp.scp.host`: the host channel's state machine and pipelined unwrap.
* :mod:`gp.scp.scp03`: SCP03 (GPC 2.3.1 Amendment D v1.2), host channel and session core.
* :mod:`gp.scp.scp02`: SCP02 (GPC 2.3.1 Annex E), host channel and session core.
* :mod:`gp.scp.card`: the card side of both, for the emulated card.

The channel objects are bytes-in/bytes-out: they build INITIALIZE UPDATE and EXTERNAL
AUTHENTICATE, then ``wrap`` plain command APDUs and ``unwrap`` secured responses. They never do
I/O; randomness (the host challenge) comes from the injectable ``random`` callable.
Everything callers imported from the former ``gp/scp.py`` is re-exported here.
"""

from __future__ import annotations

from gp.keys import StaticKeys
from gp.scp.common import (
    _ZERO8,
    _ZERO16,
    SCP02_LEVELS,
    SCP03_LEVELS,
    ChannelState,
    SecuredResponse,
    SecurityLevel,
    _check_fits,
    _has_sm,
    _hexkey,
    _lc,
    _le,
    _plain_cla,
    _rmac_expected,
    _sm_cla,
)
from gp.scp.host import _HostChannel, _parse_iu_response, _Pending, _state_args
from gp.scp.scp02 import (
    SCP02,
    SCP02_C_MAC,
    SCP02_DEK,
    SCP02_ENC,
    SCP02_I_3KEYS,
    SCP02_I_EXPLICIT,
    SCP02_I_ICV_AID,
    SCP02_I_ICV_ENCRYPT,
    SCP02_I_PSEUDO_RANDOM,
    SCP02_I_RMAC,
    SCP02_I_UNMODIFIED_APDU,
    SCP02_R_MAC,
    SCP02Core,
    SCP02SessionKeys,
    scp02_card_challenge,
    scp02_session_keys,
)
from gp.scp.scp03 import (
    DDC_CARD_CHALLENGE,
    DDC_CARD_CRYPTOGRAM,
    DDC_HOST_CRYPTOGRAM,
    DDC_S_ENC,
    DDC_S_MAC,
    DDC_S_RMAC,
    SCP03,
    SCP03_I_PSEUDO_RANDOM,
    SCP03_I_RENC,
    SCP03_I_RMAC,
    SCP03Core,
    scp03_card_challenge,
    scp03_decrypt_response_data,
    scp03_encrypt_command_data,
    scp03_mac_command,
    scp03_session_keys,
    scp03_verify_rmac,
)

__all__ = [
    "DDC_CARD_CHALLENGE",
    "DDC_CARD_CRYPTOGRAM",
    "DDC_HOST_CRYPTOGRAM",
    "DDC_S_ENC",
    "DDC_S_MAC",
    "DDC_S_RMAC",
    "SCP02",
    "SCP02_C_MAC",
    "SCP02_DEK",
    "SCP02_ENC",
    "SCP02_I_3KEYS",
    "SCP02_I_EXPLICIT",
    "SCP02_I_ICV_AID",
    "SCP02_I_ICV_ENCRYPT",
    "SCP02_I_PSEUDO_RANDOM",
    "SCP02_I_RMAC",
    "SCP02_I_UNMODIFIED_APDU",
    "SCP02_LEVELS",
    "SCP02_R_MAC",
    "SCP03",
    "SCP03_I_PSEUDO_RANDOM",
    "SCP03_I_RENC",
    "SCP03_I_RMAC",
    "SCP03_LEVELS",
    "_ZERO8",
    "_ZERO16",
    "ChannelState",
    "SCP02Core",
    "SCP02SessionKeys",
    "SCP03Core",
    "SecuredResponse",
    "SecurityLevel",
    "StaticKeys",
    "_HostChannel",
    "_Pending",
    "_check_fits",
    "_has_sm",
    "_hexkey",
    "_lc",
    "_le",
    "_parse_iu_response",
    "_plain_cla",
    "_rmac_expected",
    "_sm_cla",
    "_state_args",
    "scp02_card_challenge",
    "scp02_session_keys",
    "scp03_card_challenge",
    "scp03_decrypt_response_data",
    "scp03_encrypt_command_data",
    "scp03_mac_command",
    "scp03_session_keys",
    "scp03_verify_rmac",
]
