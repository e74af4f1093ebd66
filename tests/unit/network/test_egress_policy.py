"""An egress policy is parsed from the control plane's strings as the original does; bad ones say so."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from ember.errors import UsageError
from ember.network import EgressPolicy
from ember.network.egress import ALWAYS_DENIED, DENIED_BY_DEFAULT


def test_the_default_policy_allows_the_internet_and_lists_nothing() -> None:
    assert EgressPolicy() == EgressPolicy((), (), allow_internet_access=True)
    assert EgressPolicy.parse() == EgressPolicy()


def test_addresses_become_slash_32_and_host_bits_are_masked_as_in_the_original() -> None:
    policy = EgressPolicy.parse(["8.8.8.8", " 10.1.2.3/8 "], ["0.0.0.0/0"], allow_internet_access=False)
    assert policy == EgressPolicy(
        allowed_cidrs=(IPv4Network("8.8.8.8/32"), IPv4Network("10.0.0.0/8")),
        denied_cidrs=(IPv4Network("0.0.0.0/0"),),
        allow_internet_access=False,
    )


@pytest.mark.parametrize(
    ("allowed", "denied", "message"),
    [
        (["10.0.0.0/33"], [], r"allowed_cidrs: '10\.0\.0\.0/33' is not an IPv4 address or CIDR"),
        ([], ["example.com"], r"denied_cidrs: 'example\.com' is not an IPv4 .* allowed_domains"),
        ([], ["fd00::/8"], r"denied_cidrs: 'fd00::/8' is IPv6, but sandboxes only have IPv4 egress"),
        ([""], [], r"allowed_cidrs: '' is not an IPv4 address or CIDR"),
    ],
)
def test_a_bad_entry_is_a_usage_error_naming_its_list(
    allowed: list[str], denied: list[str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        EgressPolicy.parse(allowed, denied)


def test_the_fixed_sets_hold_metadata_loopback_and_the_private_ranges() -> None:
    assert any(IPv4Network("169.254.169.254/32").subnet_of(net) for net in ALWAYS_DENIED)
    assert any(IPv4Network("127.0.0.1/32").subnet_of(net) for net in ALWAYS_DENIED)
    assert any(IPv4Network("255.255.255.255/32").subnet_of(net) for net in ALWAYS_DENIED)
    assert set(DENIED_BY_DEFAULT) == {
        IPv4Network(text) for text in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
    }


def test_a_policy_is_hashable_and_immutable() -> None:
    policy = EgressPolicy.parse(["1.2.3.0/24"])
    assert {policy: 1}[EgressPolicy.parse(["1.2.3.0/24"])] == 1
    with pytest.raises(AttributeError):
        policy.allow_internet_access = False  # type: ignore[misc]
