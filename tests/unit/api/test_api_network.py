"""The create request's network config, and the egress/ingress messages the node receives."""

from __future__ import annotations

import pytest

from ember.api.errors import ApiError
from ember.api.network import (
    ALL_TRAFFIC,
    DEFAULT_NAMESERVER,
    egress_config,
    network_config,
    parse_network,
    public_view,
)
from ember.api.requests import Body


def test_allow_out_splits_into_cidrs_and_domains_with_the_nameserver() -> None:
    network = parse_network(
        Body({"allowOut": ["1.2.3.4", "10.0.0.0/8", "example.com"], "denyOut": ["0.0.0.0/0"]})
    )
    egress = egress_config(network, None)
    assert list(egress.allowed_cidrs) == ["1.2.3.4/32", "10.0.0.0/8", DEFAULT_NAMESERVER]
    assert list(egress.allowed_domains) == ["example.com"]
    assert list(egress.denied_cidrs) == ["0.0.0.0/0"]


def test_no_internet_access_denies_all_traffic() -> None:
    egress = egress_config(parse_network(Body({"denyOut": ["10.0.0.0/8"]})), allow_internet_access=False)
    assert list(egress.denied_cidrs) == [ALL_TRAFFIC]


def test_rules_and_the_egress_proxy_reach_the_node_and_the_password_is_never_shown() -> None:
    body = {
        "rules": {"api.example.com": [{"transform": {"headers": {"Authorization": "x"}}}]},
        "egressProxy": {"address": "proxy:3128", "username": "u", "password": "p", "tls": {"enabled": False}},
    }
    network = parse_network(Body(body))
    egress = egress_config(network, None)
    assert dict(egress.rules["api.example.com"].rules[0].transform.headers) == {"Authorization": "x"}
    assert (egress.egress_proxy_address, egress.egress_proxy_username, egress.egress_proxy_password) == (
        "proxy:3128",
        "u",
        "p",
    )
    assert public_view(network)["egressProxy"] == {
        "address": "proxy:3128",
        "username": "u",
        "tls": {"enabled": False},
    }


def test_ingress_carries_the_traffic_token_and_the_masked_host() -> None:
    config = network_config(parse_network(Body({"maskRequestHost": "app:${PORT}"})), None, "tok")
    assert config.ingress.traffic_access_token == "tok"
    assert config.ingress.mask_request_host == "app:${PORT}"
    assert not network_config({}, None, None).ingress.HasField("traffic_access_token")


@pytest.mark.parametrize(
    "body",
    [
        {"denyOut": ["example.com"]},
        {"httpsPorts": [49983]},
        {"httpsPorts": [0]},
        {"httpsPorts": list(range(1, 130))},
        {"allowPublicTraffic": "no"},
        {"egressProxy": {}},
        {"rules": {"x": ["not-an-object"]}},
    ],
)
def test_bad_network_configs_are_400(body: dict[str, object]) -> None:
    with pytest.raises(ApiError) as caught:
        parse_network(Body(body))
    assert caught.value.status == 400
