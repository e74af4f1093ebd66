"""A sandbox's network: the API's ``SandboxNetworkConfig`` checked, and the node's messages made of it.

What a sandbox keeps is the config as the API received it (``SandboxSpec.network``), so a
resume rebuilds the same egress and ingress and ``GET /sandboxes/{id}`` can show it back (the
egress proxy's password never). The node messages follow the original's ``create_instance.go``:

* ``allowOut`` entries that are addresses or CIDRs become ``allowed_cidrs``, the others
  (domain names) ``allowed_domains``, with the default nameserver allowed when domains are;
* ``denyOut`` (addresses or CIDRs only) becomes ``denied_cidrs``; ``allow_internet_access``
  false replaces it with ``0.0.0.0/0``;
* ingress: the traffic access token when ``allowPublicTraffic`` is false, ``maskRequestHost``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from ember.api.errors import bad_request
from ember.api.requests import Body
from ember.rpc import orchestrator_pb2
from ember.traffic.routing import ENVD_PORT

DEFAULT_NAMESERVER = "8.8.8.8/32"
ALL_TRAFFIC = "0.0.0.0/0"
MAX_HTTPS_PORTS = 128


def _cidr(entry: str) -> str | None:
    """``entry`` as a CIDR (a bare address becomes /32 or /128), or None for a domain name."""
    try:
        return str(ipaddress.ip_network(entry, strict=False))
    except ValueError:
        return None


def _egress_proxy(body: Body) -> dict[str, Any]:
    proxy: dict[str, Any] = {"address": body.text("address", required=True)}
    for name in ("username", "password"):
        value = body.text(name)
        if value is not None:
            proxy[name] = value
    tls = body.child("tls")
    if tls is not None:
        enabled = tls.flag("enabled", required=True)
        tls_out: dict[str, Any] = {"enabled": enabled}
        server_name = tls.text("serverName")
        if server_name is not None:
            tls_out["serverName"] = server_name
        proxy["tls"] = tls_out
    return proxy


def _rules(body: Body, name: str) -> dict[str, Any] | None:
    rules = body.child(name)
    if rules is None:
        return None
    checked: dict[str, Any] = {}
    for domain in rules.data:
        entries = rules.array(domain) or []
        checked_entries = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise bad_request(f'Invalid request body: "{name}.{domain}[{index}]" must be an object')
            rule = Body(entry, f"{name}.{domain}[{index}].")
            transform = rule.child("transform")
            checked_rule: dict[str, Any] = {}
            if transform is not None:
                headers = transform.text_map("headers")
                checked_rule["transform"] = {"headers": headers} if headers is not None else {}
            checked_entries.append(checked_rule)
        checked[domain] = checked_entries
    return checked


def _egress_fields(body: Body, into: dict[str, Any]) -> None:
    """The egress fields both the create config and the update carry."""
    allow_out = body.texts("allowOut")
    if allow_out is not None:
        into["allowOut"] = allow_out
    deny_out = body.texts("denyOut")
    if deny_out is not None:
        for entry in deny_out:
            if _cidr(entry) is None:
                raise bad_request(
                    f'Invalid request body: denyOut entry "{entry}" is not an IP address or CIDR'
                )
        into["denyOut"] = deny_out
    dns = body.texts("dnsServers")
    if dns is not None:
        into["dnsServers"] = dns
    if "egressProxy" in body:
        proxy = body.child("egressProxy")
        into["egressProxy"] = _egress_proxy(proxy) if proxy is not None else None
    rules = _rules(body, "rules")
    if rules is not None:
        into["rules"] = rules


def parse_network(body: Body | None) -> dict[str, Any]:
    """The create request's ``network``, checked; ``{}`` when absent."""
    if body is None:
        return {}
    network: dict[str, Any] = {}
    public = body.flag("allowPublicTraffic")
    if public is not None:
        network["allowPublicTraffic"] = public
    _egress_fields(body, network)
    mask = body.text("maskRequestHost")
    if mask is not None:
        network["maskRequestHost"] = mask
    ports = body.integers("httpsPorts")
    if ports is not None:
        if len(ports) > MAX_HTTPS_PORTS:
            raise bad_request(f"Invalid request body: httpsPorts holds more than {MAX_HTTPS_PORTS} ports")
        for port in ports:
            if not 1 <= port <= 65535 or port == ENVD_PORT:
                raise bad_request(
                    f"Invalid request body: httpsPorts entry {port} must be 1-65535 and not {ENVD_PORT}"
                )
        network["httpsPorts"] = ports
    return network


def parse_update(body: Body) -> tuple[dict[str, Any], bool | None]:
    """``PUT /sandboxes/{id}/network``: the egress fields given, and ``allow_internet_access``."""
    update: dict[str, Any] = {}
    _egress_fields(body, update)
    return update, body.flag("allow_internet_access")


def public_view(network: Mapping[str, Any]) -> dict[str, Any]:
    """The config as answers show it: everything but the egress proxy's password."""
    shown = dict(network)
    proxy = shown.get("egressProxy")
    if isinstance(proxy, Mapping):
        shown["egressProxy"] = {k: v for k, v in proxy.items() if k != "password"}
    return shown


def egress_config(
    network: Mapping[str, Any], allow_internet_access: bool | None
) -> orchestrator_pb2.SandboxNetworkEgressConfig:
    egress = orchestrator_pb2.SandboxNetworkEgressConfig()
    for entry in network.get("allowOut") or ():
        cidr = _cidr(entry)
        if cidr is None:
            egress.allowed_domains.append(entry)
        else:
            egress.allowed_cidrs.append(cidr)
    if egress.allowed_domains and DEFAULT_NAMESERVER not in egress.allowed_cidrs:
        egress.allowed_cidrs.append(DEFAULT_NAMESERVER)
    if allow_internet_access is False:
        egress.denied_cidrs.append(ALL_TRAFFIC)
    else:
        egress.denied_cidrs.extend(str(_cidr(entry)) for entry in network.get("denyOut") or ())
    for domain, rules in (network.get("rules") or {}).items():
        domain_rules = egress.rules[domain]
        for rule in rules:
            message = domain_rules.rules.add()
            transform = rule.get("transform")
            if transform is not None:
                message.transform.headers.update(transform.get("headers") or {})
    proxy = network.get("egressProxy")
    if isinstance(proxy, Mapping):
        egress.egress_proxy_address = str(proxy.get("address", ""))
        egress.egress_proxy_username = str(proxy.get("username", ""))
        egress.egress_proxy_password = str(proxy.get("password", ""))
    return egress


def network_config(
    network: Mapping[str, Any], allow_internet_access: bool | None, traffic_token: str | None
) -> orchestrator_pb2.SandboxNetworkConfig:
    config = orchestrator_pb2.SandboxNetworkConfig(egress=egress_config(network, allow_internet_access))
    ingress = orchestrator_pb2.SandboxNetworkIngressConfig()
    if traffic_token is not None:
        ingress.traffic_access_token = traffic_token
    mask = network.get("maskRequestHost")
    if isinstance(mask, str):
        ingress.mask_request_host = mask
    config.ingress.CopyFrom(ingress)
    return config
