#!/bin/bash
# nat-ha bootstrap: what each NAT instance runs at first boot (CloudFormation user data).
# Log: /var/log/cloud-init-output.log. deploy/cloudformation/generate.py embeds this file in both
# templates as an Fn::Sub string: CloudFormation fills in the values of the first block (so the
# script's own shell expansions never use dollar-brace). The units and the egress helper come from
# the installed bundle (nat-ha files), byte for byte as in deploy/.
# tests/systemd/test_bootstrap.py runs the embedded text in a container with a real systemd.
#
# It installs the bundle the stack names (NatHaArtifact) only if its sha256 is NatHaArtifactSha256,
# with pip's hash-checking mode and no package index; sets the host up as a NAT; starts the agent;
# waits for its first healthy cycle as its peers see it; then signals SUCCESS to this NAT's Auto
# Scaling group (the creation policy and the rolling update wait for it). Any step that fails
# signals FAILURE at once (the ERR trap), so the stack fails instead of reporting a broken NAT.
set -Eeuxo pipefail

NAT_HA_GROUP='${NatHaGroup}'
REGION='${AWS::Region}'
STACK='${AWS::StackName}'
TABLE='${Table}'
ARTIFACT='${NatHaArtifact}'
ARTIFACT_SHA256='${NatHaArtifactSha256}'
METRICS_LISTEN='${MetricsListen}'
EGRESS_IP='${EgressIp}'
EGRESS_TABLES='${EgressTables}'
NAT_SUBNETS='${NatSubnets}'
NAT_EIPS='${NatEips}'
CONNTRACK_SYNC='${ConntrackSync}'
CTSYNC_KEY_SECRET='${CtsyncKeySecret}'

# Two variables, unset on EC2, let the same text run elsewhere (the systemd lab):
# NAT_HA_SKIP_PACKAGES=1: Python 3.11 and nftables are already installed (the lab's Debian image
# has python3.11, python3.11-venv and nftables; it has no dnf). The artifact may also be a file://
# URL there (the lab's release bundle, read-only in the container).
SKIP_PACKAGES=$(printenv NAT_HA_SKIP_PACKAGES || true)
BUNDLE=/opt/nat-ha-bundle
STEP="start"

# Which Auto Scaling group this instance is in: NatGroupN for the N-th subnet of NAT_SUBNETS.
# Only for a failure before nat-ha is installed (nat-ha signal does this itself afterwards), with
# the AWS CLI and curl of Amazon Linux 2023.
cli_signal() {
    local token mac subnet n=0 s
    token=$(curl -sf -m 2 -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
    mac=$(curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/mac)
    subnet=$(curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" \
        "http://169.254.169.254/latest/meta-data/network/interfaces/macs/$mac/subnet-id")
    for s in $(echo "$NAT_SUBNETS" | tr , " "); do n=$((n + 1)); [ "$s" = "$subnet" ] && break; done
    aws cloudformation signal-resource --region "$REGION" --stack-name "$STACK" --logical-resource-id "NatGroup$n" \
        --unique-id "$(curl -sf -m 2 -H "X-aws-ec2-metadata-token: $token" \
            http://169.254.169.254/latest/meta-data/instance-id)" --status "$1"
}

signal() {
    if [ -x /opt/nat-ha/bin/nat-ha ]; then
        /opt/nat-ha/bin/nat-ha signal --stack "$STACK" --region "$REGION" --resource-prefix NatGroup \
            --subnets "$NAT_SUBNETS" --status "$1" --reason "$2"
    elif command -v aws >/dev/null && command -v curl >/dev/null; then
        cli_signal "$1"
    else
        echo "nat-ha bootstrap: cannot signal $1 (nat-ha not installed, no AWS CLI): the stack times out instead"
        return 1
    fi
}

failed() {
    local rc=$?
    trap - ERR
    echo "nat-ha bootstrap: FAILED at step '$STEP' (exit $rc)"
    signal FAILURE "bootstrap failed at step $STEP (exit $rc)" || true
    exit "$rc"
}
trap failed ERR

STEP="packages"
if [ "$SKIP_PACKAGES" = 1 ]; then
    echo "nat-ha bootstrap: package step skipped (NAT_HA_SKIP_PACKAGES=1)"
else
    dnf install -y python3.11 nftables
    if [ "$CONNTRACK_SYNC" = on ]; then dnf install -y conntrack-tools; fi
fi

STEP="download"
rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
case "$ARTIFACT" in
    s3://*) aws s3 cp --only-show-errors --region "$REGION" "$ARTIFACT" "$BUNDLE/bundle.tar.gz" ;;
    *) python3.11 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$ARTIFACT" "$BUNDLE/bundle.tar.gz" ;;
esac

STEP="verify"
echo "$ARTIFACT_SHA256  $BUNDLE/bundle.tar.gz" | sha256sum --check --strict -

STEP="install"
tar -xzf "$BUNDLE/bundle.tar.gz" -C "$BUNDLE" --no-same-owner requirements.lock wheels
python3.11 -m venv /opt/nat-ha
/opt/nat-ha/bin/pip install --no-index --find-links "$BUNDLE/wheels" --require-hashes --only-binary=:all: \
    -r "$BUNDLE/requirements.lock"
ln -sf /opt/nat-ha/bin/nat-ha /usr/local/bin/nat-ha
FILES=$(/opt/nat-ha/bin/nat-ha files)  # the deploy files of the bundle just installed

STEP="config"
mkdir -p /etc/nat-ha
if [ -e /etc/nat-ha/config.toml ]; then
    echo "nat-ha bootstrap: keeping the existing /etc/nat-ha/config.toml"
else
    cat > /etc/nat-ha/config.toml.new <<CONFIG
group = "$NAT_HA_GROUP"
region = "$REGION"
members_from_tags = true
egress_ip = "$EGRESS_IP"

[store]
table = "$TABLE"

[metrics]
listen = "$METRICS_LISTEN"
CONFIG
    # EgressIp=follow: each route table's Elastic IP follows it. This NAT's [[egress.tables]] entries
    # (with its own address for each table; the agent derives its peers' from EC2) come from the helper.
    if [ "$EGRESS_IP" = follow ]; then
        /opt/nat-ha/bin/python "$FILES/bootstrap/egress_config.py" /etc/nat-ha/config.toml.new "$EGRESS_TABLES"
    fi
    # ConntrackSync=on: established flows follow their table (nat-ha-ctsync.service, its key below).
    if [ "$CONNTRACK_SYNC" = on ]; then
        printf '\n[conntrack_sync]\nenabled = true\n' >> /etc/nat-ha/config.toml.new
    fi
    chmod 0644 /etc/nat-ha/config.toml.new
    mv /etc/nat-ha/config.toml.new /etc/nat-ha/config.toml
fi

STEP="ctsync-key"
# The group key, generated by the stack in Secrets Manager (only the NATs' role may read it); mode 0600.
if [ "$CONNTRACK_SYNC" = on ] && [ ! -s /etc/nat-ha/ctsync.key ]; then
    (umask 077 && aws secretsmanager get-secret-value --region "$REGION" --secret-id "$CTSYNC_KEY_SECRET" \
        --query SecretString --output text > /etc/nat-ha/ctsync.key.new)
    mv /etc/nat-ha/ctsync.key.new /etc/nat-ha/ctsync.key
fi

STEP="units"
install -m 0644 "$FILES/systemd/nat-ha-setup.service" "$FILES/systemd/nat-ha.service" \
    "$FILES/systemd/nat-ha-ctsync.service" /etc/systemd/system/

STEP="setup-nat"
/opt/nat-ha/bin/nat-ha setup-nat

STEP="elastic-ip"
if [ "$EGRESS_IP" != follow ] && [ -n "$NAT_EIPS" ]; then
    /opt/nat-ha/bin/nat-ha claim-address --region "$REGION" --allocation-ids "$NAT_EIPS" --subnets "$NAT_SUBNETS"
fi

STEP="start"
systemctl daemon-reload
if [ "$CONNTRACK_SYNC" = on ]; then systemctl enable --now nat-ha-ctsync.service; fi
systemctl enable --now nat-ha-setup.service nat-ha.service

STEP="healthy"
/opt/nat-ha/bin/nat-ha wait-healthy --timeout 600

STEP="signal"
signal SUCCESS "setup-nat done, units running, the agent healthy"
echo "nat-ha bootstrap: done"
