"""AWS errors as a user reads them: one short line that names the region, never pynamodb's wrapper or a web page.

The endpoints are real HTTP servers on 127.0.0.1: one answers every call with an nginx-style HTML
page (what a proxy or a wrong endpoint_url gives), moto answers a table that does not exist.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from agent.aws.ec2 import Ec2, Ec2Error
from coordinator.clock import SystemClock
from coordinator.dynamo import DynamoSettings, DynamoStore
from coordinator.errors import StoreConfigError, StoreUnavailable, readable
from coordinator.leases import Coordinator
from tests.servers import threaded_moto_server

PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>"
    b"<hr><center>nginx</center></body></html>"
)


@pytest.fixture(params=[502, 200])
def html_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    status = int(request.param)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_readable_keeps_awss_message_and_drops_the_wrapper() -> None:
    wrapped = (
        "Failed to query items: An error occurred (ResourceNotFoundException) on request (ABC) on table (nat-ha) "
        "when calling the Query operation: Requested resource not found"
    )
    assert readable(wrapped) == "Requested resource not found"
    assert (
        readable("An error occurred (Throttling) when calling the Query operation (reached max retries: 2): Slow")
        == "Slow"
    )
    assert readable(PAGE.decode()) == (
        "the endpoint answered with an HTML page (502 Bad Gateway), not an AWS API response"
    )
    assert readable("a\n  b") == "a b"
    assert len(readable("x" * 1000)) == 200


@pytest.mark.parametrize("botocore_path", [False, True], ids=["lean", "botocore"])
def test_store_errors_from_a_web_page_are_one_line(
    html_endpoint: str, botocore_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAT_HA_DYNAMODB_BOTOCORE", "1" if botocore_path else "")
    store = DynamoStore(
        DynamoSettings(
            table="nat-ha", region="eu-west-1", endpoint_url=html_endpoint, connect_timeout_s=5, read_timeout_s=5
        )
    )
    try:
        Coordinator(store, "g", "i-1", SystemClock(), 1.0).read_group()
    except StoreUnavailable as exc:
        text = str(exc)
    else:  # botocore parses a 200 HTML page as an empty answer: nothing to report
        assert botocore_path
        return
    assert "<" not in text and "\n" not in text, text
    assert "Failed to query items" not in text and "An error occurred" not in text, text
    assert f"DynamoDB table 'nat-ha' in eu-west-1 at {html_endpoint}" in text


def test_ec2_errors_from_a_web_page_are_ec2_errors(html_endpoint: str) -> None:
    """A 200 with an HTML body made botocore raise ResponseParserError, which escaped as a traceback."""
    with pytest.raises(Ec2Error) as caught:
        Ec2("eu-west-1", html_endpoint, timeout=2).routes(["rtb-1"])
    text = str(caught.value)
    assert text.startswith("EC2 describe_route_tables in eu-west-1 failed: ")
    assert "<" not in text and "\n" not in text, text


def test_a_missing_table_names_table_region_and_code() -> None:
    with threaded_moto_server() as url:
        store = DynamoStore(
            DynamoSettings(table="absent", region="us-east-2", endpoint_url=url, connect_timeout_s=5, read_timeout_s=5)
        )
        with pytest.raises(StoreConfigError) as caught:
            Coordinator(store, "g", "i-1", SystemClock(), 1.0).read_group()
    assert caught.value.code == "ResourceNotFoundException"
    assert str(caught.value) == (
        f"DynamoDB table 'absent' in us-east-2 at {url}: ResourceNotFoundException: Requested resource not found"
    )
