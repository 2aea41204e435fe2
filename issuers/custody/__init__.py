"""Key custody services (DESIGN §7): keys are stored wrapped under a per-organisation KEK.

* Every key is stored only wrapped (AES-GCM) under its owner organisation's active
  :class:`~issuers.custody_models.KeyEncryptionKey`; the associated data binds the blob to its owner
  organisation, card CIN, security domain AID, KVN, purpose, algorithm and KEK version, so a blob
  copied into another row does not unwrap.
* The KEK lives in the backend chosen by ``ECARD_KEY_BACKEND`` (:mod:`issuers.keyvault`).
* ``load_*`` functions return clear key material. They exist for the secure-channel code in
  services and tasks only (:mod:`gp.scp` sessions, token signing, checkpoint signing) and must never
  be called from views, serializers, admin pages or anything that logs or renders: API and admin
  show :class:`KeySet` metadata (KVN, algorithm, length, KCVs, public key, dates) and nothing else.
* Card ISD keys are diversified on demand from the agency's master (:func:`card_isd_keys`); the
  diversified keys are never stored.
* :func:`rotate_kek` re-wraps every key of an organisation under a new KEK in one transaction
  and destroys the old KEK; readers keep working throughout.

Every state change writes an audit event in the same transaction, with metadata only (no key
bytes, and no KCVs either).

The package is split by concern; this module re-exports every name so callers import
``issuers.custody`` only:

* :mod:`~issuers.custody.kek` — an organisation's KEK, created on first use;
* :mod:`~issuers.custody.keysets` — wrapping, storing and loading key sets;
* :mod:`~issuers.custody.card_keys` — card ISD key diversification and host secure channels;
* :mod:`~issuers.custody.sealing` — sealing a channel's session state between relay round trips;
* :mod:`~issuers.custody.rotation` — KEK rotation.
"""

from __future__ import annotations

from issuers.custody.card_keys import card_isd_keys, open_secure_channel
from issuers.custody.kek import KEK_ALGORITHM as KEK_ALGORITHM
from issuers.custody.kek import active_kek, ensure_org_kek
from issuers.custody.keysets import Algorithm as Algorithm
from issuers.custody.keysets import (
    NewKey,
    PrivateKey,
    generate_private_key,
    generate_static_keys,
    load_private_key,
    load_secret_key,
    load_static_keys,
    store_master_key,
    store_new_keys,
    store_private_key,
    store_secret_key,
    store_static_keys,
)
from issuers.custody.keysets import Purpose as Purpose
from issuers.custody.keysets import _aad as _aad  # tests rebuild a key set's associated data
from issuers.custody.rotation import _rewrap_keyset as _rewrap_keyset  # tests inject failures (see rotation)
from issuers.custody.rotation import rotate_kek
from issuers.custody.sealing import open_channel_state, seal_channel_state
from issuers.keyvault import CustodyError, KekUnavailableError, UnwrapError

__all__ = [
    "CustodyError",
    "KekUnavailableError",
    "NewKey",
    "PrivateKey",
    "UnwrapError",
    "active_kek",
    "card_isd_keys",
    "ensure_org_kek",
    "generate_private_key",
    "generate_static_keys",
    "load_private_key",
    "load_secret_key",
    "load_static_keys",
    "open_channel_state",
    "open_secure_channel",
    "rotate_kek",
    "seal_channel_state",
    "store_master_key",
    "store_new_keys",
    "store_private_key",
    "store_secret_key",
    "store_static_keys",
]
