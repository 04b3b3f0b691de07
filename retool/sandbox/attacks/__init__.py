"""The attack suite: real hostile cells run against a live backend, each judged from the host.

Used by the tests and by ``retool sandbox check``. ``base`` holds the machinery (the bait the host
puts in reach, how an attack runs and is judged), ``contain`` the containment attacks (network,
files, secrets, bombs, limits, crashes, children), ``harden`` those of the outside attack pass
(pid 1, nested namespaces, quotas, the host following jail paths, hostile kernel messages, output
floods, leftover threads, lone surrogates, its own CPU limit, socket families, pid hopping),
``untrusted`` those of the second outside pass (replies and messages the interpreter forges:
wrong types, no parser survives, over every cap, a thousand frames, costly floods, a forged idle,
a thread that holds the interpreter's lock).
"""

from __future__ import annotations

from retool.sandbox.attacks.base import PROBE, Attack, AttackOutcome, Evidence, HostBait, run_attack
from retool.sandbox.attacks.contain import CONTAINMENT
from retool.sandbox.attacks.harden import HARDENING
from retool.sandbox.attacks.untrusted import UNTRUSTED
from retool.sandbox.spec import SandboxSpec

ATTACKS: list[Attack] = CONTAINMENT + HARDENING + UNTRUSTED
ATTACKS_BY_NAME = {attack.name: attack for attack in ATTACKS}


def run_attack_suite(sandbox: SandboxSpec, names: list[str] | None = None, **options):
    """Run the attacks (all, or ``names``) against ``sandbox``; yields one outcome per attack."""
    attacks = [ATTACKS_BY_NAME[n] for n in names] if names else ATTACKS
    with HostBait() as bait, sandbox.pool(size=2, **options) as pool:
        for attack in attacks:
            yield run_attack(pool, attack, bait)


__all__ = ["ATTACKS", "ATTACKS_BY_NAME", "PROBE", "Attack", "AttackOutcome", "Evidence", "HostBait", "run_attack",
           "run_attack_suite"]
