"""The attack suite, for real, against every backend (Docker where an engine and the image exist).

Each attack runs in a session of a live pool; the host judges containment and then checks that
the next call on that session still works.
"""

from __future__ import annotations

import pytest

from retool.sandbox import SandboxPool, SandboxUnavailable, create_session
from retool.sandbox.attacks import ATTACKS, HostBait, run_attack

BACKENDS = ["jupyter", "subprocess", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="module")
def bait():
    with HostBait() as bait:
        yield bait


@pytest.fixture(scope="module", params=BACKENDS)
def pool(request, bait):
    try:
        create_session(request.param).close()
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    with SandboxPool(request.param, size=2) as pool:
        yield pool


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_contained_and_the_next_call_works(pool, bait, attack):
    outcome = run_attack(pool, attack, bait)
    assert outcome.contained, outcome.detail
    assert outcome.recovered, outcome.detail


def test_the_host_is_still_fine_after_the_suite(bait):
    assert bait.home_file.read_text() == bait.secret
    assert bait.accepted == 0
    assert bait.host_processes_with_marker() == []
