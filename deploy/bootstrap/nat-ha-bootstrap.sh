#!/bin/bash
# nat-ha bootstrap: what each NAT instance runs at first boot (CloudFormation user data).
# Log: /var/log/cloud-init-output.log. deploy/cloudformation/generate.py embeds this file in both
# templates as an Fn::Sub string: CloudFormation fills in the values of the first block, the
# two unit markers become deploy/systemd/*.service and the egress marker (below, in the EGRESS
# here-document) becomes deploy/bootstrap/egress_config.py, byte for byte.
# tests/systemd/test_bootstrap.py runs the embedded text in a container with a real systemd.
set -euxo pipefail

NAT_HA_GROUP='${NatHaGroup}'
REGION='${AWS::Region}'
TABLE='${Table}'
PIP_SPEC='${PipSpec}'
VERSION='${NatHaVersion}'
METRICS_LISTEN='${MetricsListen}'
EGRESS_IP='${EgressIp}'
EGRESS_TABLES='${EgressTables}'

# Where nat-ha comes from: PyPI (nat-ha==VERSION, or PIP_SPEC: a wheel URL, git+https://...).
# NAT_HA_FIND_LINKS in the environment (unset on EC2): a local wheel directory or URL; pip
# then installs from there only (--no-index), as the lab does (its containers have no network).
FIND_LINKS=$(printenv NAT_HA_FIND_LINKS || true)
# NAT_HA_SKIP_PACKAGES=1 in the environment (unset on EC2): Python 3.11 and nftables are already
# installed (the lab's Debian image has python3.11, python3.11-venv and nftables; it has no dnf).
SKIP_PACKAGES=$(printenv NAT_HA_SKIP_PACKAGES || true)

if [ "$SKIP_PACKAGES" = 1 ]; then
    echo "nat-ha bootstrap: package step skipped (NAT_HA_SKIP_PACKAGES=1)"
else
    dnf install -y python3.11 nftables
fi
python3.11 -m venv /opt/nat-ha
PIP_OPTS=()
if [ -n "$FIND_LINKS" ]; then PIP_OPTS=(--no-index --find-links "$FIND_LINKS"); fi
/opt/nat-ha/bin/pip install --quiet "${!PIP_OPTS[@]}" --upgrade pip
if [ -z "$PIP_SPEC" ]; then PIP_SPEC="nat-ha==$VERSION"; fi
/opt/nat-ha/bin/pip install "${!PIP_OPTS[@]}" "$PIP_SPEC"
ln -sf /opt/nat-ha/bin/nat-ha /usr/local/bin/nat-ha
mkdir -p /etc/nat-ha
cat > /etc/nat-ha/config.toml <<CONFIG
group = "$NAT_HA_GROUP"
region = "$REGION"
members_from_tags = true
egress_ip = "$EGRESS_IP"

[store]
table = "$TABLE"

[metrics]
listen = "$METRICS_LISTEN"
CONFIG
chmod 0644 /etc/nat-ha/config.toml
# EgressIp=follow: each route table's Elastic IP follows it. This NAT's id and the [[egress.tables]]
# (every NAT's secondary address for every table) are known only once the NATs run: the helper
# waits for them (DescribeInstances, at most 15 min) and adds them to the config.
if [ "$EGRESS_IP" = follow ]; then
    cat > /opt/nat-ha/egress_config.py <<'EGRESS'
__EGRESS_CONFIG__EGRESS
    /opt/nat-ha/bin/python /opt/nat-ha/egress_config.py /etc/nat-ha/config.toml "$EGRESS_TABLES" "$NAT_HA_GROUP" "$REGION"
fi
cat > /etc/systemd/system/nat-ha-setup.service <<'UNIT'
__SETUP_UNIT__UNIT
cat > /etc/systemd/system/nat-ha.service <<'UNIT'
__UNIT__UNIT
/opt/nat-ha/bin/nat-ha setup-nat
systemctl daemon-reload
systemctl enable --now nat-ha-setup.service nat-ha.service
