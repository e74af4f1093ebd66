"""The control plane's egress config as the node's firewall policy: what the firewall enforces,
and what it cannot (domain names, rules, an egress proxy) said in the log, never silently."""

from __future__ import annotations

import logging

import pytest

from ember.orchestrator.service import egress_policy
from ember.rpc import orchestrator_pb2 as pb


def test_cidrs_and_no_internet_become_the_firewall_policy(caplog: pytest.LogCaptureFixture) -> None:
    egress = pb.SandboxNetworkEgressConfig(allowed_cidrs=["10.1.0.0/16"], denied_cidrs=["0.0.0.0/0"])
    with caplog.at_level(logging.WARNING):
        policy = egress_policy(egress, None, "sbx1")
    assert policy.allow_internet_access is False
    assert [str(cidr) for cidr in policy.allowed_cidrs] == ["10.1.0.0/16"]
    assert caplog.records == []


def test_domains_rules_and_a_proxy_are_logged_as_not_enforced(caplog: pytest.LogCaptureFixture) -> None:
    egress = pb.SandboxNetworkEgressConfig(
        allowed_domains=["api.example.com"], denied_cidrs=["0.0.0.0/0"], egress_proxy_address="proxy:3128"
    )
    egress.rules["api.example.com"].rules.add().transform.headers["Authorization"] = "x"
    with caplog.at_level(logging.WARNING):
        policy = egress_policy(egress, None, "sbx2")
    assert policy.allow_internet_access is False, "a domain allowance must not open the sandbox"
    assert list(policy.allowed_cidrs) == []
    [record] = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING and "sandbox sbx2" in message
    assert "allowed_domains, rules, egress_proxy_address not enforced" in message
