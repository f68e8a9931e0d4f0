"""Synnefo's IP pool bitmaps (`db_ippooltable`), as pure functions.

A pool covers `size` consecutive addresses of a subnet starting at
network address + `offset`. `available_map` and `reserved_map` are base64 of
a big-endian bit array, 1 = free, padded with 0 bits to whole bytes; an
address is free only when its bit is 1 in both (reserved_map holds the
external reservations: gateway, admin-reserved addresses). Delivery returns
the address of a removed NIC to its pool and takes the new address of a NIC
whose IP changed, exactly as Synnefo's pool code would; reconciliation
compares a pool with the addresses in use (`drift`) and rebuilds it from
them (`repaired`).
"""

from __future__ import annotations

import base64
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, replace


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
        found, _ = _indexes(pool, [address])
    except ValueError:  # a base that is no subnet
        return None
    return next(iter(found), None)


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
    return replace(pool, available_map=_encode(bits))


def _encode(bits: bytearray) -> str:
    return base64.b64encode(bytes(bits)).decode()


def release(pool: Pool, address: str) -> Pool:
    """The pool with *address* free again (releasing a free address changes nothing)."""
    return _with_available(pool, address, True)


def reserve(pool: Pool, address: str) -> Pool:
    """The pool with *address* taken; PoolError if it is not free."""
    if not is_free(pool, address):
        raise PoolError(f"{address} is already in use in IP pool {pool.id} ({pool.base})")
    return _with_available(pool, address, False)


# ---------------------------------------------------------------- consistency (reconciliation)


@dataclass(frozen=True)
class Drift:
    """How a pool disagrees with the addresses in use; empty when it agrees."""

    used_but_free: tuple[str, ...] = ()  # in use, yet the pool would hand them out again
    taken_unused: tuple[str, ...] = ()  # taken in the pool, yet no address row holds them: leaked
    reserved_free: tuple[str, ...] = ()  # Ganeti keeps them from instances, yet the pool offers them
    duplicates: tuple[str, ...] = ()  # held by more than one address row: no map can fix that

    def __bool__(self) -> bool:
        return bool(self.used_but_free or self.taken_unused or self.reserved_free or self.duplicates)


def _indexes(pool: Pool, addresses: Iterable[str]) -> tuple[dict[int, str], list[str]]:
    """The pool's bit of each address it covers (others are outside: a gateway, another subnet),
    and the addresses seen more than once."""
    if not pool.base:
        raise PoolError(f"IP pool {pool.id} has no base subnet")
    net = ipaddress.ip_network(pool.base, strict=False)
    first = int(net.network_address) + (pool.offset or 0)
    size = min(pool.size, net.num_addresses - (pool.offset or 0))  # never past the subnet's end
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    out: dict[int, str] = {}
    twice = []
    for address in addresses:
        try:  # ten times faster than ipaddress, for the 100,000 addresses of a big cloud
            i = int.from_bytes(socket.inet_pton(family, address), "big") - first
        except (OSError, TypeError):
            continue  # not an address of this family
        if not 0 <= i < size:
            continue
        if i in out:
            twice.append(address)
        out[i] = address
    return out, sorted(set(twice), key=ipaddress.ip_address)


def _address(pool: Pool, i: int) -> str:
    net = ipaddress.ip_network(pool.base or "", strict=False)
    return str(net.network_address + (pool.offset or 0) + i)


def drift(pool: Pool, used: Iterable[str], reserved: Iterable[str] = ()) -> Drift:
    """Compare the pool with the addresses rows hold (*used*) and those Ganeti reserves externally.

    The maps are compared as whole integers: a pool of a /16 has 65,536 bits, and
    only the few that differ are looked at one by one.
    """
    in_use, twice = _indexes(pool, used)
    kept, _ = _indexes(pool, reserved)
    available = _bits(pool, pool.available_map, "available_map")
    outside = _bits(pool, pool.reserved_map, "reserved_map")
    expected = bytearray(b"\xff" * len(available))  # 1 = free: every address no row holds
    for i in in_use:
        _set(expected, i, False)
    width = len(available) * 8
    in_range = ((1 << pool.size) - 1) << (width - pool.size)  # the padding bits are no address
    differ = (int.from_bytes(available, "big") ^ int.from_bytes(expected, "big")) & in_range
    wrong = []
    while differ:
        low = differ & -differ
        wrong.append(width - low.bit_length())
        differ ^= low
    wrong.sort()
    reserved_free = [i for i in sorted(kept) if _get(available, i) and _get(outside, i) and i not in in_use]
    return Drift(
        tuple(in_use[i] for i in wrong if i in in_use),
        tuple(_address(pool, i) for i in wrong if i not in in_use),
        tuple(kept[i] for i in reserved_free),
        tuple(twice),
    )


def repaired(pool: Pool, used: Iterable[str], reserved: Iterable[str] = ()) -> Pool:
    """The pool with exactly the addresses in use taken, and Ganeti's reservations kept from use."""
    in_use, _ = _indexes(pool, used)
    kept, _ = _indexes(pool, reserved)
    available = _bits(pool, pool.available_map, "available_map")
    outside = _bits(pool, pool.reserved_map, "reserved_map")
    for i in range(pool.size):
        _set(available, i, i not in in_use)
    for i in kept:
        if i not in in_use:
            _set(outside, i, False)
    return replace(pool, available_map=_encode(available), reserved_map=_encode(outside))
