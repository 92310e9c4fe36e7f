"""bench/cost.py: the cost table adds up, and the stacks provision the DynamoDB capacity it assumes."""

from __future__ import annotations

import json
from pathlib import Path

from bench import cost
from tests.integration.test_cloudformation import load


def test_the_stacks_provision_what_the_cost_table_counts() -> None:
    assert cost.capacity(3) == (13, 7) and cost.capacity(2) == (9, 5)
    for name in ("nat-ha-vpc.yaml", "nat-ha-existing-vpc.yaml"):
        throughput = load(name)["Resources"]["Table"]["Properties"]["ProvisionedThroughput"]["Fn::If"][1]
        auto = {k: throughput[k]["Fn::If"][1]["Fn::If"][1:] for k in ("ReadCapacityUnits", "WriteCapacityUnits")}
        assert auto == {"ReadCapacityUnits": [13, 9], "WriteCapacityUnits": [7, 5]}


def test_totals_and_break_even(tmp_path: Path) -> None:
    rows = cost.table(3, "t4g.nano", 1000.0, 2.0, 12)
    assert round(sum(r.nat_gateway for r in rows), 2) == round(3 * 730 * (0.045 + 0.005) + 45.0, 2)
    assert sum(r.nat_ha for r in rows) < sum(r.nat_gateway for r in rows)
    assert cost.break_even_gb(3, "t4g.nano") == 0.0  # cheaper with no traffic at all
    big = cost.break_even_gb(3, "c7gn.medium")
    at = cost.table(3, "c7gn.medium", big, 0.0, 0)
    fixed = {k: sum(getattr(r, k) for r in at) for k in ("nat_ha", "nat_gateway")}
    assert abs(fixed["nat_ha"] - fixed["nat_gateway"]) < 0.01  # equal at the break-even traffic
    assert round(cost.sustained_tb(1.0), 1) == 328.5  # 1 Gbit/s all month
    assert cost.main(["--json", str(tmp_path / "c.json")]) == 0
    assert set(json.loads((tmp_path / "c.json").read_text())) == {"prices", "rows", "total", "break_even_gb",
                                                                  "bandwidth_gbit_s"}  # fmt: skip
    assert cost.main(["--gb", "-1"]) == 2
