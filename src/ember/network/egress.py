"""Which destinations a sandbox's guest may send to: the egress policy and its precedence; no I/O.

Every packet the guest sends is judged by its destination address, first match wins::

    1. always denied     0.0.0.0/8 (this network), 127.0.0.0/8 (loopback), 169.254.0.0/16
                         (link-local, with the cloud metadata service 169.254.169.254),
                         224.0.0.0/4 (multicast), 240.0.0.0/4 (reserved and broadcast), and
                         SANDBOXES_VRT_NETWORK_CIDR / SANDBOXES_HOST_NETWORK_CIDR (the host's veth
                         ends and every sandbox's host IP). No policy lifts these.
    2. allowed_cidrs     allowed
    3. denied_cidrs      denied
    4. private ranges    10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10: denied
    5. everything else   allowed when allow_internet_access, else denied

The control plane turns ``allow_internet_access=false`` into ``denied_cidrs = [0.0.0.0/0]``; step
5 is that deny. Because the original checks the user's allow set before the user's deny set, an
``allowed_cidrs`` entry opens its destinations even with internet access off, and wins over an
overlapping ``denied_cidrs`` entry; ember keeps both. Where ember departs from the original: the
original's predefined deny set (a hard block before the user sets) holds the private ranges too,
so a user there cannot open a private address; here they are a default that ``allowed_cidrs``
lifts (a sandbox can be given one private service), while step 1 stays hard.

Replies to connections made *to* the guest (the host talking to envd) are not judged at all;
``ember.network.firewall`` renders this policy as iptables rules and says how.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network

from ember.errors import UsageError

ALWAYS_DENIED = (
    IPv4Network("0.0.0.0/8"),
    IPv4Network("127.0.0.0/8"),
    IPv4Network("169.254.0.0/16"),
    IPv4Network("224.0.0.0/4"),
    IPv4Network("240.0.0.0/4"),
)
DENIED_BY_DEFAULT = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
    IPv4Network("100.64.0.0/10"),
)


def parse_cidr(text: str, field: str) -> IPv4Network:
    """``text`` as an IPv4 network; a bare address is its /32, host bits are masked off.

    Both as the original reads ``allowed_cidrs``/``denied_cidrs`` (``10.1.2.3/8`` means
    10.0.0.0/8). ``field`` names the list in the error.
    """
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise UsageError(
            f"{field}: {text!r} is not an IPv4 address or CIDR (write it like 10.0.0.0/8 or 8.8.8.8); "
            "domain names belong in allowed_domains"
        ) from exc
    if not isinstance(network, IPv4Network):
        raise UsageError(f"{field}: {text!r} is IPv6, but sandboxes only have IPv4 egress: use an IPv4 CIDR")
    return network


@dataclass(frozen=True)
class EgressPolicy:
    """A slot's egress policy (the control plane's ``SandboxNetworkEgressConfig`` CIDR part).

    The default lets the guest reach the internet and nothing private; see the module
    docstring for how the three fields combine.
    """

    allowed_cidrs: tuple[IPv4Network, ...] = ()
    denied_cidrs: tuple[IPv4Network, ...] = ()
    allow_internet_access: bool = True

    @classmethod
    def parse(
        cls,
        allowed_cidrs: Iterable[str] = (),
        denied_cidrs: Iterable[str] = (),
        allow_internet_access: bool = True,
    ) -> EgressPolicy:
        """The policy from the strings an API request carries; UsageError names a bad entry."""
        return cls(
            allowed_cidrs=tuple(parse_cidr(text, "allowed_cidrs") for text in allowed_cidrs),
            denied_cidrs=tuple(parse_cidr(text, "denied_cidrs") for text in denied_cidrs),
            allow_internet_access=allow_internet_access,
        )


DEFAULT_EGRESS = EgressPolicy()
