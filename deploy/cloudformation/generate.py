# ruff: noqa: E501  (template text is kept on one line per YAML line)
"""Generate the CloudFormation templates from the IAM policy and the systemd units (no drift).

Usage: python deploy/cloudformation/generate.py [--check]
The templates embed deploy/iam/nat-ha-policy.json (as Fn::Sub strings) and, as the user data,
deploy/bootstrap/nat-ha-bootstrap.sh with both units from deploy/systemd/ in it. Edit those or
this file, then re-run; tests run --check.
"""

import json
import re
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT: dict[str, str] = {}
policy = json.loads((REPO / "deploy/iam/nat-ha-policy.json").read_text())
unit = (REPO / "deploy/systemd/nat-ha.service").read_text()
setup_unit = (REPO / "deploy/systemd/nat-ha-setup.service").read_text()


def ind(text, n):
    return textwrap.indent(text, " " * n)


def policy_yaml(n):
    # every string with ${...} becomes !Sub; the table ARN gets the NatHaTable variable
    out = ["Version: '2012-10-17'", "Statement:"]
    for st in policy["Statement"]:
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


USER_DATA = (REPO / "deploy/bootstrap/nat-ha-bootstrap.sh").read_text()
egress_helper = (REPO / "deploy/bootstrap/egress_config.py").read_text()
assert "${" not in unit and "${" not in setup_unit and "${" not in egress_helper
user_data = (
    USER_DATA.replace("__SETUP_UNIT__", setup_unit)
    .replace("__UNIT__", unit)
    .replace("__EGRESS_CONFIG__", egress_helper)
)


def nat_instance(i, subnet_ref, cond):
    c = "    Condition: ThreeAzs\n" if cond else ""
    subnet = "!Ref " + subnet_ref if not subnet_ref.startswith("!") else subnet_ref
    # EgressIp=follow: the interface is described here, with a secondary address per route table
    # (the tables' Elastic IPs sit on them) and a public IP of its own for the primary (the NAT's calls).
    return f"""  NatInstance{i}:
    Type: AWS::EC2::Instance
{c}    DependsOn: {"PublicDefaultRoute" if subnet_ref.startswith("PublicSubnet") else "Table"}
    Properties:
      LaunchTemplate:
        LaunchTemplateId: !Ref NatLaunchTemplate
        Version: !GetAtt NatLaunchTemplate.LatestVersionNumber
      SubnetId: !If [EgressFollow, !Ref AWS::NoValue, {subnet}]
      SecurityGroupIds: !If
        - EgressFollow
        - !Ref AWS::NoValue
        - - !Ref NatSecurityGroup
      NetworkInterfaces: !If
        - EgressFollow
        - - DeviceIndex: '0'
            SubnetId: {subnet}
            GroupSet:
              - !Ref NatSecurityGroup
            AssociatePublicIpAddress: true
            SecondaryPrivateIpAddressCount: !Ref AzCount
        - !Ref AWS::NoValue
      SourceDestCheck: false
      Tags:
        - Key: Name
          Value: !Sub '${{NatHaGroup}}-nat-{i}'
        - Key: nat-ha:group
          Value: !Ref NatHaGroup
"""


COMMON_PARAMS = """  NatHaGroup:
    Type: String
    Default: nat-ha
    AllowedPattern: '^[A-Za-z0-9_.:-]{1,64}$'
    Description: Name of the NAT group (tag nat-ha:group on instances and route tables; scopes the IAM policy).
  AzCount:
    Type: Number
    Default: 3
    AllowedValues: [2, 3]
    Description: Number of availability zones (one NAT instance each).
  InstanceType:
    Type: String
    Default: t4g.nano
    AllowedValues: [t4g.nano, t4g.micro, t4g.small, t4g.medium, c7gn.medium, c7gn.large, c6gn.medium, c6gn.large]
    Description: NAT instance type (arm64).
  ImageId:
    Type: AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>
    Default: /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64
    Description: Amazon Linux 2023 arm64 AMI (SSM public parameter).
  NatHaVersion:
    Type: String
    Default: 0.1.0
    AllowedPattern: '^[0-9]+\\.[0-9]+\\.[0-9]+([a-z0-9.+-]*)$'
    Description: nat-ha version installed from PyPI (pip install nat-ha==VERSION).
  PipSpec:
    Type: String
    Default: ''
    Description: Optional pip requirement overriding NatHaVersion (e.g. a wheel URL or git+https://...@tag). No single quotes.
    AllowedPattern: "^[^']*$"
  TableBillingMode:
    Type: String
    Default: PAY_PER_REQUEST
    AllowedValues: [PAY_PER_REQUEST, PROVISIONED]
    Description: Capacity mode of the coordination table.
  TableReadCapacity:
    Type: Number
    Default: 5
    MinValue: 1
    Description: Read capacity units (PROVISIONED only). About 3 x group size x 3 reads per second at default timing.
  TableWriteCapacity:
    Type: Number
    Default: 5
    MinValue: 1
    Description: Write capacity units (PROVISIONED only). About 1.5 x group size writes per second at default timing.
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
      network interface, so t4g.small or larger); off - one Elastic IP per NAT, which stays with the NAT.
  ConntrackSync:
    Type: String
    Default: 'off'
    AllowedValues: ['off', 'on']
    Description: >-
      on - the security group rules of conntrack_sync (needs EgressIp=follow): TCP 9511 between the group's NATs
      (nat-ha-ctsync), and TCP/UDP 1024-9509 and 9512-65535 plus ICMP destination-unreachable from anywhere, so
      that a server's packets of a flow moved to another NAT get in (that NAT's group never saw the flow start);
      the NATs' host firewall (nat-ha setup-nat) keeps every packet that belongs to no connection away from the
      NAT and the private subnets. The key and the nat-ha-ctsync unit are set up on the NATs (deploy/README.md).
"""

METRICS_RULES = """Rules:
  ScrapersNeedAnOpenEndpoint:
    RuleCondition: !Or [!Not [!Equals [!Ref MetricsScrapeCidr, '']], !Not [!Equals [!Ref MetricsScrapeSecurityGroupId, '']]]
    Assertions:
      - Assert: !Equals [!Ref MetricsListen, '0.0.0.0:9510']
        AssertDescription: MetricsScrapeCidr and MetricsScrapeSecurityGroupId need MetricsListen 0.0.0.0:9510 (the agent listens on loopback only otherwise).
  EgressNeedsAddresses:
    RuleCondition: !Equals [!Ref EgressIp, follow]
    Assertions:
      - Assert: !Not [!Contains [[t4g.nano, t4g.micro], !Ref InstanceType]]
        AssertDescription: EgressIp=follow puts 1 + AzCount IPv4 addresses on each NAT's network interface; t4g.nano and t4g.micro allow 2. Use t4g.small or larger.
  ConntrackSyncNeedsEgressFollow:
    RuleCondition: !Equals [!Ref ConntrackSync, 'on']
    Assertions:
      - Assert: !Equals [!Ref EgressIp, follow]
        AssertDescription: ConntrackSync=on needs EgressIp=follow (without it a table's public address changes when it moves, so no connection can survive).

"""

COMMON_CONDITIONS = """  ThreeAzs: !Equals [!Ref AzCount, 3]
  Provisioned: !Equals [!Ref TableBillingMode, PROVISIONED]
  ScrapeFromCidr: !Not [!Equals [!Ref MetricsScrapeCidr, '']]
  ScrapeFromSecurityGroup: !Not [!Equals [!Ref MetricsScrapeSecurityGroupId, '']]
  EgressFollow: !Equals [!Ref EgressIp, follow]
  EgressOff: !Not [!Condition EgressFollow]
  ThreeAzsEgressFollow: !And [!Condition ThreeAzs, !Condition EgressFollow]
  ThreeAzsEgressOff: !And [!Condition ThreeAzs, !Condition EgressOff]
  ConntrackSyncOn: !Equals [!Ref ConntrackSync, 'on']
"""


def egress_eip(i, route_table, three):
    """Route table i's Elastic IP (EgressIp=follow): created unassociated; the agent holding the table associates it."""
    cond = "ThreeAzsEgressFollow" if three else "EgressFollow"
    return f"""  EgressEip{i}:
    Type: AWS::EC2::EIP
    Condition: {cond}
    Properties:
      Domain: vpc
      Tags:
        - Key: Name
          Value: !Sub '${{NatHaGroup}}-egress-{i}'
        - Key: nat-ha:group
          Value: !Ref NatHaGroup
        - Key: nat-ha:route-table
          Value: {route_table}

"""


def egress_tables(entry):
    """The UserData's EgressTables: 'nat subnet|rtb or private subnet|cidrs' per table, ';' between ('' when off)."""
    two = f"!Join [';', [{entry(1)}, {entry(2)}]]"
    three = f"!Join [';', [{entry(1)}, {entry(2)}, {entry(3)}]]"
    return f"!If [EgressFollow, !If [ThreeAzs, {three}, {two}], '']"


def public_ips(name):
    return f"!If [ThreeAzs, !Join [',', [!Ref {name}1, !Ref {name}2, !Ref {name}3]], !Join [',', [!Ref {name}1, !Ref {name}2]]]"


def conntrack_sync_rules():
    """ConntrackSync=on: the sync port between the group's NATs only; the world to the NATs' high ports.

    Security groups only allow, so the world's range leaves out 9510-9511 (metrics, sync) and
    every port below 1024; the NATs' host firewall (setup-nat) drops whatever reaches them with
    no connection behind it.
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
    ranges = [("Tcp", "tcp", 1024, 9509), ("Tcp2", "tcp", 9512, 65535), ("Udp", "udp", 1024, 9509),
              ("Udp2", "udp", 9512, 65535), ("Icmp", "icmp", 3, -1)]  # fmt: skip
    for name, proto, low, high in ranges:
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
      Description: a moved flow's packets from its server (host firewall drops the rest; ConntrackSync)
"""
    return out


def common_resources(ingress_cidrs, egress_tables_value):
    return f"""  Table:
    Type: AWS::DynamoDB::Table
    DeletionPolicy: Delete
    UpdateReplacePolicy: Delete
    Properties:
      BillingMode: !Ref TableBillingMode
      ProvisionedThroughput: !If
        - Provisioned
        - ReadCapacityUnits: !Ref TableReadCapacity
          WriteCapacityUnits: !Ref TableWriteCapacity
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
      Policies:
        - PolicyName: nat-ha
          PolicyDocument:
{policy_yaml(12)}
  NatInstanceProfile:
    Type: AWS::IAM::InstanceProfile
    Properties:
      Roles:
        - !Ref NatRole

  NatSecurityGroup:
    Type: AWS::EC2::SecurityGroup
    Properties:
      GroupDescription: nat-ha NAT instances - all traffic from the private subnets, ICMP between NATs
      VpcId: {"!Ref VPC" if ingress_cidrs == "vpc" else "!Ref VpcId"}
      SecurityGroupIngress:
        - IpProtocol: '-1'
          CidrIp: REMOVED
          Description: traffic to be NATed from the private subnets
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
  NatLaunchTemplate:
    Type: AWS::EC2::LaunchTemplate
    Properties:
      LaunchTemplateData:
        ImageId: !Ref ImageId
        InstanceType: !Ref InstanceType
        IamInstanceProfile:
          Arn: !GetAtt NatInstanceProfile.Arn
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
            - EgressTables: {egress_tables_value}
"""


def fix(common):
    # no inline ingress: each template adds its own rules
    start = common.index("      SecurityGroupIngress:")
    end = common.index("      SecurityGroupEgress:")
    return common[:start] + common[end:]


# ------------------------------------------------------------------ complete VPC
vpc = [
    """AWSTemplateFormatVersion: '2010-09-09'
Description: >-
  nat-ha - a VPC over 2 or 3 AZs with one highly available NAT instance per AZ (Amazon Linux 2023 arm64),
  the DynamoDB coordination table and a least-privilege instance role. See deploy/README.md.

Parameters:
"""
    + COMMON_PARAMS
    + """  VpcCidr:
    Type: String
    Default: 10.0.0.0/16
    AllowedPattern: '^(\\d{1,3}\\.){3}\\d{1,3}/(1[6-9]|2[0-4])$'
    Description: VPC CIDR (/16 to /24); split into /20-ish subnets with Fn::Cidr (6 subnets).

"""
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
          Value: !Ref NatInstance{i}

  PrivateSubnet{i}Routes:
    Type: AWS::EC2::SubnetRouteTableAssociation
{c}    Properties:
      SubnetId: !Ref PrivateSubnet{i}
      RouteTableId: !Ref PrivateRouteTable{i}

  PrivateDefaultRoute{i}:
    Type: AWS::EC2::Route
{c}    Properties:
      RouteTableId: !Ref PrivateRouteTable{i}
      DestinationCidrBlock: 0.0.0.0/0
      InstanceId: !Ref NatInstance{i}

  NatIngressFromPrivate{i}:
    Type: AWS::EC2::SecurityGroupIngress
{c}    Properties:
      GroupId: !Ref NatSecurityGroup
      IpProtocol: '-1'
      CidrIp: !GetAtt PrivateSubnet{i}.CidrBlock
      Description: traffic to be NATed from private subnet {i}

"""
        + nat_instance(i, f"PublicSubnet{i}", i == 3)
        + f"""
  NatEip{i}:
    Type: AWS::EC2::EIP
    Condition: {"ThreeAzsEgressOff" if i == 3 else "EgressOff"}
    DependsOn: GatewayAttachment
    Properties:
      Domain: vpc
      InstanceId: !Ref NatInstance{i}
      Tags:
        - Key: nat-ha:group
          Value: !Ref NatHaGroup

"""
        + egress_eip(i, f"!Ref PrivateRouteTable{i}", i == 3).replace(
            "    Properties:", "    DependsOn: GatewayAttachment\n    Properties:", 1
        )
    )


def vpc_egress_entry(i):
    # The route table and its EIP depend on NAT i (its nat-ha:home tag): named by the private subnet instead.
    return f"!Join ['|', [!Ref PublicSubnet{i}, !Ref PrivateSubnet{i}, !GetAtt PrivateSubnet{i}.CidrBlock]]"


vpc.append(fix(common_resources("vpc", egress_tables(vpc_egress_entry))).replace("{ingress_cidrs_first}", ""))
vpc.append(
    """
Outputs:
  VpcId:
    Value: !Ref VPC
  PublicSubnetIds:
    Value: !If [ThreeAzs, !Join [',', [!Ref PublicSubnet1, !Ref PublicSubnet2, !Ref PublicSubnet3]], !Join [',', [!Ref PublicSubnet1, !Ref PublicSubnet2]]]
  PrivateSubnetIds:
    Value: !If [ThreeAzs, !Join [',', [!Ref PrivateSubnet1, !Ref PrivateSubnet2, !Ref PrivateSubnet3]], !Join [',', [!Ref PrivateSubnet1, !Ref PrivateSubnet2]]]
  PrivateRouteTableIds:
    Value: !If [ThreeAzs, !Join [',', [!Ref PrivateRouteTable1, !Ref PrivateRouteTable2, !Ref PrivateRouteTable3]], !Join [',', [!Ref PrivateRouteTable1, !Ref PrivateRouteTable2]]]
  NatInstanceIds:
    Value: !If [ThreeAzs, !Join [',', [!Ref NatInstance1, !Ref NatInstance2, !Ref NatInstance3]], !Join [',', [!Ref NatInstance1, !Ref NatInstance2]]]
  NatPublicIps:
    Description: >-
      Egress addresses of the VPC (Elastic IPs, in AZ order; they survive a NAT stop/start). EgressIp=follow -
      private subnet N's traffic always leaves with the N-th, whichever NAT serves it.
    Value: !If [EgressFollow, """
    + public_ips("EgressEip")
    + ", "
    + public_ips("NatEip")
    + """]
  TableName:
    Value: !Ref Table
  NatRoleArn:
    Value: !GetAtt NatRole.Arn
  NatHaGroup:
    Value: !Ref NatHaGroup
"""
)
text = "".join(vpc)
text = text.replace(
    "Parameters:\n",
    "Parameters:\n  SubnetBits:\n    Type: Number\n    Default: 12\n    MinValue: 4\n    MaxValue: 12\n    Description: Host bits per subnet (12 = /20 in a /16). Six subnets must fit in VpcCidr.\n",
    1,
)
OUT["nat-ha-vpc.yaml"] = text

# ------------------------------------------------------------------ existing VPC
ex = [
    """AWSTemplateFormatVersion: '2010-09-09'
Description: >-
  nat-ha for an existing VPC - one highly available NAT instance per AZ in the given public subnets,
  the DynamoDB coordination table and a least-privilege instance role. Existing private route tables
  must be tagged (nat-ha:group, nat-ha:home) by the operator; see the TagRouteTables output and deploy/README.md.

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
    Description: The private route tables, in the same AZ order (AzCount of them); the NAT of subnet N is their home.
  CreateDefaultRoutes:
    Type: String
    Default: 'false'
    AllowedValues: ['true', 'false']
    Description: >-
      true - also create 0.0.0.0/0 -> NAT in each private route table (fails if one already has a default
      route); false - point them yourself (aws ec2 replace-route, see deploy/README.md).
  PrivateSubnetCidrs:
    Type: String
    Default: ''
    AllowedPattern: "^$|^[0-9./ ]+(,[0-9./ ]+)*$"
    Description: >-
      EgressIp=follow only - the CIDRs of the private subnets of each route table, in the same AZ order, commas
      between route tables, spaces between the subnets of one (e.g. '10.0.10.0/24 10.0.12.0/24,10.0.11.0/24').

"""
    + METRICS_RULES
    + """  EgressNeedsPrivateSubnetCidrs:
    RuleCondition: !Equals [!Ref EgressIp, follow]
    Assertions:
      - Assert: !Not [!Equals [!Ref PrivateSubnetCidrs, '']]
        AssertDescription: EgressIp=follow SNATs each route table's private subnets to its Elastic IP's address; give them in PrivateSubnetCidrs.

Conditions:
"""
    + COMMON_CONDITIONS
    + """  CreateRoutes: !Equals [!Ref CreateDefaultRoutes, 'true']
  CreateRoutes3: !And [!Condition CreateRoutes, !Condition ThreeAzs]

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
    c = "    Condition: ThreeAzs\n" if i == 3 else ""
    rc = "CreateRoutes3" if i == 3 else "CreateRoutes"
    ex.append(
        nat_instance(i, f"!Select [{i - 1}, !Ref PublicSubnetIds]", i == 3)
        + f"""
  NatEip{i}:
    Type: AWS::EC2::EIP
    Condition: {"ThreeAzsEgressOff" if i == 3 else "EgressOff"}
    Properties:
      Domain: vpc
      InstanceId: !Ref NatInstance{i}
      Tags:
        - Key: nat-ha:group
          Value: !Ref NatHaGroup

"""
        + egress_eip(i, f"!Select [{i - 1}, !Ref PrivateRouteTableIds]", i == 3)
        + f"""  PrivateDefaultRoute{i}:
    Type: AWS::EC2::Route
    Condition: {rc}
    Properties:
      RouteTableId: !Select [{i - 1}, !Ref PrivateRouteTableIds]
      DestinationCidrBlock: 0.0.0.0/0
      InstanceId: !Ref NatInstance{i}

"""
    )


def existing_egress_entry(i):
    return (f"!Join ['|', [!Select [{i - 1}, !Ref PublicSubnetIds], !Select [{i - 1}, !Ref PrivateRouteTableIds], "
            f"!Select [{i - 1}, !Split [',', !Ref PrivateSubnetCidrs]]]]")  # fmt: skip


ex.append(fix(common_resources("existing", egress_tables(existing_egress_entry))))
tag = "aws ec2 create-tags --region ${AWS::Region} --resources ${RT} --tags Key=nat-ha:group,Value=${NatHaGroup} Key=nat-ha:home,Value=${NAT}"


def tagcmd(i):
    return f"!Sub ['{tag}', {{RT: !Select [{i - 1}, !Ref PrivateRouteTableIds], NAT: !Ref NatInstance{i}}}]"


ex.append(f"""
Outputs:
  NatInstanceIds:
    Value: !If [ThreeAzs, !Join [',', [!Ref NatInstance1, !Ref NatInstance2, !Ref NatInstance3]], !Join [',', [!Ref NatInstance1, !Ref NatInstance2]]]
  NatPublicIps:
    Description: Egress addresses (Elastic IPs, in AZ order); EgressIp=follow - route table N's traffic always leaves with the N-th.
    Value: !If [EgressFollow, {public_ips("EgressEip")}, {public_ips("NatEip")}]
  TableName:
    Value: !Ref Table
  NatRoleArn:
    Value: !GetAtt NatRole.Arn
  TagRouteTables:
    Description: Run these (the agent may only move routes of tables tagged with its group)
    Value: !If
      - ThreeAzs
      - !Join [' ; ', [{tagcmd(1)}, {tagcmd(2)}, {tagcmd(3)}]]
      - !Join [' ; ', [{tagcmd(1)}, {tagcmd(2)}]]
""")
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
