"""Shared fixtures: real sandboxes, started once per module where state does not matter."""

from __future__ import annotations

import pytest

from retool.sandbox import SandboxLimits, create_session

FAST_LIMITS = SandboxLimits(timeout_s=5.0, interrupt_grace_s=1.0)


@pytest.fixture
def jupyter_session():
    session = create_session("jupyter", FAST_LIMITS)
    yield session
    session.close()


@pytest.fixture
def subprocess_session():
    session = create_session("subprocess", FAST_LIMITS)
    yield session
    session.close()
