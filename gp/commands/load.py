"""LOAD (GPC 2.3.1 §11.6): DAP blocks, the load stream and its split into LOAD commands."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gp.commands._fields import _apdu, _check_aid
from gp.commands.constants import CLA_GP, EXTENDED_MAX_DATA, INS_LOAD, MAX_LOAD_BLOCKS, SHORT_MAX_DATA
from gp.errors import LoadError
from gp.tlv import encode_tlv


def dap_block(sd_aid: bytes, signature: bytes) -> bytes:
    """DAP block ``E2 { 4F <SD AID>, C3 <LFDB signature> }`` preceding the LFDB (§11.6.2.3)."""
    return encode_tlv(0xE2, encode_tlv(0x4F, _check_aid(sd_aid, "SD AID")) + encode_tlv(0xC3, signature))


def load_stream(lfdb: bytes, dap_blocks: Iterable[bytes | tuple[bytes, bytes]] = ()) -> bytes:
    """All LOAD data: ``[DAP blocks] C4 <BER length> <LFDB>`` (§11.6.2.3)."""
    head = b""
    for blk in dap_blocks:
        head += dap_block(*blk) if isinstance(blk, tuple) else bytes(blk)
    return head + encode_tlv(0xC4, lfdb)


@dataclass(frozen=True)
class LoadPlan:
    """How to send one LFDB: block size, extended APDUs or not, and the number of LOAD commands."""

    block_size: int
    extended: bool
    blocks: int


def plan_load(
    lfdb: bytes,
    short_max: int,
    extended_max: int | None = None,
    extended_ok: bool = False,
    *,
    dap_blocks: Sequence[bytes | tuple[bytes, bytes]] = (),
) -> LoadPlan:
    """Choose the block size: short APDUs when ≤ 256 blocks suffice, else extended length if the
    card supports it (``extended_ok``) and blocks of ``extended_max`` bring it to ≤ 256; else LoadError.

    ``short_max`` / ``extended_max`` are the plain bytes one command may carry after SCP overhead
    (the secure channel's ``max_data_length()``: 239 for C-DEC + C-MAC S8, 223 for S16).
    """
    total = len(load_stream(lfdb, dap_blocks))
    if not 1 <= short_max <= SHORT_MAX_DATA:
        raise LoadError(f"short block size must be 1..{SHORT_MAX_DATA}, got {short_max}")
    n = math.ceil(total / short_max)
    if n <= MAX_LOAD_BLOCKS:
        return LoadPlan(short_max, False, n)
    if extended_ok and extended_max:
        if not short_max <= extended_max <= EXTENDED_MAX_DATA:
            raise LoadError(f"extended block size must be {short_max}..{EXTENDED_MAX_DATA}, got {extended_max}")
        n = math.ceil(total / extended_max)
        if n <= MAX_LOAD_BLOCKS:
            return LoadPlan(extended_max, True, n)
        raise LoadError(
            f"load file of {total} bytes needs {n} LOAD blocks even with extended-length blocks of "
            f"{extended_max} bytes; the block number is one byte (at most {MAX_LOAD_BLOCKS} blocks)"
        )
    raise LoadError(
        f"load file of {total} bytes needs {n} LOAD blocks of {short_max} bytes; the block number is "
        f"one byte (at most {MAX_LOAD_BLOCKS} blocks) and extended length is "
        f"{'not supported by the card' if not extended_ok else 'not configured'}"
    )


def load_commands(
    lfdb: bytes, max_block: int, *, dap_blocks: Sequence[bytes | tuple[bytes, bytes]] = (), extended_ok: bool = False
) -> list[bytes]:
    """LOAD commands ``80 E8 P1 P2`` for ``C4 <len> <lfdb>`` (§11.6.2): P1 ``80`` on the last block,
    else ``00``; P2 the block number 0..255. Each block carries at most ``max_block`` plain bytes.

    More than 256 blocks raises LoadError (never wraps). Blocks over 255 bytes need ``extended_ok``.
    """
    if not isinstance(max_block, int) or max_block < 1:
        raise LoadError(f"max_block must be a positive int, got {max_block!r}")
    if max_block > SHORT_MAX_DATA and not extended_ok:
        raise LoadError(f"blocks of {max_block} bytes need extended-length APDUs (extended_ok=False)")
    if max_block > EXTENDED_MAX_DATA:
        raise LoadError(f"max_block {max_block} exceeds the extended-length maximum {EXTENDED_MAX_DATA}")
    stream = load_stream(lfdb, dap_blocks)
    n = math.ceil(len(stream) / max_block)
    if n > MAX_LOAD_BLOCKS:
        raise LoadError(
            f"load file needs {n} LOAD blocks of {max_block} bytes but the block number is one byte "
            f"(at most {MAX_LOAD_BLOCKS}); use larger (extended-length) blocks — see plan_load()"
        )
    out = []
    for i in range(n):
        block = stream[i * max_block : (i + 1) * max_block]
        p1 = 0x80 if i == n - 1 else 0x00
        out.append(_apdu(CLA_GP, INS_LOAD, p1, i, block, le=256, extended=len(block) > SHORT_MAX_DATA))
    return out
