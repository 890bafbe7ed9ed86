"""Where ``mmgen-edge serve`` listens, without starting Triton: gRPC and metrics always, HTTP only when asked.

In the Triton release PyTriton 0.7 bundles, a malformed HTTP request can stop the whole server before mmgen-edge
sees it (tests/test_serve.py checks on a real server that nothing listens on the HTTP port by default).
"""

from __future__ import annotations

import pytest

from mmgen_edge import cli
from mmgen_edge.serve.server import HTTP_WARNING, Server, ServerOptions, triton_endpoints


def test_http_is_off_unless_asked_for():
    default = ServerOptions(grpc_port=9001, metrics_port=9002)
    assert triton_endpoints(default) == {
        "allow_http": False, "grpc_address": "127.0.0.1", "grpc_port": 9001, "metrics_address": "127.0.0.1",
        "metrics_port": 9002,
    }  # fmt: skip
    with_http = ServerOptions(http=True, http_port=9000, grpc_port=9001, metrics_port=9002)
    endpoints = triton_endpoints(with_http)
    assert endpoints["allow_http"] is True and (endpoints["http_address"], endpoints["http_port"]) == ("127.0.0.1", 9000)
    assert "stop the whole server" in HTTP_WARNING and "gzip" in HTTP_WARNING


def test_a_server_without_http_has_no_http_url(tmp_path):
    server = Server(tmp_path, grpc_port=9001, metrics_port=9002)
    assert set(server.bind_urls()) == {"grpc", "metrics"}
    with pytest.raises(RuntimeError, match="no HTTP front end: start it with http=True"):
        server.http_url
    server = Server(tmp_path, http=True, http_port=9000, grpc_port=9001, metrics_port=9002)
    assert server.bind_urls()["http"] == "http://127.0.0.1:9000" == server.http_url


def test_the_cli_serves_http_only_with_the_flag():
    parse = cli.build_parser("serve").parse_args
    assert parse(["serve"]).http is False and parse(["serve", "--http"]).http is True
