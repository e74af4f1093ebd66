"""Which sandbox and port a request is for, and which envd paths a sandbox URL may not reach."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from ember.traffic.routing import (
    ENVD_PORT,
    INVALID_HOST,
    INVALID_SANDBOX_ID,
    INVALID_SANDBOX_PORT,
    MISSING_HEADER,
    Route,
    RouteError,
    clean_path,
    is_envd_control_route,
    route_request,
)

DOMAIN = "e2b.example"


def _headers(sandbox_id: str | None = None, port: str | None = None) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    if sandbox_id is not None:
        headers["e2b-sandbox-id"] = sandbox_id
    if port is not None:
        headers["E2B-SANDBOX-PORT"] = port
    return headers


def _refusal(host: str, headers: CIMultiDict[str], domain: str | None = DOMAIN) -> str:
    with pytest.raises(RouteError) as caught:
        route_request(host, headers, domain)
    return caught.value.message


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:5007", "127.0.0.1", "127.0.0.1:5007", "10.0.0.7", "[::1]:5007", "::1",
     f"sandbox.{DOMAIN}", f"sandbox.{DOMAIN}:443", f"SANDBOX.{DOMAIN.upper()}"],
)  # fmt: skip
def test_headers_route_when_the_host_names_no_sandbox(host: str) -> None:
    assert route_request(host, _headers("abc123", "8080"), DOMAIN) == Route("abc123", 8080)


def test_host_parsing_takes_port_then_id_from_the_first_label() -> None:
    assert route_request(f"49983-abc123.{DOMAIN}", _headers(), DOMAIN) == Route("abc123", ENVD_PORT)
    assert route_request(f"3000-abc123.{DOMAIN}:443", _headers(), DOMAIN) == Route("abc123", 3000)


def test_host_parsing_ignores_a_trailing_client_id() -> None:
    assert route_request(f"3000-abc123-clientid.{DOMAIN}", _headers(), None) == Route("abc123", 3000)


def test_a_sandbox_host_wins_over_headers() -> None:
    assert route_request(f"3000-abc123.{DOMAIN}", _headers("other", "1"), DOMAIN) == Route("abc123", 3000)


def test_sandbox_dot_domain_is_a_sandbox_host_when_no_domain_is_configured() -> None:
    # "sandbox" has no "-": parsed as a host, it names no port and no id.
    assert _refusal(f"sandbox.{DOMAIN}", _headers("abc123", "8080"), domain=None) == INVALID_HOST
    assert _refusal(f"sandbox.{DOMAIN}", _headers("abc123", "8080"), domain="") == INVALID_HOST


def test_the_headers_are_ignored_on_a_host_under_another_domain() -> None:
    assert _refusal("sandbox.other.example", _headers("abc123", "8080")) == INVALID_HOST


@pytest.mark.parametrize("headers", [_headers("abc123", None), _headers(None, "8080")])
def test_one_header_alone_is_a_missing_header(headers: CIMultiDict[str]) -> None:
    assert _refusal("localhost", headers) == MISSING_HEADER


@pytest.mark.parametrize("port", ["http", "", "80.5", "0x50", "65536", "-1", " 80"])
def test_a_header_port_that_is_not_a_port_number(port: str) -> None:
    assert _refusal("127.0.0.1", _headers("abc123", port)) == INVALID_SANDBOX_PORT


@pytest.mark.parametrize("port", ["http", "", "0x50", "65536", "+"])
def test_a_host_port_that_is_not_a_port_number(port: str) -> None:
    assert _refusal(f"{port}-abc123.{DOMAIN}", _headers()) == INVALID_SANDBOX_PORT


def test_a_port_with_a_sign_is_an_integer_as_go_reads_it() -> None:
    assert route_request("localhost", _headers("abc123", "+80"), DOMAIN) == Route("abc123", 80)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "3000-abc123", "abc123.e2b.example", DOMAIN])
def test_a_host_without_a_dot_or_a_dash_is_invalid(host: str) -> None:
    assert _refusal(host, _headers()) == INVALID_HOST


@pytest.mark.parametrize("sandbox_id", ["ABC123", "abc_123", "", "ab.c", "ab c", "ábc"])
def test_a_sandbox_id_outside_lowercase_letters_and_digits(sandbox_id: str) -> None:
    assert _refusal("localhost", _headers(sandbox_id, "8080")) == INVALID_SANDBOX_ID


def test_a_bad_id_in_the_host_is_invalid() -> None:
    assert _refusal(f"3000-ABC.{DOMAIN}", _headers()) == INVALID_SANDBOX_ID
    assert _refusal(f"3000-.{DOMAIN}", _headers()) == INVALID_SANDBOX_ID


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [("", "."), ("/", "/"), ("//", "/"), ("/init", "/init"), ("/init/", "/init"), ("//init", "/init"),
     ("/a/../init", "/init"), ("/../init", "/init"), ("/./init/.", "/init"), ("/a/b/../../c//d/", "/c/d"),
     ("a/../../b", "../b"), ("a/..", "."), ("/a/b/..", "/a")],
)  # fmt: skip
def test_clean_path_matches_go(path: str, cleaned: str) -> None:
    assert clean_path(path) == cleaned


@pytest.mark.parametrize(
    "raw_path",
    ["/init", "/init/", "//init", "/%69nit", "/a/../init", "/./init", "/upgrade", "/freeze", "/unfreeze",
     "/fsfreeze", "/fsthaw", "/collapse", "/%2Finit", "/x/%2E%2E/init"],
)  # fmt: skip
def test_envd_control_routes_in_every_spelling(raw_path: str) -> None:
    assert is_envd_control_route(Route("abc123", ENVD_PORT), raw_path)


@pytest.mark.parametrize(
    "raw_path", ["/health", "/files", "/init/x", "/initx", "/INIT", "/", "/process.Process/Start"]
)
def test_other_envd_paths_are_open(raw_path: str) -> None:
    assert not is_envd_control_route(Route("abc123", ENVD_PORT), raw_path)


def test_control_paths_on_other_ports_belong_to_the_sandbox() -> None:
    assert not is_envd_control_route(Route("abc123", 3000), "/init")
