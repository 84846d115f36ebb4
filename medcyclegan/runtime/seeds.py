"""Seeds derived from the run seed: one stream per purpose, stable across runs and platforms."""

from __future__ import annotations


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms, unlike ``hash``)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF
