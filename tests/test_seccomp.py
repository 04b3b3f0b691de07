"""The seccomp rules as data, and the two forms they are given out in (the jails' BPF and the
Docker profile). What the rules do to a real cell is the attack suite's job
(``socket_families_beyond_ip``, ``lower_own_cpu_limit``, ``nested_namespaces_and_limits``)."""

from __future__ import annotations

import json

import pytest

from retool.sandbox import seccomp


def _refused_families(rules, call):
    return {value for r in rules if r.call == call for _, op, value, mask in r.conditions
            if op == "masked_eq" and mask == seccomp.LOW32}


def test_every_socket_family_but_unix_ip_and_netlink_is_refused_on_its_low_32_bits():
    rules = seccomp.rules(uid_shared=False)
    for call in ("socket", "socketpair"):
        refused = _refused_families(rules, call)
        assert refused == set(range(seccomp.FAMILY_RANGE)) - {1, 2, 10, 16}
        assert 40 in refused  # AF_VSOCK, which reaches the hypervisor


def test_the_cpu_limit_may_be_read_but_not_set():
    late = {r.call: r for r in seccomp.late_rules()}
    assert late["setrlimit"].conditions == ((0, "masked_eq", seccomp.RLIMIT_CPU, seccomp.LOW32),)
    # prlimit64(pid, resource, new, old): refused only with a new limit (arg 2) for RLIMIT_CPU
    assert (2, "ne", 0, 0) in late["prlimit64"].conditions
    assert (1, "masked_eq", seccomp.RLIMIT_CPU, seccomp.LOW32) in late["prlimit64"].conditions


def test_inotify_is_refused_only_where_the_uid_is_shared():
    assert "inotify_init1" in {r.call for r in seccomp.rules(uid_shared=True)}
    assert "inotify_init1" not in {r.call for r in seccomp.rules(uid_shared=False)}


def test_the_docker_profile_carries_the_same_rules_in_dockers_terms():
    profile = json.loads(seccomp.docker_profile())
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert "architectures" not in profile  # the engine's native ABI only
    entries = profile["syscalls"]
    assert len(entries) == len(seccomp.rules(True)) + len(seccomp.late_rules())
    vsock = [e for e in entries if e["names"] == ["socket"] and e["args"][0]["valueTwo"] == 40]
    # Docker's masked compare: value is the mask, valueTwo what the masked argument must equal
    assert vsock == [{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                      "args": [{"index": 0, "value": 0xFFFFFFFF, "valueTwo": 40, "op": "SCMP_CMP_MASKED_EQ"}]}]
    assert any(e["names"] == ["setrlimit"] for e in entries)


@pytest.mark.skipif(seccomp.seccomp_unavailable() is not None, reason="libseccomp is not available here")
def test_both_programs_compile_to_whole_bpf_instructions():
    for program in (seccomp.filter_program(False), seccomp.filter_program(True), seccomp.late_filter_program()):
        assert program and len(program) % 8 == 0  # struct sock_filter is 8 bytes
