# ruff: noqa: E501  (template text is kept on one line per YAML line)
"""Generate the CloudFormation templates from the IAM policies and the systemd units (no drift).

Usage: python deploy/cloudformation/generate.py [--check]
The templates embed deploy/iam/nat-ha-policy.json and nat-ha-asg-policy.json (as Fn::Sub strings)
and, as the user data, deploy/bootstrap/nat-ha-bootstrap.sh (which installs the units from the
bundle it installs). Edit those or this file, then re-run; tests run --check.

Each NAT is an Auto Scaling group of one instance (the fck-nat / alterNAT shape), so a dead instance
is replaced by Auto Scaling and an update replaces one NAT at a time: each group has a creation
policy and a rolling update that wait for the new instance's signal (the bootstrap sends it after
the agent's first healthy cycle), the groups depend on each other in AZ order (CloudFormation
updates one only after the one before it), and a termination lifecycle hook lets the leaving NAT
drain before it goes.
"""

import json
import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT: dict[str, str] = {}
policy = json.loads((REPO / "deploy/iam/nat-ha-policy.json").read_text())
asg_policy = json.loads((REPO / "deploy/iam/nat-ha-asg-policy.json").read_text())


def ind(text, n):
    return textwrap.indent(text, " " * n)


# What only the stacks need: signal this stack (the bootstrap's `nat-ha signal`); SSM is a managed policy.
STACK_STATEMENTS = [
    {
        "Sid": "SignalThisStack",
        "Effect": "Allow",
        "Action": ["cloudformation:SignalResource"],
        "Resource": "arn:${AWS::Partition}:cloudformation:${AWS::Region}:${AWS::AccountId}:stack/${AWS::StackName}/*",
    }
]


def policy_yaml(n, statements=None):
    # every string with ${...} becomes !Sub; the table ARN gets the NatHaTable variable
    out = ["Version: '2012-10-17'", "Statement:"]
    for st in statements or policy["Statement"] + asg_policy["Statement"] + STACK_STATEMENTS:
        out.append(f"  - Sid: {st['Sid']}")
        out.append(f"    Effect: {st['Effect']}")
        out.append("    Action:")
        out += [f"      - {a}" for a in st["Action"]]
        r = st["Resource"]
        if "${NatHaTable}" in r:
            out.append("    Resource: !Sub")
            out.append(f"      - '{r}'")
            out.append("      - NatHaTable: !Ref Table")
        elif "${" in r:
            out.append(f"    Resource: !Sub '{r}'")
        else:
            out.append(f"    Resource: '{r}'")
        if "Condition" in st:
            out.append("    Condition:")
            for op, blk in st["Condition"].items():
                out.append(f"      {op}:")
                for k, v in blk.items():
                    if isinstance(v, list):
                        out.append(f"        {k}:")
                        out += [f"          - '{x}'" for x in v]
                    elif re.search(r"\$\{[^!]", v):
                        out.append(f"        {k}: !Sub '{v}'")
                    else:  # only IAM policy variables (${!x} in Fn::Sub's escape): a plain string
                        out.append(f"        {k}: '{v.replace('${!', '${')}'")
    return ind("\n".join(out) + "\n", n)


user_data = (REPO / "deploy/bootstrap/nat-ha-bootstrap.sh").read_text()
assert "${" not in user_data.split("CTSYNC_KEY_SECRET='${CtsyncKeySecret}'")[1], "bash's own ${...} would be Fn::Sub's: avoid it"


# Instance types the stacks offer, and their architecture: the launch template takes the AMI of it.
ARCH = {
    "arm64": ["t4g.nano", "t4g.micro", "t4g.small", "t4g.medium", "c7gn.medium", "c7gn.large", "c6gn.medium",
              "c6gn.large"],
    "x86_64": ["t3.nano", "t3.micro", "t3.small", "t3.medium", "t3a.nano", "t3a.micro", "t3a.small", "c6in.large",
               "c5n.large"],
}
TWO_ADDRESSES = ["t4g.nano", "t4g.micro", "t3.nano", "t3.micro", "t3a.nano", "t3a.micro"]  # IPv4 per interface
HOOK = "nat-ha-drain"  # agent/aws/lifecycle.py HOOK
# DynamoDB capacity when the table is provisioned and the capacity parameters are 0 (the default):
# bench/cost.py's figure for the stack's agents at the default cadence (1.43 WCU and 2.86 RCU each)
# with half again as headroom, rounded up: 3 agents 7 WCU / 13 RCU, 2 agents 5 / 9.
AUTO_CAPACITY = {"read": (13, 9), "write": (7, 5)}


def nat_group(i, subnet, three, needs=()):
    """AZ i's NAT: an Auto Scaling group of one, created and updated only on its instance's signal.

    ``needs``: what its NAT uses at boot and the template does not reference (its subnet's route).
    Each group depends on the one before: CloudFormation creates and updates them one at a time.
    """
    cond = "    Condition: ThreeAzs\n" if three else ""
    after = [f"NatGroup{i - 1}"] if i > 1 else []
    depends = after + list(needs)
    why = (f"    # One NAT at a time: updated only once NatGroup{i - 1}'s new instance has signalled.\n" if i > 1 else
           "    # The first NAT replaced by an update; the others follow one by one (each depends on the one before).\n")  # fmt: skip
    line = f"    DependsOn: [{', '.join(depends)}]\n" if depends else ""
    return f"""  NatGroup{i}:
    Type: AWS::AutoScaling::AutoScalingGroup
{cond}{why}{line}
    CreationPolicy:
      ResourceSignal:
        Count: 1
        Timeout: PT15M
    UpdatePolicy:
      AutoScalingRollingUpdate:
        MinInstancesInService: 0
        MaxBatchSize: 1
        WaitOnResourceSignals: true
        PauseTime: PT15M
        SuspendProcesses: [HealthCheck, ReplaceUnhealthy, AZRebalance, AlarmNotification, ScheduledActions]
    Properties:
      MinSize: '1'
      MaxSize: '1'
      DesiredCapacity: '1'
      VPCZoneIdentifier:
        - {subnet}
      LaunchTemplate:
        LaunchTemplateId: !Ref NatLaunchTemplate
        Version: !GetAtt NatLaunchTemplate.LatestVersionNumber
      HealthCheckType: EC2
      HealthCheckGracePeriod: 300
      LifecycleHookSpecificationList:
        - LifecycleHookName: {HOOK}
          LifecycleTransition: autoscaling:EC2_INSTANCE_TERMINATING
          HeartbeatTimeout: 300
          DefaultResult: CONTINUE
      Tags:
        - Key: Name
          Value: !Sub '${{NatHaGroup}}-nat-{i}'
          PropagateAtLaunch: true
        - Key: nat-ha:group
          Value: !Ref NatHaGroup
          PropagateAtLaunch: true
        - Key: nat-ha:slot
          Value: nat-{i}
          PropagateAtLaunch: true

"""


def eip(name, cond, label, tag, value):
    """An Elastic IP of the group, created unassociated, tagged with what it belongs to."""
    return f"""  {name}:
    Type: AWS::EC2::EIP
    Condition: {cond}
    Properties:
      Domain: vpc
      Tags:
        - Key: Name
          Value: !Sub '${{NatHaGroup}}-{label}'
        - Key: nat-ha:group
          Value: !Ref NatHaGroup
        - Key: {tag}
          Value: {value}

"""


def nat_eip(i, three):
    """AZ i's own Elastic IP (EgressIp=off): its NAT claims it at first boot (nat-ha claim-address)."""
    return eip(f"NatEip{i}", "ThreeAzsEgressOff" if three else "EgressOff", f"nat-{i}", "nat-ha:slot", f"nat-{i}")


COMMON_PARAMS = """  NatHaGroup:
    Type: String
    Default: nat-ha
    AllowedPattern: '^[A-Za-z0-9_.:-]{1,64}$'
    Description: Name of the NAT group (tag nat-ha:group on instances and route tables; scopes the IAM policy).
  AzCount:
    Type: Number
    Default: 3
    AllowedValues: [2, 3]
    Description: Number of availability zones (one NAT each, in an Auto Scaling group of one).
  NatHaArtifact:
    Type: String
    AllowedPattern: "^(s3|https)://[^' ]+$"
    ConstraintDescription: an s3:// or https:// URL of the bundle deploy/release.py built
    Description: >-
      Where the NATs get nat-ha: the bundle `python deploy/release.py` builds (the wheel, its dependencies'
      wheels and their hashes), published where you control it - s3://bucket/key (the role may read that object
      only) or an https:// URL. No default: you name your own copy.
  NatHaArtifactSha256:
    Type: String
    AllowedPattern: '^[0-9a-f]{64}$'
    ConstraintDescription: 64 lowercase hex digits (release.py prints it)
    Description: The bundle's sha256; a NAT installs it only if it matches (and each wheel only if its hash does).
  InstanceType:
    Type: String
    Default: t4g.nano
    AllowedValues: [""" + ", ".join(ARCH["arm64"] + ARCH["x86_64"]) + """]
    Description: >-
      NAT instance type. Graviton (t4g, c6gn, c7gn) boot the arm64 AMI, the others the x86_64 AMI.
  ImageIdArm64:
    Type: AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>
    Default: /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64
    Description: Amazon Linux 2023 arm64 AMI (SSM public parameter), for Graviton instance types.
  ImageIdX86:
    Type: AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>
    Default: /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    Description: Amazon Linux 2023 x86_64 AMI (SSM public parameter), for the other instance types.
  EnableSsm:
    Type: String
    Default: 'true'
    AllowedValues: ['true', 'false']
    Description: true - the NATs' role gets AmazonSSMManagedInstanceCore, so Session Manager reaches them without SSH.
  TableBillingMode:
    Type: String
    Default: PROVISIONED
    AllowedValues: [PAY_PER_REQUEST, PROVISIONED]
    Description: >-
      Capacity mode of the coordination table. PROVISIONED (default) - about 4.6 USD a month for 3 NATs at the
      default cadence (free within the 25 WCU / 25 RCU free tier); PAY_PER_REQUEST - about 9.9 USD (bench/cost.py).
  TableReadCapacity:
    Type: Number
    Default: 0
    MinValue: 0
    Description: Read capacity units (PROVISIONED only); 0 - sized for the NATs, 2.86 RCU each plus half again (13 for 3 AZs, 9 for 2).
  TableWriteCapacity:
    Type: Number
    Default: 0
    MinValue: 0
    Description: Write capacity units (PROVISIONED only); 0 - sized for the NATs, 1.43 WCU each plus half again (7 for 3 AZs, 5 for 2).
  MetricsListen:
    Type: String
    Default: '127.0.0.1:9510'
    AllowedValues: ['127.0.0.1:9510', '0.0.0.0:9510', '']
    Description: >-
      Where each agent serves /metrics ([metrics] listen in its config). 127.0.0.1:9510 - on the NAT only;
      0.0.0.0:9510 - for a Prometheus elsewhere (the security group admits the private subnets and the
      MetricsScrape* sources only); empty - no endpoint.
  MetricsScrapeCidr:
    Type: String
    Default: ''
    AllowedPattern: '^$|^(\\d{1,3}\\.){3}\\d{1,3}/\\d{1,2}$'
    Description: Optional CIDR of Prometheus servers allowed to scrape TCP 9510 (needs MetricsListen 0.0.0.0:9510). Empty - none.
  MetricsScrapeSecurityGroupId:
    Type: String
    Default: ''
    AllowedPattern: '^$|^sg-[0-9a-f]{8,17}$'
    Description: Optional security group of Prometheus servers allowed to scrape TCP 9510 (same VPC or a peered one; needs MetricsListen 0.0.0.0:9510). Empty - none.
  EgressIp:
    Type: String
    Default: 'off'
    AllowedValues: ['off', 'follow']
    Description: >-
      follow - each private route table keeps its own Elastic IP through failover, drain and fail-back (the EIP
      moves with the table, to a secondary address of the NAT serving it; needs 1 + AzCount IPv4 addresses per
      network interface, so t4g.small or larger); off - one Elastic IP per NAT, which stays with the NAT (and
      with its replacement).
  ConntrackSync:
    Type: String
    Default: 'off'
    AllowedValues: ['off', 'on']
    Description: >-
      on - established connections survive failover and hand-over (needs EgressIp=follow): every NAT runs
      nat-ha-ctsync with a group key the stack generates (a Secrets Manager secret only the NATs' role may read);
      TCP 9511 is opened between the group's NATs, and TCP/UDP 1024-9509 and 9512-65535 plus ICMP
      destination-unreachable from anywhere, so that a server's packets of a flow moved to another NAT get in (that
      NAT's security group never saw the flow start); the NATs' host firewall (nat-ha setup-nat) keeps every packet
      that belongs to no connection away from the NAT and the private subnets.
"""

MAPPINGS = "Mappings:\n  InstanceArch:\n" + "".join(
    f"    {t}:\n      Arch: {arch}\n" for arch, types in ARCH.items() for t in types
) + "\n"

METRICS_RULES = """Rules:
  ScrapersNeedAnOpenEndpoint:
    RuleCondition: !Or [!Not [!Equals [!Ref MetricsScrapeCidr, '']], !Not [!Equals [!Ref MetricsScrapeSecurityGroupId, '']]]
    Assertions:
      - Assert: !Equals [!Ref MetricsListen, '0.0.0.0:9510']
        AssertDescription: MetricsScrapeCidr and MetricsScrapeSecurityGroupId need MetricsListen 0.0.0.0:9510 (the agent listens on loopback only otherwise).
  EgressNeedsAddresses:
    RuleCondition: !Equals [!Ref EgressIp, follow]
    Assertions:
      - Assert: !Not [!Contains [[""" + ", ".join(TWO_ADDRESSES) + """], !Ref InstanceType]]
        AssertDescription: EgressIp=follow puts 1 + AzCount IPv4 addresses on each NAT's network interface; nano and micro types allow 2. Use a small or larger.
  ConntrackSyncNeedsEgressFollow:
    RuleCondition: !Equals [!Ref ConntrackSync, 'on']
    Assertions:
      - Assert: !Equals [!Ref EgressIp, follow]
        AssertDescription: ConntrackSync=on needs EgressIp=follow (without it a table's public address changes when it moves, so no connection can survive).

"""

COMMON_CONDITIONS = """  ThreeAzs: !Equals [!Ref AzCount, 3]
  Provisioned: !Equals [!Ref TableBillingMode, PROVISIONED]
  AutoReadCapacity: !Equals [!Ref TableReadCapacity, 0]
  AutoWriteCapacity: !Equals [!Ref TableWriteCapacity, 0]
  Arm64: !Equals [!FindInMap [InstanceArch, !Ref InstanceType, Arch], arm64]
  Ssm: !Equals [!Ref EnableSsm, 'true']
  ArtifactFromS3: !Equals [!Select [0, !Split ['://', !Ref NatHaArtifact]], s3]
  ScrapeFromCidr: !Not [!Equals [!Ref MetricsScrapeCidr, '']]
  ScrapeFromSecurityGroup: !Not [!Equals [!Ref MetricsScrapeSecurityGroupId, '']]
  EgressFollow: !Equals [!Ref EgressIp, follow]
  EgressOff: !Not [!Condition EgressFollow]
  ThreeAzsEgressFollow: !And [!Condition ThreeAzs, !Condition EgressFollow]
  ThreeAzsEgressOff: !And [!Condition ThreeAzs, !Condition EgressOff]
  ConntrackSyncOn: !Equals [!Ref ConntrackSync, 'on']
"""


def egress_eip(i, route_table, three):
    """Route table i's Elastic IP (EgressIp=follow): the agent holding the table associates it."""
    cond = "ThreeAzsEgressFollow" if three else "EgressFollow"
    return eip(f"EgressEip{i}", cond, f"egress-{i}", "nat-ha:route-table", route_table)


def by_az(item):
    """A comma-joined list of item(1), item(2)[, item(3)] as the stack's AzCount says."""
    return f"!If [ThreeAzs, !Join [',', [{item(1)}, {item(2)}, {item(3)}]], !Join [',', [{item(1)}, {item(2)}]]]"


def egress_tables(entry):
    """The UserData's EgressTables: 'rtb|eipalloc|cidrs' per route table, ';' between ('' when off)."""
    two = f"!Join [';', [{entry(1)}, {entry(2)}]]"
    three = f"!Join [';', [{entry(1)}, {entry(2)}, {entry(3)}]]"
    return f"!If [EgressFollow, !If [ThreeAzs, {three}, {two}], '']"


def security_group(vpc):
    """The NATs' security group and its rules: probes between NATs, metrics scrapers (the NAT-ed
    traffic's ingress rules come with each template's private subnets)."""
    return f"""  NatSecurityGroup:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: nat-ha NAT instances - all traffic from the private subnets, ICMP between NATs
      VpcId: {vpc}
      SecurityGroupEgress:
        - IpProtocol: '-1'
          CidrIp: 0.0.0.0/0
          Description: NATed traffic to the internet, AWS APIs
      Tags:
        - Key: nat-ha:group
          Value: !Ref NatHaGroup

  NatPeerIcmp:
    Type: AWS::EC2::SecurityGroupIngress
    Properties:
      GroupId: !Ref NatSecurityGroup
      SourceSecurityGroupId: !Ref NatSecurityGroup
      IpProtocol: icmp
      FromPort: -1
      ToPort: -1
      Description: peer probes between nat-ha agents

  NatMetricsFromCidr:
    Type: AWS::EC2::SecurityGroupIngress
    Condition: ScrapeFromCidr
    Properties:
      GroupId: !Ref NatSecurityGroup
      CidrIp: !Ref MetricsScrapeCidr
      IpProtocol: tcp
      FromPort: 9510
      ToPort: 9510
      Description: Prometheus scrapes the nat-ha agents (MetricsScrapeCidr)

  NatMetricsFromSecurityGroup:
    Type: AWS::EC2::SecurityGroupIngress
    Condition: ScrapeFromSecurityGroup
    Properties:
      GroupId: !Ref NatSecurityGroup
      SourceSecurityGroupId: !Ref MetricsScrapeSecurityGroupId
      IpProtocol: tcp
      FromPort: 9510
      ToPort: 9510
      Description: Prometheus scrapes the nat-ha agents (MetricsScrapeSecurityGroupId)
{conntrack_sync_rules()}
"""


def conntrack_sync_rules():
    """ConntrackSync=on: the sync port between the group's NATs only; the world to the NATs' high ports.

    A security group tracks connections, so the server's packets of a flow moved to another NAT are
    dropped there unless a rule lets them in. Security groups only allow: the world's range leaves
    out 9510-9511 (metrics, sync) and every port below 1024; the NATs' host firewall (setup-nat)
    drops whatever reaches them with no connection behind it.
    """
    out = """
  NatConntrackSyncPeers:
    Type: AWS::EC2::SecurityGroupIngress
    Condition: ConntrackSyncOn
    Properties:
      GroupId: !Ref NatSecurityGroup
      SourceSecurityGroupId: !Ref NatSecurityGroup
      IpProtocol: tcp
      FromPort: 9511
      ToPort: 9511
      Description: nat-ha-ctsync between the group's NATs (connection-tracking state)
"""
    for name, proto, low, high in MOVED_FLOW_RANGES:
        out += f"""
  NatMovedFlows{name}:
    Type: AWS::EC2::SecurityGroupIngress
    Condition: ConntrackSyncOn
    Properties:
      GroupId: !Ref NatSecurityGroup
      CidrIp: 0.0.0.0/0
      IpProtocol: {proto}
      FromPort: {low}
      ToPort: {high}
      Description: a moved flow's packets from its server (the host firewall drops the rest; ConntrackSync)
"""
    return out


# ConntrackSync=on: (resource suffix, protocol, from, to) opened to the world; deploy/README.md lists the same.
MOVED_FLOW_RANGES = [("Tcp", "tcp", 1024, 9509), ("Tcp2", "tcp", 9512, 65535), ("Udp", "udp", 1024, 9509),
                     ("Udp2", "udp", 9512, 65535), ("Icmp", "icmp", 3, -1)]  # fmt: skip


def common_resources(vpc, user_data_values):
    capacity = {
        kind: f"!If [Auto{kind.capitalize()}Capacity, !If [ThreeAzs, {three}, {two}], !Ref Table{kind.capitalize()}Capacity]"
        for kind, (three, two) in AUTO_CAPACITY.items()
    }
    # ConntrackSync=on: the group key's secret (its ARN), which the bootstrap reads into /etc/nat-ha/ctsync.key.
    user_data_values = {**user_data_values, "CtsyncKeySecret": "!If [ConntrackSyncOn, !Ref ConntrackSyncKey, '']"}
    values = "".join(f"              {k}: {v}\n" for k, v in user_data_values.items())
    return f"""  Table:
    Type: AWS::DynamoDB::Table
    DeletionPolicy: Delete
    UpdateReplacePolicy: Delete
    Properties:
      BillingMode: !Ref TableBillingMode
      ProvisionedThroughput: !If
        - Provisioned
        - ReadCapacityUnits: {capacity["read"]}
          WriteCapacityUnits: {capacity["write"]}
        - !Ref AWS::NoValue
      AttributeDefinitions:
        - AttributeName: group
          AttributeType: S
        - AttributeName: item
          AttributeType: S
      KeySchema:
        - AttributeName: group
          KeyType: HASH
        - AttributeName: item
          KeyType: RANGE
      TimeToLiveSpecification:
        AttributeName: gc_at
        Enabled: true
      Tags:
        - Key: nat-ha:group
          Value: !Ref NatHaGroup

  NatRole:
    Type: AWS::IAM::Role
    Properties:
      Description: nat-ha agent on the NAT instances (least privilege, see deploy/README.md)
      AssumeRolePolicyDocument:
        Version: '2012-10-17'
        Statement:
          - Effect: Allow
            Principal:
              Service: ec2.amazonaws.com
            Action: sts:AssumeRole
      ManagedPolicyArns: !If
        - Ssm
        - - !Sub 'arn:${{AWS::Partition}}:iam::aws:policy/AmazonSSMManagedInstanceCore'
        - !Ref AWS::NoValue
      Policies:
        - PolicyName: nat-ha
          PolicyDocument:
{policy_yaml(12)}        - !If
          - ArtifactFromS3
          - PolicyName: nat-ha-artifact
            PolicyDocument:
              Version: '2012-10-17'
              Statement:
                - Sid: ReadTheInstallBundle
                  Effect: Allow
                  Action: s3:GetObject
                  Resource: !Sub
                    - 'arn:${{AWS::Partition}}:s3:::${{Object}}'
                    - Object: !Select [1, !Split ['s3://', !Ref NatHaArtifact]]
          - !Ref AWS::NoValue
        - !If
          - ConntrackSyncOn
          - PolicyName: nat-ha-ctsync-key
            PolicyDocument:
              Version: '2012-10-17'
              Statement:
                - Sid: ReadTheGroupSyncKey
                  Effect: Allow
                  Action: secretsmanager:GetSecretValue
                  Resource: !Ref ConntrackSyncKey
          - !Ref AWS::NoValue

  ConntrackSyncKey:
    Type: AWS::SecretsManager::Secret
    Condition: ConntrackSyncOn
    DeletionPolicy: Delete
    UpdateReplacePolicy: Delete
    Properties:
      Description: nat-ha conntrack_sync group key (HMAC of the links between the group's NATs); only the NATs' role reads it
      GenerateSecretString:
        PasswordLength: 64
        ExcludePunctuation: true
      Tags:
        - Key: nat-ha:group
          Value: !Ref NatHaGroup

  NatInstanceProfile:
    Type: AWS::IAM::InstanceProfile
    Properties:
      Roles:
        - !Ref NatRole

{security_group(vpc)}  NatLaunchTemplate:
    Type: AWS::EC2::LaunchTemplate
    Properties:
      LaunchTemplateData:
        ImageId: !If [Arm64, !Ref ImageIdArm64, !Ref ImageIdX86]
        InstanceType: !Ref InstanceType
        IamInstanceProfile:
          Arn: !GetAtt NatInstanceProfile.Arn
        # A public IP of its own for the NAT's own traffic (the install, its calls to AWS); with
        # EgressIp=follow also a secondary private address per route table, where the tables' EIPs go.
        NetworkInterfaces:
          - DeviceIndex: 0
            AssociatePublicIpAddress: true
            DeleteOnTermination: true
            Groups:
              - !Ref NatSecurityGroup
            SecondaryPrivateIpAddressCount: !If [EgressFollow, !Ref AzCount, !Ref AWS::NoValue]
        MetadataOptions:
          HttpTokens: required
          HttpEndpoint: enabled
          HttpPutResponseHopLimit: 1
        TagSpecifications:
          - ResourceType: volume
            Tags:
              - Key: nat-ha:group
                Value: !Ref NatHaGroup
          - ResourceType: network-interface
            Tags:
              - Key: nat-ha:group
                Value: !Ref NatHaGroup
        UserData:
          Fn::Base64: !Sub
            - |
{ind(user_data, 14)}
            - {values.strip()}

"""


def common_outputs():
    return f"""  NatAutoScalingGroups:
    Description: One Auto Scaling group of one NAT per AZ (their instances change; nat-ha status lists them).
    Value: {by_az(lambda i: f"!Ref NatGroup{i}")}
  NatPublicIps:
    Description: >-
      Egress addresses (Elastic IPs, in AZ order). EgressIp=follow - route table N's traffic always leaves
      with the N-th; off - the NAT of AZ N's, kept by its replacements.
    Value: !If [EgressFollow, {by_az(lambda i: f"!Ref EgressEip{i}")}, {by_az(lambda i: f"!Ref NatEip{i}")}]
  TableName:
    Value: !Ref Table
  NatRoleArn:
    Value: !GetAtt NatRole.Arn
  NatHaGroup:
    Value: !Ref NatHaGroup
"""


def nat_subnets(subnet):
    return by_az(subnet)


def nat_eips():
    return f"!If [EgressOff, {by_az(lambda i: f'!GetAtt NatEip{i}.AllocationId')}, '']"


# ------------------------------------------------------------------ complete VPC
vpc = [
    """AWSTemplateFormatVersion: '2010-09-09'
Description: >-
  nat-ha - a VPC over 2 or 3 AZs with one highly available NAT instance per AZ (each an Auto Scaling group of
  one, Amazon Linux 2023, arm64 or x86_64), the DynamoDB coordination table and a least-privilege instance role.
  See deploy/README.md.

Parameters:
  SubnetBits:
    Type: Number
    Default: 12
    MinValue: 4
    MaxValue: 12
    Description: Host bits per subnet (12 = /20 in a /16). Six subnets must fit in VpcCidr.
"""
    + COMMON_PARAMS
    + """  VpcCidr:
    Type: String
    Default: 10.0.0.0/16
    AllowedPattern: '^(\\d{1,3}\\.){3}\\d{1,3}/(1[6-9]|2[0-4])$'
    Description: VPC CIDR (/16 to /24); split into /20-ish subnets with Fn::Cidr (6 subnets).

"""
    + MAPPINGS
    + METRICS_RULES
    + """Conditions:
"""
    + COMMON_CONDITIONS
    + """
Resources:
  VPC:
    Type: AWS::EC2::VPC
    Properties:
      CidrBlock: !Ref VpcCidr
      EnableDnsSupport: true
      EnableDnsHostnames: true
      Tags:
        - Key: Name
          Value: !Ref NatHaGroup

  InternetGateway:
    Type: AWS::EC2::InternetGateway

  GatewayAttachment:
    Type: AWS::EC2::VPCGatewayAttachment
    Properties:
      VpcId: !Ref VPC
      InternetGatewayId: !Ref InternetGateway

  PublicRouteTable:
    Type: AWS::EC2::RouteTable
    Properties:
      VpcId: !Ref VPC
      Tags:
        - Key: Name
          Value: !Sub '${NatHaGroup}-public'

  PublicDefaultRoute:
    Type: AWS::EC2::Route
    DependsOn: GatewayAttachment
    Properties:
      RouteTableId: !Ref PublicRouteTable
      DestinationCidrBlock: 0.0.0.0/0
      GatewayId: !Ref InternetGateway

"""
]
# The NAT of AZ i boots into a public subnet routed to the internet, and finds the private route
# tables by their tags (those of later AZs it learns at run time if they come later).
VPC_NEEDS = {
    1: ["PublicDefaultRoute", "PublicSubnet1Routes", "PrivateRouteTable1", "PrivateRouteTable2"],
    2: ["PublicSubnet2Routes"],
    3: ["PublicSubnet3Routes", "PrivateRouteTable3"],
}
for i in (1, 2, 3):
    c = "    Condition: ThreeAzs\n" if i == 3 else ""
    az = f"!Select [{i - 1}, !GetAZs '']"
    vpc.append(
        f"""  PublicSubnet{i}:
    Type: AWS::EC2::Subnet
{c}    Properties:
      VpcId: !Ref VPC
      AvailabilityZone: {az}
      CidrBlock: !Select [{i - 1}, !Cidr [!Ref VpcCidr, 6, !Ref SubnetBits]]
      MapPublicIpOnLaunch: true
      Tags:
        - Key: Name
          Value: !Sub '${{NatHaGroup}}-public-{i}'

  PublicSubnet{i}Routes:
    Type: AWS::EC2::SubnetRouteTableAssociation
{c}    Properties:
      SubnetId: !Ref PublicSubnet{i}
      RouteTableId: !Ref PublicRouteTable

  PrivateSubnet{i}:
    Type: AWS::EC2::Subnet
{c}    Properties:
      VpcId: !Ref VPC
      AvailabilityZone: {az}
      CidrBlock: !Select [{i + 2}, !Cidr [!Ref VpcCidr, 6, !Ref SubnetBits]]
      Tags:
        - Key: Name
          Value: !Sub '${{NatHaGroup}}-private-{i}'

  # Its home is the NAT of slot nat-{i} (whichever instance that is now); its agent routes
  # 0.0.0.0/0 to itself when it first claims the table (no default route before).
  PrivateRouteTable{i}:
    Type: AWS::EC2::RouteTable
{c}    Properties:
      VpcId: !Ref VPC
      Tags:
        - Key: Name
          Value: !Sub '${{NatHaGroup}}-private-{i}'
        - Key: nat-ha:group
          Value: !Ref NatHaGroup
        - Key: nat-ha:home
          Value: nat-{i}

  PrivateSubnet{i}Routes:
    Type: AWS::EC2::SubnetRouteTableAssociation
{c}    Properties:
      SubnetId: !Ref PrivateSubnet{i}
      RouteTableId: !Ref PrivateRouteTable{i}

  NatIngressFromPrivate{i}:
    Type: AWS::EC2::SecurityGroupIngress
{c}    Properties:
      GroupId: !Ref NatSecurityGroup
      IpProtocol: '-1'
      CidrIp: !GetAtt PrivateSubnet{i}.CidrBlock
      Description: traffic to be NATed from private subnet {i}

"""
        + nat_group(i, f"!Ref PublicSubnet{i}", i == 3, VPC_NEEDS[i])
        + nat_eip(i, i == 3).replace("    Properties:", "    DependsOn: GatewayAttachment\n    Properties:", 1)
        + egress_eip(i, f"!Ref PrivateRouteTable{i}", i == 3).replace(
            "    Properties:", "    DependsOn: GatewayAttachment\n    Properties:", 1
        )
    )


def vpc_egress_entry(i):
    return f"!Join ['|', [!Ref PrivateRouteTable{i}, !GetAtt EgressEip{i}.AllocationId, !GetAtt PrivateSubnet{i}.CidrBlock]]"


vpc_values = {
    "EgressTables": egress_tables(vpc_egress_entry),
    "NatSubnets": nat_subnets(lambda i: f"!Ref PublicSubnet{i}"),
    "NatEips": nat_eips(),
}
vpc.append(common_resources("!Ref VPC", vpc_values))
vpc.append(
    f"""Outputs:
  VpcId:
    Value: !Ref VPC
  PublicSubnetIds:
    Value: {by_az(lambda i: f"!Ref PublicSubnet{i}")}
  PrivateSubnetIds:
    Value: {by_az(lambda i: f"!Ref PrivateSubnet{i}")}
  PrivateRouteTableIds:
    Value: {by_az(lambda i: f"!Ref PrivateRouteTable{i}")}
"""
    + common_outputs()
)
OUT["nat-ha-vpc.yaml"] = "".join(vpc)

# ------------------------------------------------------------------ existing VPC
ex = [
    """AWSTemplateFormatVersion: '2010-09-09'
Description: >-
  nat-ha for an existing VPC - one highly available NAT instance per AZ in the given public subnets (each an
  Auto Scaling group of one), the DynamoDB coordination table and a least-privilege instance role. Existing
  private route tables must be tagged (nat-ha:group, nat-ha:home) by the operator; see the TagRouteTables
  output and deploy/README.md.

Parameters:
"""
    + COMMON_PARAMS
    + """  VpcId:
    Type: AWS::EC2::VPC::Id
    Description: The existing VPC.
  PrivateCidr:
    Type: String
    AllowedPattern: '^(\\d{1,3}\\.){3}\\d{1,3}/\\d{1,2}$'
    Description: CIDR whose traffic the NATs accept (usually the VPC CIDR or a summary of the private subnets).
  PublicSubnetIds:
    Type: List<AWS::EC2::Subnet::Id>
    Description: One public subnet per AZ (AzCount of them, in AZ order), each with a route to an internet gateway.
  PrivateRouteTableIds:
    Type: CommaDelimitedList
    Description: >-
      The private route tables, in the same AZ order: commas between AZs, spaces between the tables of one AZ
      (e.g. 'rtb-0a rtb-0c,rtb-0b'); the NAT of public subnet N is their home. EgressIp=follow - one table per AZ.
  PrivateSubnetCidrs:
    Type: String
    Default: ''
    AllowedPattern: "^$|^[0-9./ ]+(,[0-9./ ]+)*$"
    Description: >-
      EgressIp=follow only - the CIDRs of the private subnets of each route table, in the same AZ order, commas
      between route tables, spaces between the subnets of one (e.g. '10.0.10.0/24 10.0.12.0/24,10.0.11.0/24').

"""
    + MAPPINGS
    + METRICS_RULES
    + """  EgressNeedsPrivateSubnetCidrs:
    RuleCondition: !Equals [!Ref EgressIp, follow]
    Assertions:
      - Assert: !Not [!Equals [!Ref PrivateSubnetCidrs, '']]
        AssertDescription: EgressIp=follow SNATs each route table's private subnets to its Elastic IP's address; give them in PrivateSubnetCidrs.

Conditions:
"""
    + COMMON_CONDITIONS
    + """
Resources:
  NatIngressFromPrivate:
    Type: AWS::EC2::SecurityGroupIngress
    Properties:
      GroupId: !Ref NatSecurityGroup
      IpProtocol: '-1'
      CidrIp: !Ref PrivateCidr
      Description: traffic to be NATed from the private subnets

"""
]
for i in (1, 2, 3):
    ex.append(
        nat_group(i, f"!Select [{i - 1}, !Ref PublicSubnetIds]", i == 3)
        + nat_eip(i, i == 3)
        + egress_eip(i, f"!Select [{i - 1}, !Ref PrivateRouteTableIds]", i == 3)
    )


def existing_egress_entry(i):
    return (f"!Join ['|', [!Select [{i - 1}, !Ref PrivateRouteTableIds], !GetAtt EgressEip{i}.AllocationId, "
            f"!Select [{i - 1}, !Split [',', !Ref PrivateSubnetCidrs]]]]")  # fmt: skip


ex_values = {
    "EgressTables": egress_tables(existing_egress_entry),
    "NatSubnets": nat_subnets(lambda i: f"!Select [{i - 1}, !Ref PublicSubnetIds]"),
    "NatEips": nat_eips(),
}
ex.append(common_resources("!Ref VpcId", ex_values))
tag = "aws ec2 create-tags --region ${AWS::Region} --resources ${RT} --tags Key=nat-ha:group,Value=${NatHaGroup} Key=nat-ha:home,Value=${SLOT}"


def tagcmd(i):
    return f"!Sub ['{tag}', {{RT: !Select [{i - 1}, !Ref PrivateRouteTableIds], SLOT: nat-{i}}}]"


ex.append(f"""Outputs:
  TagRouteTables:
    Description: >-
      Run these when nat-ha should take the private route tables over (the agent may only move routes of tables
      tagged with its group): each table's home NAT then points its 0.0.0.0/0 at itself within seconds.
    Value: !If
      - ThreeAzs
      - !Join [' ; ', [{tagcmd(1)}, {tagcmd(2)}, {tagcmd(3)}]]
      - !Join [' ; ', [{tagcmd(1)}, {tagcmd(2)}]]
""" + common_outputs())
OUT["nat-ha-existing-vpc.yaml"] = "".join(ex)


def main() -> int:
    stale = []
    for name, content in OUT.items():
        path = REPO / "deploy" / "cloudformation" / name
        if "--check" in sys.argv[1:]:
            if not path.exists() or path.read_text() != content:
                stale.append(name)
        else:
            path.write_text(content)
    if stale:
        print(f"out of date: {', '.join(stale)} (run python deploy/cloudformation/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
