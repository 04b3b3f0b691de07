"""One rule for every seed derived from another (a sample's from the run's, a turn's from the sample's).

``derive_seed(base, *parts)`` hashes its arguments into [0, 2**63): any integers (a client's seed of
any size, negative ones included) or strings give a valid seed for torch, vLLM and NumPy, distinct
parts give unrelated streams, and nothing overflows. Deterministic across processes and machines
(no Python ``hash``).
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63


def derive_seed(base: int | str, *parts: int | str) -> int:
    digest = hashlib.blake2b(repr((base, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)
