"""Synnefo's IP pool bitmaps (`db_ippooltable`), as pure functions.

A pool covers `size` consecutive addresses of a subnet starting at
network address + `offset`. `available_map` and `reserved_map` are base64 of
a big-endian bit array, 1 = free, padded with 0 bits to whole bytes; an
address is free only when its bit is 1 in both (reserved_map holds the
external reservations: gateway, admin-reserved addresses). Delivery returns
the address of a removed NIC to its pool and takes the new address of a NIC
whose IP changed, exactly as Synnefo's pool code would.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass


class PoolError(ValueError):
    """The address is outside the pool, already taken, or the pool is unusable."""


@dataclass(frozen=True)
class Pool:
    id: int
    available_map: str
    reserved_map: str
    size: int
    base: str | None  # the subnet CIDR
    offset: int | None


def index_of(pool: Pool, address: str) -> int | None:
    """The address's bit in this pool, or None when the pool does not cover it."""
    if not pool.base:
        return None
    try:
        net = ipaddress.ip_network(pool.base, strict=False)
        addr = ipaddress.ip_address(address)
    except ValueError:
        return None
    if addr.version != net.version or addr not in net:
        return None
    index = int(addr) - int(net.network_address) - (pool.offset or 0)
    return index if 0 <= index < pool.size else None


def pool_for(pools: list[Pool], address: str) -> Pool | None:
    return next((p for p in pools if index_of(p, address) is not None), None)


def _bits(pool: Pool, encoded: str, which: str) -> bytearray:
    if not encoded:
        raise PoolError(f"IP pool {pool.id} ({pool.base}) has an empty {which}: it was never initialised")
    raw = bytearray(base64.b64decode(encoded))
    if len(raw) * 8 < pool.size:
        raise PoolError(
            f"IP pool {pool.id} ({pool.base}): {which} holds {len(raw) * 8} bits for size {pool.size}"
        )
    return raw


def _get(bits: bytearray, i: int) -> bool:
    return bool(bits[i // 8] & (0x80 >> (i % 8)))


def _set(bits: bytearray, i: int, free: bool) -> None:
    if free:
        bits[i // 8] |= 0x80 >> (i % 8)
    else:
        bits[i // 8] &= ~(0x80 >> (i % 8)) & 0xFF


def is_free(pool: Pool, address: str) -> bool:
    i = _index(pool, address)
    return _get(_bits(pool, pool.available_map, "available_map"), i) and _get(
        _bits(pool, pool.reserved_map, "reserved_map"), i
    )


def _index(pool: Pool, address: str) -> int:
    i = index_of(pool, address)
    if i is None:
        raise PoolError(f"{address} is not in IP pool {pool.id} ({pool.base})")
    return i


def _with_available(pool: Pool, address: str, free: bool) -> Pool:
    i = _index(pool, address)
    bits = _bits(pool, pool.available_map, "available_map")
    _set(bits, i, free)
    return Pool(
        pool.id, base64.b64encode(bytes(bits)).decode(), pool.reserved_map, pool.size, pool.base, pool.offset
    )


def release(pool: Pool, address: str) -> Pool:
    """The pool with *address* free again (releasing a free address changes nothing)."""
    return _with_available(pool, address, True)


def reserve(pool: Pool, address: str) -> Pool:
    """The pool with *address* taken; PoolError if it is not free."""
    if not is_free(pool, address):
        raise PoolError(f"{address} is already in use in IP pool {pool.id} ({pool.base})")
    return _with_available(pool, address, False)
