"""The trimmed AWS service models (agent/aws/models.py): complete for nat-ha's calls, and used."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.aws import calls as awscalls
from agent.aws import models as awsmodels

REGION = "us-east-1"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")  # written once (in a child process), reused by the tests


@pytest.fixture
def trimmed_session(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh shared session whose trimmed models are under ``models_dir``."""
    pytest.importorskip("moto")  # before the session exists: moto's mock_aws hooks sessions made after import
    monkeypatch.setenv(awsmodels.CACHE_ENV, str(models_dir))
    monkeypatch.delenv(awsmodels.FULL_ENV, raising=False)
    awsmodels.botocore_session.cache_clear()
    try:
        yield awsmodels.botocore_session()
    finally:
        awsmodels.botocore_session.cache_clear()  # other tests get a session of their own


def test_trimmed_operations_are_every_listed_call() -> None:
    ops = awsmodels.trimmed_operations()
    trimmed = {(s, op) for s, op in awscalls.ALL_CALLS if s in awsmodels.SERVICES}  # the others use full models
    assert {(s, op) for s, names in ops.items() for op in names} == trimmed
    assert {op for s, op in awscalls.AGENT_CALLS if s == "ec2"} <= ops["ec2"]


def test_trim_model_keeps_reachable_shapes_only() -> None:
    import botocore.loaders

    full = botocore.loaders.create_loader().load_service_model("ec2", "service-2")
    small = awsmodels.trim_model(full, ["ReplaceRoute"])
    assert set(small["operations"]) == {"ReplaceRoute"}
    assert "ReplaceRouteRequest" in small["shapes"]
    assert "DescribeInstancesResult" not in small["shapes"]
    assert "documentation" not in json.dumps(small)
    with pytest.raises(KeyError):
        awsmodels.trim_model(full, ["NoSuchOperation"])


def test_clients_load_the_trimmed_models(trimmed_session: Any, models_dir: Path) -> None:
    from agent.aws.ec2 import make_client

    files = sorted(p.relative_to(models_dir).parts[1:] for p in models_dir.rglob("service-2.json"))
    assert [f[0] for f in files] == ["dynamodb", "ec2"]
    ec2 = make_client("ec2", REGION, "http://127.0.0.1:9", 1.0, 1)
    expected = {op for s, op in awscalls.ALL_CALLS if s == "ec2"}
    assert set(ec2.meta.service_model.operation_names) == expected
    dynamodb = trimmed_session.create_client("dynamodb", region_name=REGION)
    assert set(dynamodb.meta.service_model.operation_names) == {op for s, op in awscalls.ALL_CALLS if s == "dynamodb"}
    # Endpoint resolution still comes from botocore's own data (rule sets, endpoints.json).
    real = trimmed_session.create_client("ec2", region_name="eu-west-1")
    assert real.meta.endpoint_url == "https://ec2.eu-west-1.amazonaws.com"


def test_full_models_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(awsmodels.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(awsmodels.FULL_ENV, "1")
    awsmodels.botocore_session.cache_clear()
    try:
        client = awsmodels.botocore_session().create_client("ec2", region_name=REGION)
        assert "RunInstances" in client.meta.service_model.operation_names
        assert not list(tmp_path.iterdir())
    finally:
        awsmodels.botocore_session.cache_clear()


def test_every_call_works_on_moto_with_the_trimmed_models(trimmed_session: Any) -> None:
    """Every operation nat-ha uses, through its real adapters and the shared trimmed session."""
    import time

    import botocore.session
    import moto

    from agent.aws.ec2 import Ec2
    from agent.aws.fence import Fence, FenceTiming
    from coordinator.dynamo import DynamoSettings, DynamoStore, init_table
    from coordinator.store import Expect

    with moto.mock_aws():
        settings = DynamoSettings(table="nat-ha-models", region=REGION, connect_timeout_s=5, read_timeout_s=5)
        init_table(settings, wait_s=10)  # CreateTable, DescribeTable, UpdateTimeToLive
        store = DynamoStore(settings, session=trimmed_session)
        assert store.model._get_connection().connection.session is trimmed_session
        store.put_item("g", {"item": "member#i-1", "kind": "member"}, Expect.item_absent())
        assert store.get_item("g", "member#i-1") is not None
        assert [r["item"] for r in store.query_group("g")] == ["member#i-1"]

        # The world is built with botocore's full model (RunInstances etc. are not in ours).
        raw = botocore.session.get_session().create_client("ec2", region_name=REGION)
        vpc = raw.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = raw.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        image = raw.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "nat-ha:group", "Value": "g"}]}]
        insts = raw.run_instances(ImageId=image, MinCount=2, MaxCount=2, SubnetId=subnet, TagSpecifications=tags)
        a, b = sorted(i["InstanceId"] for i in insts["Instances"])
        rtb = raw.create_route_table(
            VpcId=vpc,
            TagSpecifications=[
                {
                    "ResourceType": "route-table",
                    "Tags": [{"Key": "nat-ha:group", "Value": "g"}, {"Key": "nat-ha:home", "Value": a}],
                }
            ],
        )["RouteTable"]["RouteTableId"]

        ec2 = Ec2(REGION, timeout=5, fence=Fence(lambda: 60.0, time.monotonic, FenceTiming(5.0)))
        assert ec2.client.meta.service_model.operation_names == sorted(
            op for s, op in awscalls.AGENT_CALLS if s == "ec2"
        )
        found = ec2.discover("g").members  # DescribeInstances (filters), DescribeRouteTables (filters)
        assert {m.instance_id for m in found} == {a, b}
        assert next(m for m in found if m.instance_id == a).route_tables == (rtb,)
        ec2.tag_holder(rtb, f"arn:aws:ec2:{REGION}:123456789012:instance/{a}")  # CreateTags
        assert ec2.point_route(rtb, a, missing=True) == "created"  # CreateRoute
        assert ec2.point_route(rtb, b) == "replaced"  # ReplaceRoute
        ec2.members = {m.instance_id: m for m in found}
        assert ec2.routes([rtb])[rtb].target == b  # DescribeRouteTables (ids)
        assert ec2.instance_states([a, b]) == {a: "running", b: "running"}  # DescribeInstances (ids)
        ec2.stop(b)  # StopInstances
        assert ec2.instance_states([b])[b] in ("stopping", "stopped")
        ec2.start(b)  # StartInstances
        assert ec2.instance_states([b])[b] in ("pending", "running")


@functools.lru_cache(maxsize=1)
def _full_session() -> Any:
    import botocore.session

    return botocore.session.get_session()  # botocore's own data only, loaded once for all cases


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1"])
@pytest.mark.parametrize("variant", [{}, {"use_fips_endpoint": True}, {"use_dualstack_endpoint": True}])
def test_trimmed_endpoints_resolve_like_botocore(trimmed_session: Any, region: str, variant: dict[str, bool]) -> None:
    """The trimmed endpoints.json gives every client the endpoint the full one gives."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    full = _full_session()
    for service in ("ec2", "dynamodb", "sts"):

        def url(session: Any, service: str = service) -> str:
            try:
                client = session.create_client(service, region_name=region, config=Config(**variant))
                return str(client.meta.endpoint_url)
            except BotoCoreError as exc:  # e.g. no dual-stack endpoint there: must fail alike
                return type(exc).__name__

        assert url(trimmed_session) == url(full), (service, region, variant)
