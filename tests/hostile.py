"""Hostile payloads, built by hand so that making them costs nothing:
decompression bombs in every compression code of the compact encoding, and
bodies that are small but expensive to unpack."""

from __future__ import annotations

import struct
import zlib

from farmedge.contract.compact import MAGIC, SHARED_DICTIONARY

__all__ = ["BLOCK", "deflate_bomb", "nested_arrays", "zstd_bomb"]

#: The largest zstd block (RFC 8878, Block_Maximum_Size).
BLOCK = 128 * 1024


def zstd_bomb(size: int, *, declare: int | bool | None = True, dictionary: bool = False) -> bytes:
    """A compact payload (code 1, or 3 with ``dictionary``) whose zstd frame
    decompresses to ``size`` zero bytes: RLE blocks of 4 bytes per 128 KiB,
    so 1 GiB costs 32 KiB. ``declare``: True puts the true size in the frame
    header, False leaves it out, an int declares that (lying) size."""
    out = bytearray(b"\x28\xb5\x2f\xfd")
    # As the zstd library writes them: an 8 MiB window (exponent 13), so the
    # frame needs no more memory than any ordinary one to decode.
    window = (23 - 10) << 3
    if declare is False or declare is None:
        out += bytes([0x00, window])
    else:
        declared = size if declare is True else int(declare)
        # An 8-byte Frame_Content_Size.
        out += bytes([3 << 6, window]) + struct.pack("<Q", declared)
    left = size
    while True:
        n = min(left, BLOCK)
        left -= n
        last = 1 if left == 0 else 0
        header = last | (1 << 1) | (n << 3)  # Block_Type 1: RLE
        out += header.to_bytes(3, "little") + b"\x00"
        if last:
            break
    return bytes([MAGIC, 3 if dictionary else 1]) + bytes(out)


def deflate_bomb(size: int) -> bytes:
    """A compact payload (code 2) of raw DEFLATE with the shared dictionary
    that inflates to ``size`` zero bytes (about 1,000:1)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY,
                         zdict=SHARED_DICTIONARY)
    chunk = b"\x00" * (1024 * 1024)
    parts = []
    left = size
    while left > 0:
        n = min(left, len(chunk))
        parts.append(c.compress(chunk[:n]))
        left -= n
    parts.append(c.flush())
    return bytes([MAGIC, 2]) + b"".join(parts)


def nested_arrays(depth: int = 1000, count: int = 1000) -> bytes:
    """A compact payload (code 2, a few KiB) whose body, under 1 MiB, holds
    ``count`` chains of ``depth`` nested one-element MessagePack arrays in
    the series slot: a million Python lists if unpacked naively."""
    chain = b"\x91" * depth + b"\xc0"
    series = b"\xdc" + count.to_bytes(2, "big") + chain * count
    body = b"\x9b\x01\xa4gw-1\x01\x01\x00" + series + b"\x90" * 5
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY,
                         zdict=SHARED_DICTIONARY)
    return bytes([MAGIC, 2]) + c.compress(body) + c.flush()
