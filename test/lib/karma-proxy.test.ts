/**
 * Intent checks: what each resource must be, read from the synthesized template. Stacks are built
 * once per configuration and shared by the assertions about them (synth is the slow part).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { App, Duration, Stack } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as route53 from 'aws-cdk-lib/aws-route53';
import { KarmaProxy, KarmaProxyProps, KarmaProxyStack } from '../../lib';
import { DOMAIN, ZONE, heredocBody, only, parseEnvFile, templateOf, userDataText } from './helpers';

type Statement = { Action: string | string[]; Resource: unknown; Condition?: unknown; Sid?: string };

function statements(template: Template): Statement[] {
  return Object.values(template.findResources('AWS::IAM::Policy'))
    .flatMap((p) => (p as { Properties: { PolicyDocument: { Statement: Statement[] } } }).Properties.PolicyDocument.Statement);
}
const SESSION_MANAGER = ['ssm:UpdateInstanceInformation', 'ssmmessages:CreateControlChannel', 'ssmmessages:CreateDataChannel', 'ssmmessages:OpenControlChannel', 'ssmmessages:OpenDataChannel'];
const actionsOf = (s: Statement): string[] => (Array.isArray(s.Action) ? s.Action : [s.Action]);
function allActions(template: Template): string[] {
  return statements(template).flatMap(actionsOf);
}
function statementWith(template: Template, action: string): Statement {
  const found = statements(template).filter((s) => actionsOf(s).includes(action));
  if (found.length !== 1) throw new Error(`expected one statement with ${action}, found ${found.length}`);
  return found[0];
}

/** A construct alone in a plain stack: faster than the whole app stack for IAM variations. */
function constructTemplate(props: KarmaProxyProps): Template {
  const stack = new Stack(new App(), 'Test');
  new KarmaProxy(stack, 'Proxy', props);
  return Template.fromStack(stack);
}

describe('default stack', () => {
  const { stack, template } = templateOf();
  const logicalId = (type: string): string => Object.keys(template.findResources(type))[0];
  const proxySg = Object.entries(template.findResources('AWS::EC2::SecurityGroup'))
    .find(([, r]) => String((r as { Properties: { GroupDescription: string } }).Properties.GroupDescription).startsWith('Karma Proxy: HTTP'))!;
  const userData = userDataText(template);
  const envFile = parseEnvFile(heredocBody(userData, 'KARMA_PROXY_ENV'));
  const unit = heredocBody(userData, 'KARMA_PROXY_UNIT');

  describe('network', () => {
    test('a new VPC with public and isolated subnets and no NAT gateway', () => {
      template.resourceCountIs('AWS::EC2::VPC', 1);
      template.resourceCountIs('AWS::EC2::NatGateway', 0);
      template.resourceCountIs('AWS::EC2::Subnet', 4);
      template.resourcePropertiesCountIs('AWS::EC2::Subnet', { MapPublicIpOnLaunch: true }, 2);
      template.resourcePropertiesCountIs('AWS::EC2::Subnet', { MapPublicIpOnLaunch: false }, 2);
      // Only the public subnets route to the internet.
      template.resourceCountIs('AWS::EC2::Route', 2);
      template.allResourcesProperties('AWS::EC2::Route', { GatewayId: Match.anyValue() });
    });

    test("the proxy's group opens 80 and 443 to anywhere, and nothing else", () => {
      const ingress = (proxySg[1] as { Properties: { SecurityGroupIngress: unknown[] } }).Properties.SecurityGroupIngress;
      expect(ingress).toEqual([
        expect.objectContaining({ CidrIp: '0.0.0.0/0', IpProtocol: 'tcp', FromPort: 80, ToPort: 80 }),
        expect.objectContaining({ CidrIp: '0.0.0.0/0', IpProtocol: 'tcp', FromPort: 443, ToPort: 443 }),
      ]);
      // No separate ingress resource targets the proxy's group either (the metrics port stays closed).
      const separate = Object.values(template.findResources('AWS::EC2::SecurityGroupIngress'))
        .filter((r) => JSON.stringify(r).includes(`"GroupId":{"Fn::GetAtt":["${proxySg[0]}"`));
      expect(separate).toEqual([]);
    });

    test('instances run in the public subnets with a public address (no NAT to reach packages)', () => {
      const asg = only(template, 'AWS::AutoScaling::AutoScalingGroup') as { Properties: { VPCZoneIdentifier: { Ref: string }[] } };
      expect(asg.Properties.VPCZoneIdentifier.map((r) => r.Ref)).toEqual([
        expect.stringMatching(/PublicSubnet1/), expect.stringMatching(/PublicSubnet2/),
      ]);
      template.hasResourceProperties('AWS::EC2::LaunchTemplate', {
        LaunchTemplateData: { NetworkInterfaces: [Match.objectLike({ AssociatePublicIpAddress: true, DeviceIndex: 0 })] },
      });
    });
  });

  describe('cache', () => {
    test('Redis on cache.t4g.micro, encrypted in transit and at rest, AUTH token from Secrets Manager', () => {
      const secretId = logicalId('AWS::SecretsManager::Secret');
      template.hasResourceProperties('AWS::ElastiCache::ReplicationGroup', {
        Engine: 'redis',
        CacheNodeType: 'cache.t4g.micro',
        NumCacheClusters: 1,
        TransitEncryptionEnabled: true,
        TransitEncryptionMode: 'required',
        AtRestEncryptionEnabled: true,
        AuthToken: { 'Fn::Join': ['', ['{{resolve:secretsmanager:', { Ref: secretId }, ':SecretString:::}}']] },
      });
      template.hasResourceProperties('AWS::SecretsManager::Secret', {
        GenerateSecretString: Match.objectLike({ ExcludePunctuation: true, PasswordLength: 64 }),
      });
      // The token is generated by Secrets Manager: never a value in the template.
      template.hasResourceProperties('AWS::SecretsManager::Secret', { SecretString: Match.absent() });
    });

    test('in the isolated subnets', () => {
      const group = only(template, 'AWS::ElastiCache::SubnetGroup') as { Properties: { SubnetIds: { Ref: string }[] } };
      expect(group.Properties.SubnetIds.map((r) => r.Ref)).toEqual([
        expect.stringMatching(/CacheSubnet1/), expect.stringMatching(/CacheSubnet2/),
      ]);
      const isolated = Object.entries(template.findResources('AWS::EC2::Subnet'))
        .filter(([, r]) => JSON.stringify(r).includes('"Isolated"')).map(([id]) => id);
      expect(group.Properties.SubnetIds.map((r) => r.Ref).sort()).toEqual(isolated.sort());
    });

    test('reachable on 6379 from the proxy group only', () => {
      const cacheSgId = Object.entries(template.findResources('AWS::EC2::SecurityGroup'))
        .find(([, r]) => JSON.stringify(r).includes('Karma Proxy cache'))![0];
      template.hasResourceProperties('AWS::ElastiCache::ReplicationGroup', {
        SecurityGroupIds: [{ 'Fn::GetAtt': [cacheSgId, 'GroupId'] }],
      });
      const rules = Object.values(template.findResources('AWS::EC2::SecurityGroupIngress'))
        .map((r) => (r as { Properties: Record<string, unknown> }).Properties)
        .filter((p) => JSON.stringify(p.GroupId).includes(cacheSgId));
      expect(rules).toEqual([expect.objectContaining({
        IpProtocol: 'tcp', FromPort: 6379, ToPort: 6379,
        SourceSecurityGroupId: { 'Fn::GetAtt': [proxySg[0], 'GroupId'] },
      })]);
      template.hasResourceProperties('AWS::EC2::SecurityGroup', {
        GroupDescription: Match.stringLikeRegexp('cache'),
        SecurityGroupIngress: Match.absent(),
      });
    });

    test('the runtime gets a rediss:// URL with no password and the secret ARN', () => {
      expect(envFile.REDIS_URL).toBe('rediss://TOKEN:TOKEN');
      expect(envFile.REDIS_AUTH_SECRET_ARN).toBe('TOKEN');
      expect(stack.resolve(stack.proxy.runtimeEnvironment.REDIS_AUTH_SECRET_ARN))
        .toEqual({ Ref: logicalId('AWS::SecretsManager::Secret') });
      expect(stack.resolve(stack.proxy.cacheEndpoint))
        .toEqual({ 'Fn::GetAtt': [logicalId('AWS::ElastiCache::ReplicationGroup'), 'PrimaryEndPoint.Address'] });
    });
  });

  describe('IAM', () => {
    test('an EC2 role with Session Manager, and no SSH key anywhere', () => {
      template.hasResourceProperties('AWS::IAM::Role', {
        AssumeRolePolicyDocument: { Statement: [Match.objectLike({ Principal: { Service: 'ec2.amazonaws.com' } })] },
        ManagedPolicyArns: Match.absent(),
      });
      // The agent's calls only: not AmazonSSMManagedInstanceCore, whose ssm:GetParameter* on * reads every parameter.
      template.hasResourceProperties('AWS::IAM::Policy', {
        PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({
          Sid: 'SessionManagerAgent',
          Action: ['ssm:UpdateInstanceInformation', 'ssmmessages:CreateControlChannel', 'ssmmessages:CreateDataChannel', 'ssmmessages:OpenControlChannel', 'ssmmessages:OpenDataChannel'],
        })]) },
      });
      expect(allActions(template).filter((a) => a.startsWith('ssm:') && a !== 'ssm:UpdateInstanceInformation')).toEqual([]);
      template.hasResourceProperties('AWS::EC2::LaunchTemplate', {
        LaunchTemplateData: Match.objectLike({ KeyName: Match.absent() }),
      });
      template.resourceCountIs('AWS::EC2::KeyPair', 0);
      template.resourceCountIs('AWS::IAM::User', 0);
      template.resourceCountIs('AWS::IAM::AccessKey', 0);
    });

    test('exactly the ECS discovery reads, its secret, its bundle, its addresses and its signal', () => {
      expect(new Set(allActions(template))).toEqual(new Set([
        'ecs:ListTasks', 'ecs:ListServices', 'ecs:ListClusters', 'ecs:DescribeTasks', 'ecs:DescribeContainerInstances',
        'ec2:DescribeNetworkInterfaces', 'ec2:DescribeInstances',
        'secretsmanager:GetSecretValue',
        's3:GetObject',
        'ec2:DescribeAddresses', 'ec2:AssociateAddress',
        'cloudformation:SignalResource',
        ...SESSION_MANAGER,
      ]));
    });

    test('a Redis of one\'s own, its token in a secret of one\'s own: that secret, and only it, can be read', () => {
      const arn = 'arn:aws:secretsmanager:us-east-1:123456789012:secret:own-redis-token-AbCdEf';
      const own = constructTemplate({
        domain: 'apps.example.com',
        redis: false,
        environment: { REDIS_URL: 'rediss://own-cache.internal:6379', REDIS_AUTH_SECRET_ARN: arn },
      });
      expect(statementWith(own, 'secretsmanager:GetSecretValue').Resource).toEqual([arn, `${arn}-??????`]);
      // A password would sit between the scheme and an @ of the same URL (which ends at a quote or a line end).
      expect(JSON.stringify(own.toJSON())).not.toMatch(/rediss:\/\/[^"\\\s]*@/);
    });

    test('the secret can be read, only that secret', () => {
      expect(statementWith(template, 'secretsmanager:GetSecretValue').Resource)
        .toEqual({ Ref: logicalId('AWS::SecretsManager::Secret') });
    });

    test('addresses: any can be described, only the fleet\'s can be associated, only to its instances', () => {
      expect(statementWith(template, 'ec2:DescribeAddresses').Resource).toBe('*');
      const assoc = statements(template).filter((s) => actionsOf(s).includes('ec2:AssociateAddress'));
      expect(JSON.stringify(assoc)).toContain(`"Fn::GetAtt":["${logicalId('AWS::EC2::EIP')}","AllocationId"]`);
      expect(assoc.some((s) => s.Resource === '*')).toBe(false);
      const onInstances = assoc.find((s) => JSON.stringify(s.Resource).includes(':instance/*'))!;
      expect(onInstances.Condition).toEqual({ StringEquals: { 'aws:ResourceTag/karma-proxy:pool': stack.proxy.poolId } });
    });

    test('the bundle can be read, and nothing else of the asset bucket: no listing, no other kind of asset', () => {
      const s3 = statementWith(template, 's3:GetObject');
      expect(actionsOf(s3)).toEqual(['s3:GetObject']);
      const resource = JSON.stringify(s3.Resource);
      expect(resource).toContain('cdk-hnb659fds-assets');
      expect(resource).toMatch(/\/\*\.js"/);
    });

    test('no action wildcard beyond the asset grant, and no iam:PassRole', () => {
      const actions = allActions(template);
      expect(actions).not.toContain('*');
      expect(actions.filter((a) => a.endsWith(':*'))).toEqual([]);
      expect(actions).not.toContain('iam:PassRole');
    });
  });

  describe('fleet', () => {
    test('a launch template on Graviton with IMDSv2 required and hop limit 1', () => {
      template.hasResourceProperties('AWS::EC2::LaunchTemplate', {
        LaunchTemplateData: Match.objectLike({
          InstanceType: 't4g.nano',
          MetadataOptions: { HttpTokens: 'required', HttpPutResponseHopLimit: 1 },
          BlockDeviceMappings: [{ DeviceName: '/dev/xvda', Ebs: Match.objectLike({ VolumeType: 'gp3', Encrypted: true, VolumeSize: 8 }) }],
          InstanceMarketOptions: Match.absent(),
        }),
      });
    });

    test('Amazon Linux 2023 arm64, resolved from SSM at deploy', () => {
      const lt = only(template, 'AWS::EC2::LaunchTemplate') as { Properties: { LaunchTemplateData: { ImageId: { Ref: string } } } };
      const param = template.toJSON().Parameters[lt.Properties.LaunchTemplateData.ImageId.Ref];
      expect(param.Type).toBe('AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>');
      expect(param.Default).toMatch(/^\/aws\/service\/ami-amazon-linux-latest\/al2023-ami-.*-arm64$/);
    });

    test('an Auto Scaling group of 1 that waits for signals and rolls updates one by one', () => {
      template.hasResource('AWS::AutoScaling::AutoScalingGroup', {
        Properties: Match.objectLike({ MinSize: '1', MaxSize: '1' }),
        CreationPolicy: { ResourceSignal: { Count: 1, Timeout: 'PT20M' } },
        UpdatePolicy: Match.objectLike({
          AutoScalingRollingUpdate: Match.objectLike({
            MaxBatchSize: 1, MinInstancesInService: 0, WaitOnResourceSignals: true, PauseTime: 'PT20M',
          }),
        }),
      });
    });

    test('the group waits for the role, its policy and the addresses', () => {
      const asg = only(template, 'AWS::AutoScaling::AutoScalingGroup') as { DependsOn: string[] };
      expect(asg.DependsOn).toEqual(expect.arrayContaining([
        logicalId('AWS::IAM::Role'), logicalId('AWS::IAM::Policy'), logicalId('AWS::EC2::EIP'),
      ]));
    });

    test("instances boot only once the public subnets' internet route is in place (and are gone before it is removed)", () => {
      const asg = only(template, 'AWS::AutoScaling::AutoScalingGroup') as { DependsOn: string[] };
      const publicRoutes = template.findResources('AWS::EC2::Route', {
        Properties: { DestinationCidrBlock: '0.0.0.0/0', GatewayId: Match.anyValue() },
      }) as Record<string, { DependsOn: string[] }>;
      expect(Object.keys(publicRoutes)).toHaveLength(2);
      expect(asg.DependsOn).toEqual(expect.arrayContaining(Object.keys(publicRoutes)));
      // Each route waits for the gateway's attachment, so the group does too.
      const [attachment] = Object.keys(template.findResources('AWS::EC2::VPCGatewayAttachment'));
      for (const route of Object.values(publicRoutes)) expect(route.DependsOn).toContain(attachment);
    });

    test('the downloaded bundle is checked against the SHA-256 of the file synth uploaded, before anything runs it', () => {
      const sha = crypto.createHash('sha256').update(fs.readFileSync(KarmaProxy.DEFAULT_BUNDLE_PATH)).digest('hex');
      expect(userData).toContain(`readonly BUNDLE_SHA256='${sha}'`);
      expect(userData.indexOf('sha256sum -c')).toBeGreaterThan(userData.indexOf('aws s3 cp'));
      expect(userData.indexOf('sha256sum -c')).toBeLessThan(userData.indexOf('systemctl enable'));
    });

    test('the boot waits fit the signal timeout: 20 minutes, the health wait 5, an address 10', () => {
      expect(userData).toContain('readonly HEALTH_WAIT_SECONDS=300');
      expect(userData).toContain('readonly ADDRESS_WAIT_SECONDS=600');
    });

    test('user data installs Node.js 22 and the cfn helpers, fetches the bundle, signals the group', () => {
      expect(userData.startsWith('#!/bin/bash\n')).toBe(true);
      expect(userData).toContain('dnf install -y nodejs22 aws-cfn-bootstrap');
      expect(userData).toContain(`aws s3 cp --only-show-errors --region "$REGION" "$BUNDLE_URL" /opt/karma-proxy/karma-proxy.js`);
      expect(userData).toContain(`readonly SIGNAL_RESOURCE='${logicalId('AWS::AutoScaling::AutoScalingGroup')}'`);
      expect(userData).toMatch(/"\$bin" -e "\$1" --stack "\$STACK_NAME" --resource "\$SIGNAL_RESOURCE" --region "\$REGION"/);
      expect(userData).toContain("readonly HEALTH_URL='http://127.0.0.1:6970/healthz'");
      // Health first, then the address, then success.
      const order = ['systemctl enable --now karma-proxy.service', 'until curl -fs', 'until claim_address', 'signal 0'];
      const at = order.map((s) => userData.indexOf(s));
      expect(at.every((i) => i > 0)).toBe(true);
      expect([...at].sort((a, b) => a - b)).toEqual(at);
      const bundleUrl = JSON.stringify(stack.resolve(stack.proxy.bundle.s3ObjectUrl));
      expect(JSON.stringify(template.toJSON())).toContain(bundleUrl.slice(1, -1));
    });

    test('on a small instance, a swap file is made and turned on before dnf runs', () => {
      // dnf can be OOM-killed on the default t4g.nano's 512 MiB.
      const order = [
        "awk '$1 == \"MemTotal:\" { print $2 }' /proc/meminfo",
        'mkswap /swapfile', 'swapon /swapfile', "echo '/swapfile none swap defaults 0 0' >> /etc/fstab",
        'dnf install -y nodejs22 aws-cfn-bootstrap',
      ];
      const at = order.map((s) => userData.indexOf(s));
      expect(at.every((i) => i > 0)).toBe(true);
      expect([...at].sort((a, b) => a - b)).toEqual(at);
    });

    test('the systemd unit runs the bundle unprivileged, hardened, always restarted', () => {
      for (const line of [
        'ExecStart=/usr/bin/node-22 /opt/karma-proxy/karma-proxy.js',
        'EnvironmentFile=/etc/karma-proxy/env',
        'DynamicUser=yes',
        'AmbientCapabilities=CAP_NET_BIND_SERVICE',
        'CapabilityBoundingSet=CAP_NET_BIND_SERVICE',
        'NoNewPrivileges=yes',
        // An ordinary service's system calls only (strace of the bundle serving, scraped and stopped: all
        // in @system-service but pkey_alloc, which V8 tries and does without).
        'SystemCallFilter=@system-service',
        'SystemCallErrorNumber=EPERM',
        'ProtectSystem=strict',
        'ProtectHome=yes',
        'PrivateTmp=yes',
        'Restart=always',
        'KillSignal=SIGTERM',
        'WantedBy=multi-user.target',
      ]) {
        expect(unit.split('\n')).toContain(line);
      }
      expect(Number(/^LimitNOFILE=(\d+)$/m.exec(unit)![1])).toBeGreaterThanOrEqual(65536);
      // systemd waits longer than the runtime's own drain.
      expect(Number(/^TimeoutStopSec=(\d+)$/m.exec(unit)![1])).toBeGreaterThanOrEqual(Number(envFile.SHUTDOWN_TIMEOUT));
      expect(unit).not.toMatch(/^User=root$/m);
    });

    test('the env file: port 80, ecs discovery, the domain, the region', () => {
      expect(envFile).toMatchObject({
        PORT: '80',
        NODE_FILTER: 'ecs',
        DOMAIN: DOMAIN,
        AWS_REGION: 'TOKEN',
        METRICS_PORT: '6970',
        SHUTDOWN_TIMEOUT: '30',
      });
      expect(envFile.ALLOWED_CLUSTERS).toBeUndefined();
      expect(envFile.ALLOWED_PORTS).toBeUndefined();
    });
  });

  describe('addresses and DNS', () => {
    test('one Elastic IP per slot, tagged with the fleet', () => {
      template.resourceCountIs('AWS::EC2::EIP', 1);
      template.hasResourceProperties('AWS::EC2::EIP', {
        Domain: 'vpc',
        Tags: Match.arrayWith([{ Key: 'karma-proxy:pool', Value: stack.proxy.poolId }]),
      });
      expect(userData).toContain(`readonly ADDRESS_TAG_KEY='karma-proxy:pool'`);
      expect(userData).toContain(`readonly ADDRESS_TAG_VALUE='${stack.proxy.poolId}'`);
      expect(userData).toContain('--no-allow-reassociation');
    });

    test('each address is numbered by its slot, and a change of maxCapacity replaces the instances', () => {
      const build = (maxCapacity: number) => {
        const s = new Stack(new App(), 'Test');
        new KarmaProxy(s, 'Proxy', { domain: DOMAIN, redis: false, minCapacity: 1, maxCapacity });
        return Template.fromStack(s);
      };
      const three = build(3);
      const slots = Object.values(three.findResources('AWS::EC2::EIP')).map((r) =>
        (r.Properties.Tags as { Key: string; Value: string }[]).find((t) => t.Key === KarmaProxy.SLOT_TAG_KEY)?.Value);
      expect(slots).toEqual(['1', '2', '3']);
      expect(userDataText(three)).toContain("readonly SLOTS='1,2,3'");
      // From 3 to 2: the user data (and with it the launch template) changes, so a rolling update replaces every
      // instance and none keeps slot 3's address, which CloudFormation then releases.
      expect(userDataText(build(2))).toContain("readonly SLOTS='1,2'");
    });

    test('instances carry the fleet tag that the AssociateAddress condition checks', () => {
      template.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', {
        Tags: Match.arrayWith([{ Key: 'karma-proxy:pool', Value: stack.proxy.poolId, PropagateAtLaunch: true }]),
      });
    });

    test('a wildcard A record in the given zone lists the addresses', () => {
      template.hasResourceProperties('AWS::Route53::RecordSet', {
        Name: `*.${DOMAIN}.`,
        Type: 'A',
        HostedZoneId: ZONE.hostedZoneId,
        TTL: '60',
        ResourceRecords: [{ 'Fn::GetAtt': [logicalId('AWS::EC2::EIP'), 'PublicIp'] }],
      });
    });
  });

  describe('outputs', () => {
    test('the wildcard name, the addresses and the monthly cost next to the ALB floor', () => {
      const outputs = template.toJSON().Outputs;
      expect(outputs.WildcardDomain.Value).toBe(`*.${DOMAIN}`);
      expect(outputs.Addresses.Value).toEqual({ 'Fn::GetAtt': [logicalId('AWS::EC2::EIP'), 'PublicIp'] });
      expect(outputs.MonthlyCostEstimate.Value).toBe(
        '$19.94/month (us-east-1, 2026-11 prices); an ALB starts at $22.27/month before traffic');
    });

    test("the proxy's security group, for the targets' rules that let it in", () => {
      expect(template.toJSON().Outputs.SecurityGroupId.Value).toEqual({ 'Fn::GetAtt': [logicalId('AWS::EC2::SecurityGroup'), 'GroupId'] });
    });
  });
});

test('a Redis of one\'s own reached without TLS while its AUTH token comes from a secret is a warning: the token would cross the network in the clear', () => {
  const arn = 'arn:aws:secretsmanager:us-east-1:123456789012:secret:own-redis-token-AbCdEf';
  const plaintext = (url: string): string[] => {
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, environment: { REDIS_URL: url, REDIS_AUTH_SECRET_ARN: arn } });
    return Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:PlaintextRedisAuth')).map((w) => String(w.entry.data));
  };
  expect(plaintext('rediss://own-cache.internal:6379')).toEqual([]);
  expect(plaintext('redis://own-cache.internal:6379')[0]).toContain("environment.REDIS_URL 'redis://own-cache.internal:6379' is not rediss:// (TLS)");
});

test("more instance slots than a region's default Elastic IP quota is a warning that says to raise it", () => {
  const quotaWarnings = (props: KarmaProxyProps): string[] => {
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, ...props });
    return Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:ElasticIpQuota')).map((w) => String(w.entry.data));
  };
  expect(quotaWarnings({ minCapacity: 5, maxCapacity: 5 })).toEqual([]);
  expect(quotaWarnings({ minCapacity: 6, maxCapacity: 6 })[0]).toContain(
    "maxCapacity (6) makes 6 Elastic IPs, more than a region's default quota of 5 (which other stacks share): raise the quota first, or the deploy fails.");
});

test("more inbound rules than a security group's default quota is a warning, counted per IP version", () => {
  const ruleWarnings = (props: Partial<KarmaProxyProps>): string[] => {
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, ...props });
    return Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:SecurityGroupRuleQuota')).map((w) => String(w.entry.data));
  };
  const v4 = (n: number) => Array.from({ length: n }, (_, i) => `198.51.${i}.0/24`);
  const v6 = (n: number) => Array.from({ length: n }, (_, i) => `2001:db8:${i.toString(16)}::/48`);
  expect(ruleWarnings({ allowedCidrs: v4(30) })).toEqual([]);
  expect(ruleWarnings({ allowedCidrs: [...v4(30), ...v6(30)] })).toEqual([]);
  expect(ruleWarnings({ allowedCidrs: v4(31) })[0]).toContain(
    "allowedCidrs makes 62 inbound IPv4 rules (two per CIDR: ports 80 and 443), more than a security group's default quota of 60: raise the quota first, or the deploy fails");
  // A metrics CIDR counts in its own version, a security group peer in both.
  expect(ruleWarnings({ allowedCidrs: v4(30), metricsPeer: ec2.Peer.ipv6('2001:db8::/32') })).toEqual([]);
  expect(ruleWarnings({ allowedCidrs: v4(30), metricsPeer: ec2.Peer.ipv4('10.0.0.0/16') })[0]).toContain('61 inbound IPv4 rules');
  const withGroupPeer = (() => {
    const stack = new Stack(new App(), 'Test');
    const vpc = new ec2.Vpc(stack, 'Vpc', { natGateways: 0, subnetConfiguration: [{ name: 'Public', subnetType: ec2.SubnetType.PUBLIC }] });
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, vpc, allowedCidrs: v6(30), metricsPeer: new ec2.SecurityGroup(stack, 'Monitoring', { vpc }) });
    return Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp('SecurityGroupRuleQuota')).map((w) => String(w.entry.data));
  })();
  expect(withGroupPeer).toHaveLength(1);
  expect(withGroupPeer[0]).toContain('61 inbound IPv6 rules');
});

test('a VPC of its own is a note at synth: targets elsewhere are reached only at public addresses', () => {
  const note = (props: Partial<KarmaProxyProps>, withVpc = false) => {
    const stack = new Stack(new App(), 'Test');
    const vpc = withVpc ? new ec2.Vpc(stack, 'Services', { natGateways: 0, subnetConfiguration: [{ name: 'Public', subnetType: ec2.SubnetType.PUBLIC }] }) : undefined;
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, vpc, ...props });
    return Annotations.fromStack(stack).findInfo('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:NewVpc')).map((n) => String(n.entry.data));
  };
  expect(note({})).toHaveLength(1);
  expect(note({})[0]).toContain("it reaches awsvpc tasks of another VPC only at their public addresses, with environment IP_PREFERENCE=public (proxyEnv in the app) and their security groups allowing the proxy's Elastic IPs (the Addresses output), and other targets only through peering you add");
  // A pool's instances are found at their private addresses: no public way round.
  expect(note({ discovery: 'asg', asgName: 'web' })[0]).toContain('it reaches your instances (found at their private addresses) only through peering you add');
  expect(note({}, true)).toEqual([]);
  expect(note({ discovery: 'static', staticTargets: ['203.0.113.5:80'] })).toEqual([]);
});

describe('a cache for a single instance', () => {
  const cacheWarnings = (props: KarmaProxyProps): string[] => {
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, ...props });
    return Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:RedisWithOneInstance'))
      .map((w) => String(w.entry.data));
  };

  test('shares nothing, so synth says the node is cost without use, naming the props to change', () => {
    const [warning, ...more] = cacheWarnings({ redis: true });
    expect(more).toEqual([]);
    expect(warning.startsWith(
      'redis is on while maxCapacity is 1: the cache shares discovery results between instances, and the ' +
      'workers of one instance already share them through its primary. The ElastiCache node ' +
      '(cache.t4g.micro, $11.68/month) is cost without use: set redis to false, or raise maxCapacity.',
    )).toBe(true);
    expect(cacheWarnings({ redis: true, redisNodeType: 'cache.r7g.large' })[0]).toContain('(cache.r7g.large) is cost without use');
  });

  test('ecs routing open to every cluster and port is a note at synth; either allow-list ends it', () => {
    const note = (props: Partial<KarmaProxyProps>) => {
      const stack = new Stack(new App(), 'Test');
      new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, ...props });
      return Annotations.fromStack(stack).findInfo('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:OpenRouting'));
    };
    expect(note({})).toHaveLength(1);
    expect(String(note({})[0].entry.data)).toContain('any port of its RUNNING tasks, in any cluster of the account');
    expect(note({ clusters: ['prod'] })).toEqual([]);
    expect(note({ ports: [8080] })).toEqual([]);
    expect(note({ environment: { ALLOWED_PORTS: '8080' } })).toEqual([]);
    expect(note({ environment: { ALLOWED_CLUSTERS: 'prod' } })).toEqual([]);
    // Empty lists allow any: the note stays, as the role stays on every cluster.
    expect(note({ environment: { ALLOWED_CLUSTERS: ' ', ALLOWED_PORTS: '' } })).toHaveLength(1);
    expect(note({ discovery: 'static', staticTargets: ['10.0.0.5:80'] })).toEqual([]);
  });

  test('with the defaults it is a note, not a warning: the default stack synthesizes without warnings', () => {
    expect(cacheWarnings({})).toEqual([]);
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN });
    expect(Annotations.fromStack(stack).findInfo('/Test/Proxy', Match.stringLikeRegexp('RedisWithOneInstance'))).toHaveLength(1);
    expect(Annotations.fromStack(stack).findWarning('*', Match.anyValue())).toEqual([]);
  });

  test('with room for a second instance, or without a cache, there is nothing to say', () => {
    expect(cacheWarnings({ maxCapacity: 2 })).toEqual([]);
    expect(cacheWarnings({ redis: false })).toEqual([]);
  });
});

test('IPv6 CIDRs in allowedCidrs are a warning unless HOST takes IPv6: the rules would open what nothing answers', () => {
  const ipv6Warnings = (props: Partial<KarmaProxyProps>): string[] => {
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, ...props });
    return Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:Ipv6NotServed')).map((w) => String(w.entry.data));
  };
  expect(ipv6Warnings({ allowedCidrs: ['203.0.113.0/24', '2001:db8::/32'] })).toEqual([expect.stringContaining("for IPv6 clients set HOST to '::' in environment")]);
  expect(ipv6Warnings({ allowedCidrs: ['203.0.113.0/24', '2001:db8::/32'], environment: { HOST: '::' } })).toEqual([]);
  expect(ipv6Warnings({ allowedCidrs: ['0.0.0.0/0'] })).toEqual([]);
});

describe('a larger fleet on spot, with allow-lists and runtime settings', () => {
  const { stack, template } = templateOf({
    instanceType: new ec2.InstanceType('t4g.small'),
    minCapacity: 2,
    maxCapacity: 3,
    spot: true,
    clusters: ['prod', 'staging'],
    ports: [80, '8000-8100'],
    allowedCidrs: ['203.0.113.0/24', '2001:db8::/32'],
    metricsPeer: ec2.Peer.ipv4('10.1.0.0/16'),
    healthCheck: {
      path: '/health', interval: Duration.seconds(15), timeout: Duration.millis(2500),
      healthyThreshold: 3, unhealthyThreshold: 4, healthyHttpCodes: '200-299',
    },
    discoveryInterval: Duration.seconds(20),
    shutdownTimeout: Duration.seconds(60),
    environment: { LOG_CONNECTIONS: 'true', RETRIES: '1', DOMAIN: 'apps.example.com' },
  });
  const userData = userDataText(template);
  const envFile = parseEnvFile(heredocBody(userData, 'KARMA_PROXY_ENV'));

  test('spot instances of the chosen type', () => {
    template.hasResourceProperties('AWS::EC2::LaunchTemplate', {
      LaunchTemplateData: Match.objectLike({
        InstanceType: 't4g.small',
        InstanceMarketOptions: { MarketType: 'spot', SpotOptions: Match.objectLike({ SpotInstanceType: 'one-time' }) },
      }),
    });
  });

  test('one address per slot, all in the record; updates keep the others in service', () => {
    template.resourceCountIs('AWS::EC2::EIP', 3);
    const eips = Object.keys(template.findResources('AWS::EC2::EIP'));
    template.hasResourceProperties('AWS::Route53::RecordSet', {
      ResourceRecords: eips.map((id) => ({ 'Fn::GetAtt': [id, 'PublicIp'] })),
    });
    template.hasResource('AWS::AutoScaling::AutoScalingGroup', {
      Properties: Match.objectLike({ MinSize: '2', MaxSize: '3' }),
      CreationPolicy: { ResourceSignal: Match.objectLike({ Count: 2 }) },
      UpdatePolicy: Match.objectLike({ AutoScalingRollingUpdate: Match.objectLike({ MinInstancesInService: 2, MaxBatchSize: 1 }) }),
    });
    expect(stack.proxy.addresses).toHaveLength(3);
  });

  test('80 and 443 from the given CIDRs only; metrics from its peer only', () => {
    template.hasResourceProperties('AWS::EC2::SecurityGroup', {
      SecurityGroupIngress: [
        Match.objectLike({ CidrIp: '203.0.113.0/24', FromPort: 80, ToPort: 80 }),
        Match.objectLike({ CidrIp: '203.0.113.0/24', FromPort: 443, ToPort: 443 }),
        Match.objectLike({ CidrIpv6: '2001:db8::/32', FromPort: 80, ToPort: 80 }),
        Match.objectLike({ CidrIpv6: '2001:db8::/32', FromPort: 443, ToPort: 443 }),
        Match.objectLike({ CidrIp: '10.1.0.0/16', FromPort: 6970, ToPort: 6970 }),
      ],
    });
    expect(JSON.stringify(template.toJSON())).not.toContain('"CidrIp":"0.0.0.0/0","Description":"HTTP');
  });

  test('ECS reads are limited to the given clusters', () => {
    const all = statements(template);
    const list = all.find((s) => actionsOf(s).includes('ecs:ListTasks'))!;
    expect(actionsOf(list)).toContain('ecs:ListServices');
    expect(JSON.stringify(list.Condition)).toMatch(/"ArnEquals":\{"ecs:cluster":\[.*:cluster\/prod".*:cluster\/staging"/);
    const describe = all.find((s) => actionsOf(s).includes('ecs:DescribeTasks'))!;
    expect(JSON.stringify(describe.Resource)).toMatch(/:task\/prod\/\*".*:task\/staging\/\*"/);
    // An allowed cluster is asked for as spelled, never looked up: the account's cluster names are not the role's to list.
    expect(allActions(template)).not.toContain('ecs:ListClusters');
  });

  test('ALLOWED_CLUSTERS given in environment (proxyEnv) limits the role as clusters does', () => {
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, environment: { ALLOWED_CLUSTERS: 'prod, staging' } });
    const all = statements(Template.fromStack(stack));
    const list = all.find((s) => actionsOf(s).includes('ecs:ListTasks'))!;
    expect(JSON.stringify(list.Condition)).toMatch(/"ArnEquals":\{"ecs:cluster":\[.*:cluster\/prod".*:cluster\/staging"/);
    expect(JSON.stringify(all.find((s) => actionsOf(s).includes('ecs:DescribeTasks'))!.Resource)).toMatch(/:task\/prod\/\*".*:task\/staging\/\*"/);
  });

  const newCluster = (stack: Stack): ecs.Cluster => new ecs.Cluster(stack, 'C', { vpc: new ec2.Vpc(stack, 'V', { natGateways: 0 }) });
  test.each([
    ['a name in mixed case (CloudFormation\'s)', () => 'MyStack-Cluster-1A2B', ':cluster/MyStack-Cluster-1A2B"', 'MyStack-Cluster-1A2B'],
    ['a token (cluster.clusterName)', (stack: Stack) => newCluster(stack).clusterName, '":cluster/",{"Ref":"C', 'TOKEN'],
    ['an ARN', () => 'arn:aws:ecs:us-east-1:123456789012:cluster/MyStack-Cluster-1A2B', ':cluster/MyStack-Cluster-1A2B"', 'MyStack-Cluster-1A2B'],
    // The ARN's name, cut out by CloudFormation: not an ARN inside an ARN.
    ['a token (cluster.clusterArn)', (stack: Stack) => newCluster(stack).clusterArn, '":cluster/",{"Fn::Select":[1,{"Fn::Split":[":cluster/",{"Fn::GetAtt":["C', 'TOKEN'],
  ])('clusters as %s: the role allows that cluster alone, and the runtime asks ECS for it by that spelling', (_what, name, arnEnd, allowed) => {
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, clusters: [name(stack)] });
    const template = Template.fromStack(stack);
    const all = statements(template);
    const list = all.find((s) => actionsOf(s).includes('ecs:ListTasks'))!.Condition as { ArnEquals: Record<string, unknown[]> };
    // One cluster: not also a lower-case namesake the role has no business reading.
    expect(list.ArnEquals['ecs:cluster']).toHaveLength(1);
    expect(JSON.stringify(list)).toContain(arnEnd);
    expect(JSON.stringify(all.find((s) => actionsOf(s).includes('ecs:DescribeTasks'))!.Resource)).not.toMatch(/mystack-cluster-1a2b/);
    // The runtime is given the name as spelled (ALLOWED_CLUSTERS), and asks ECS by it (test/runtime/discovery/ecs.test.ts).
    expect(parseEnvFile(userDataText(template)).ALLOWED_CLUSTERS).toBe(allowed);
  });

  test("a cluster ARN of another region or account is refused where the stack's are known: it would name a namesake here", () => {
    const build = (arn: string) => () => {
      const stack = new Stack(new App(), 'Test', { env: { account: '123456789012', region: 'us-east-1' } });
      new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, clusters: [arn] });
    };
    expect(build('arn:aws:ecs:eu-west-1:123456789012:cluster/prod'))
      .toThrow("clusters entry 'arn:aws:ecs:eu-west-1:123456789012:cluster/prod' is in eu-west-1, not in this stack's region us-east-1");
    expect(build('arn:aws:ecs:us-east-1:999999999999:cluster/prod'))
      .toThrow("clusters entry 'arn:aws:ecs:us-east-1:999999999999:cluster/prod' is in account 999999999999, not in this stack's account 123456789012");
    expect(build('arn:aws:ecs:us-east-1:123456789012:cluster/prod')).not.toThrow();
    // An environment-agnostic stack cannot tell: the ARN's name is taken.
    expect(() => new KarmaProxy(new Stack(new App(), 'Test'), 'Proxy', { domain: DOMAIN, redis: false, clusters: ['arn:aws:ecs:eu-west-1:999999999999:cluster/prod'] })).not.toThrow();
  });

  test('runtime settings from the props, then environment on top', () => {
    expect(envFile).toMatchObject({
      // The role allows ListClusters and ListServices: ECS names in any case are looked up.
      ECS_CASE_LOOKUP: 'true',
      ALLOWED_CLUSTERS: 'prod,staging',
      ALLOWED_PORTS: '80,8000-8100',
      HEALTH_CHECK_PATH: '/health',
      HEALTH_CHECK_PERIOD: '15',
      HEALTH_CHECK_TIMEOUT: '2.5',
      HEALTHY_THRESHOLD: '3',
      UNHEALTHY_THRESHOLD: '4',
      HEALTH_CHECK_MATCHER: '200-299',
      NODE_CHECK_PERIOD: '20',
      SHUTDOWN_TIMEOUT: '60',
      LOG_CONNECTIONS: 'true',
      RETRIES: '1',
    });
    expect(Number(/^TimeoutStopSec=(\d+)$/m.exec(userData)![1])).toBeGreaterThanOrEqual(60);
  });

  test('the cost estimate counts three addresses, two spot instances and the cache', () => {
    const e = stack.proxy.costEstimate;
    expect(e.lines.find((l) => l.item.startsWith('Elastic IP'))!.quantity).toBe(3);
    expect(e.lines.find((l) => l.item.startsWith('EC2'))).toMatchObject({ quantity: 2, unitMonthlyUsd: 4.09 });
  });
});

describe('environment overrides', () => {
  test('an env var from environment wins over the prop that sets it', () => {
    const stack = new Stack(new App(), 'Test');
    const proxy = new KarmaProxy(stack, 'Proxy', {
      domain: DOMAIN, redis: false, metricsPort: 7000,
      environment: { METRICS_PORT: '7100', NODE_FILTER: 'ecs', SHUTDOWN_TIMEOUT: '90' },
    });
    expect(proxy.runtimeEnvironment).toMatchObject({ METRICS_PORT: '7100', SHUTDOWN_TIMEOUT: '90' });
    const userData = userDataText(Template.fromStack(stack));
    expect(userData).toContain("readonly HEALTH_URL='http://127.0.0.1:7100/healthz'");
    expect(userData).toMatch(/^TimeoutStopSec=105$/m);
  });
});

describe('discovery modes get exactly their reads', () => {
  const base = { redis: false } as const;
  const discoveryActions = (t: Template): string[] => allActions(t).filter((a) =>
    a.startsWith('ecs:') || a.startsWith('autoscaling:') || a === 'ec2:DescribeInstances' || a === 'ec2:DescribeNetworkInterfaces');

  test('asg', () => {
    const t = constructTemplate({ ...base, discovery: 'asg', asgName: 'workers', targetPort: 8080 });
    expect(discoveryActions(t).sort()).toEqual(['autoscaling:DescribeAutoScalingGroups', 'ec2:DescribeInstances']);
    const env = parseEnvFile(heredocBody(userDataText(t), 'KARMA_PROXY_ENV'));
    expect(env).toMatchObject({ NODE_FILTER: 'asg', ASG_NAME: 'workers', TARGET_PORT: '8080' });
    expect(env.DOMAIN).toBeUndefined();
  });

  test('tag', () => {
    const t = constructTemplate({ ...base, discovery: 'tag', tagName: 'Role', tagValue: 'web' });
    expect(discoveryActions(t)).toEqual(['ec2:DescribeInstances']);
    const env = parseEnvFile(heredocBody(userDataText(t), 'KARMA_PROXY_ENV'));
    expect(env).toMatchObject({ NODE_FILTER: 'tag', TAG_NAME: 'Role', TAG_VALUE: 'web' });
  });

  test('static', () => {
    const t = constructTemplate({ ...base, discovery: 'static', staticTargets: ['10.0.1.10:8080', '10.0.1.11:8080'] });
    expect(discoveryActions(t)).toEqual([]);
    const env = parseEnvFile(heredocBody(userDataText(t), 'KARMA_PROXY_ENV'));
    expect(env).toMatchObject({ NODE_FILTER: 'static', STATIC_TARGETS: '10.0.1.10:8080,10.0.1.11:8080' });
    expect(env.HEALTH_CHECK_PROTOCOL).toBeUndefined();
  });

  test('static without the redis prop: no cache, no secret, nothing of Redis in the env file (the pool is not discovered: nothing to share)', () => {
    const t = constructTemplate({ discovery: 'static', staticTargets: ['10.0.1.10:8080'], minCapacity: 2, maxCapacity: 2 });
    t.resourceCountIs('AWS::ElastiCache::ReplicationGroup', 0);
    t.resourceCountIs('AWS::SecretsManager::Secret', 0);
    expect(allActions(t)).not.toContain('secretsmanager:GetSecretValue');
    const env = parseEnvFile(heredocBody(userDataText(t), 'KARMA_PROXY_ENV'));
    expect(env.REDIS_URL).toBeUndefined();
    expect(env.REDIS_AUTH_SECRET_ARN).toBeUndefined();
    // Every other mode keeps its cache by default.
    constructTemplate({ discovery: 'tag', tagName: 'Role', tagValue: 'web', minCapacity: 2, maxCapacity: 2 }).resourceCountIs('AWS::ElastiCache::ReplicationGroup', 1);
  });

  test('a raw TCP pool of another protocol, checked by connecting', () => {
    const t = constructTemplate({ ...base, discovery: 'static', staticTargets: ['10.0.1.10:5432'], healthCheck: { protocol: 'tcp' }, environment: { MODE: 'tcp' } });
    const env = parseEnvFile(heredocBody(userDataText(t), 'KARMA_PROXY_ENV'));
    expect(env).toMatchObject({ MODE: 'tcp', HEALTH_CHECK_PROTOCOL: 'tcp' });
  });

  test('ecs without clusters reads any cluster', () => {
    const t = constructTemplate({ ...base, domain: DOMAIN });
    const ecs = statementWith(t, 'ecs:ListTasks');
    expect(actionsOf(ecs).sort()).toEqual(['ecs:DescribeContainerInstances', 'ecs:DescribeTasks', 'ecs:ListServices', 'ecs:ListTasks']);
    expect(statementWith(t, 'ecs:ListClusters').Resource).toBe('*');
    expect(ecs.Resource).toBe('*');
    expect(ecs.Condition).toBeUndefined();
  });
});

test('a pinned image is the one the instances boot; the default is the latest Amazon Linux 2023 arm64, from SSM', () => {
  const pinned = constructTemplate({ domain: DOMAIN, redis: false, machineImage: ec2.MachineImage.genericLinux({ 'us-east-1': 'ami-0123456789abcdef0' }) });
  // env-agnostic stack: the image comes from a region mapping that holds the pinned id.
  expect(JSON.stringify(pinned.findResources('AWS::EC2::LaunchTemplate'))).toContain('"ImageId":{"Fn::FindInMap"');
  expect(JSON.stringify(pinned.toJSON().Mappings)).toContain('ami-0123456789abcdef0');
  const latest = constructTemplate({ domain: DOMAIN, redis: false });
  expect(JSON.stringify(latest.toJSON().Parameters)).toContain('/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-arm64');
});

describe('IConnectable', () => {
  test('a service can let the proxy in with connections.allowFrom', () => {
    const stack = new Stack(new App(), 'Test');
    const vpc = new ec2.Vpc(stack, 'AppVpc', { natGateways: 0, maxAzs: 2, restrictDefaultSecurityGroup: false });
    const proxy = new KarmaProxy(stack, 'Proxy', { vpc, domain: DOMAIN, redis: false });
    const serviceSg = new ec2.SecurityGroup(stack, 'Service', { vpc });
    serviceSg.connections.allowFrom(proxy, ec2.Port.tcp(8080));
    const t = Template.fromStack(stack);
    t.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      IpProtocol: 'tcp', FromPort: 8080, ToPort: 8080,
      GroupId: { 'Fn::GetAtt': [stack.getLogicalId(serviceSg.node.defaultChild as ec2.CfnSecurityGroup), 'GroupId'] },
      SourceSecurityGroupId: { 'Fn::GetAtt': [stack.getLogicalId(proxy.securityGroup.node.defaultChild as ec2.CfnSecurityGroup), 'GroupId'] },
    });
    expect(proxy.connections.securityGroups).toEqual([proxy.securityGroup]);
    expect(proxy.connections.defaultPort?.toString()).toBe('80');
  });

  test('an existing role and security group are used, and given what the proxy needs', () => {
    const stack = new Stack(new App(), 'Test');
    const vpc = new ec2.Vpc(stack, 'AppVpc', { natGateways: 0, maxAzs: 2, restrictDefaultSecurityGroup: false });
    const role = iam.Role.fromRoleArn(stack, 'Role', 'arn:aws:iam::123456789012:role/my-proxy-role');
    const securityGroup = ec2.SecurityGroup.fromSecurityGroupId(stack, 'Sg', 'sg-0123456789abcdef0');
    const proxy = new KarmaProxy(stack, 'Proxy', { vpc, role, securityGroup, domain: DOMAIN, redis: false });
    expect(proxy.role).toBe(role);
    expect(proxy.securityGroup).toBe(securityGroup);
    const t = Template.fromStack(stack);
    t.resourceCountIs('AWS::IAM::Role', 0);
    t.hasResourceProperties('AWS::IAM::InstanceProfile', { Roles: ['my-proxy-role'] });
    t.hasResourceProperties('AWS::IAM::Policy', {
      Roles: ['my-proxy-role'],
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Action: 'ec2:AssociateAddress' })]) },
    });
    t.hasResourceProperties('AWS::EC2::SecurityGroupIngress', { GroupId: 'sg-0123456789abcdef0', FromPort: 80, CidrIp: '0.0.0.0/0' });
  });

  test('a security group you give that restricts egress is given the way out to the cache', () => {
    const stack = new Stack(new App(), 'Test');
    const vpc = new ec2.Vpc(stack, 'AppVpc', { natGateways: 0, maxAzs: 2, restrictDefaultSecurityGroup: false });
    const securityGroup = new ec2.SecurityGroup(stack, 'Locked', { vpc, allowAllOutbound: false });
    const proxy = new KarmaProxy(stack, 'Proxy', { vpc, securityGroup, domain: DOMAIN });
    const t = Template.fromStack(stack);
    const cacheSgId = { 'Fn::GetAtt': [stack.getLogicalId(proxy.cacheSecurityGroup!.node.defaultChild as ec2.CfnSecurityGroup), 'GroupId'] };
    const proxySgId = { 'Fn::GetAtt': [stack.getLogicalId(securityGroup.node.defaultChild as ec2.CfnSecurityGroup), 'GroupId'] };
    t.hasResourceProperties('AWS::EC2::SecurityGroupIngress', { GroupId: cacheSgId, SourceSecurityGroupId: proxySgId, FromPort: 6379, ToPort: 6379 });
    t.hasResourceProperties('AWS::EC2::SecurityGroupEgress', { GroupId: proxySgId, DestinationSecurityGroupId: cacheSgId, FromPort: 6379, ToPort: 6379 });
  });

  test("a role you give gets what the proxy needs and no Session Manager: who may open a shell is its owner's call", () => {
    const stack = new Stack(new App(), 'Test');
    const role = iam.Role.fromRoleArn(stack, 'Role', 'arn:aws:iam::123456789012:role/my-proxy-role');
    new KarmaProxy(stack, 'Proxy', { role, domain: DOMAIN, redis: false });
    const actions = allActions(Template.fromStack(stack));
    expect(actions).toEqual(expect.arrayContaining(['ec2:AssociateAddress', 's3:GetObject', 'cloudformation:SignalResource']));
    expect(actions.filter((a) => KarmaProxy.SESSION_MANAGER_ACTIONS.includes(a))).toEqual([]);
    expect(KarmaProxy.SESSION_MANAGER_ACTIONS).toEqual(SESSION_MANAGER);
    expect(Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('RoleNotGranted'))).toEqual([]);
  });

  test("a role of another stack: the boot's cfn-signal is granted on this stack, in this construct's policy", () => {
    // The group grants SignalResource on AWS::StackId in the role's own stack, which is the other stack's ID.
    const app = new App();
    const net = new Stack(app, 'Net');
    const role = new iam.Role(net, 'ProxyRole', { assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com') });
    const stack = new Stack(app, 'Proxy');
    new KarmaProxy(stack, 'P', { role, domain: DOMAIN, redis: false });
    const signal = statements(Template.fromStack(stack)).filter((s) => actionsOf(s).includes('cloudformation:SignalResource'));
    expect(signal).toHaveLength(1);
    expect(signal[0].Resource).toEqual({ Ref: 'AWS::StackId' });
    // The same role in the construct's own stack keeps the group's grant alone.
    const same = new Stack(new App(), 'Same');
    new KarmaProxy(same, 'P', { role: new iam.Role(same, 'R', { assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com') }), domain: DOMAIN, redis: false });
    expect(statements(Template.fromStack(same)).filter((s) => actionsOf(s).includes('cloudformation:SignalResource'))).toHaveLength(1);
  });

  describe('a role that keeps no statements', () => {
    const ARN = 'arn:aws:iam::123456789012:role/my-proxy-role';
    test.each<[string, (stack: Stack) => iam.IRole]>([
      ['imported with mutable: false', (stack) => iam.Role.fromRoleArn(stack, 'Role', ARN, { mutable: false })],
      ['imported with mutable: false and addGrantsToResources (statementAdded false)',
        (stack) => iam.Role.fromRoleArn(stack, 'Role', ARN, { mutable: false, addGrantsToResources: true })],
      ['of another account', (stack) => iam.Role.fromRoleArn(stack, 'Role', 'arn:aws:iam::999999999999:role/my-proxy-role')],
    ])('%s: synth warns, naming the role prop and every action to grant', (_name, importRole) => {
      const stack = new Stack(new App(), 'Test', { env: { account: '123456789012', region: 'us-east-1' } });
      new KarmaProxy(stack, 'Proxy', { role: importRole(stack), domain: DOMAIN, clusters: ['prod'] });
      Template.fromStack(stack).resourceCountIs('AWS::IAM::Policy', 0);
      const warnings = Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:RoleNotGranted'));
      expect(warnings).toHaveLength(1);
      const text = String(warnings[0].entry.data);
      expect(text).toMatch(/^The role prop \('my-proxy-role'\) takes no statements: it is immutable/);
      expect(text).toContain('Grant it yourself: ecs:ListTasks, ecs:ListServices, ecs:DescribeContainerInstances, ecs:DescribeTasks, ' +
        'ec2:DescribeNetworkInterfaces, ec2:DescribeInstances, s3:GetObject, ' +
        'secretsmanager:GetSecretValue, ec2:DescribeAddresses, ec2:AssociateAddress, cloudformation:SignalResource.');
    });

    test("the construct's own role takes everything and gets no such warning", () => {
      const stack = new Stack(new App(), 'Test');
      new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, clusters: ['prod'] });
      expect(Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('RoleNotGranted'))).toEqual([]);
    });
  });

  test('a mistyped setting in environment is named at synth with the one it is likely meant to be', () => {
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false, environment: { HEALTH_CHEK_PATH: '/health', LOG_CONNECTIONS: 'true' } });
    const warnings = Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:UnknownSetting'));
    expect(warnings.map((w) => String(w.entry.data))).toEqual([
      expect.stringMatching(/^environment\.HEALTH_CHEK_PATH is not a setting of the proxy and would be ignored; did you mean HEALTH_CHECK_PATH\?/),
    ]);
  });

  describe('a security group the user brings', () => {
    const find = (stack: Stack, id: string) => Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp(id));
    test('with outbound traffic restricted: synth warns, naming the prop', () => {
      const stack = new Stack(new App(), 'Test');
      const vpc = new ec2.Vpc(stack, 'Vpc', { natGateways: 0, restrictDefaultSecurityGroup: false });
      const securityGroup = new ec2.SecurityGroup(stack, 'Mine', { vpc, allowAllOutbound: false });
      new KarmaProxy(stack, 'Proxy', { vpc, securityGroup, domain: DOMAIN, redis: false });
      const warnings = find(stack, 'KarmaProxy:SecurityGroupOutbound');
      expect(warnings).toHaveLength(1);
      expect(String(warnings[0].entry.data)).toMatch(/^The securityGroup prop \(Test\/Mine\) does not allow all outbound traffic/);
      expect(find(stack, 'KarmaProxy:SecurityGroupImmutable')).toEqual([]);
    });

    test('imported with mutable: false takes no rules: synth warns that 80 and 443 are the user\'s to open', () => {
      const stack = new Stack(new App(), 'Test');
      const securityGroup = ec2.SecurityGroup.fromSecurityGroupId(stack, 'Mine', 'sg-0123456789abcdef0', { mutable: false });
      new KarmaProxy(stack, 'Proxy', { securityGroup, domain: DOMAIN, redis: false });
      Template.fromStack(stack).resourceCountIs('AWS::EC2::SecurityGroupIngress', 0);
      const warnings = find(stack, 'KarmaProxy:SecurityGroupImmutable');
      expect(warnings).toHaveLength(1);
      expect(String(warnings[0].entry.data)).toContain('open ports 80 and 443 to allowedCidrs');
    });

    test('imported and mutable, with the rules already there (another proxy, or the user), gets no warning', () => {
      const stack = new Stack(new App(), 'Test');
      const securityGroup = ec2.SecurityGroup.fromSecurityGroupId(stack, 'Mine', 'sg-0123456789abcdef0');
      securityGroup.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(80), 'HTTP from 0.0.0.0/0');
      securityGroup.addIngressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS from 0.0.0.0/0');
      new KarmaProxy(stack, 'Proxy', { securityGroup, domain: DOMAIN, redis: false });
      new KarmaProxy(stack, 'Other', { securityGroup, domain: 'other.example.com', redis: false });
      Template.fromStack(stack).resourceCountIs('AWS::EC2::SecurityGroupIngress', 2);
      expect(Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('KarmaProxy:SecurityGroup'))).toEqual([]);
    });

    test('imported as it is by default (mutable, all outbound) gets its rules and no warning', () => {
      const stack = new Stack(new App(), 'Test');
      const securityGroup = ec2.SecurityGroup.fromSecurityGroupId(stack, 'Mine', 'sg-0123456789abcdef0');
      new KarmaProxy(stack, 'Proxy', { securityGroup, domain: DOMAIN, redis: false });
      Template.fromStack(stack).resourceCountIs('AWS::EC2::SecurityGroupIngress', 2);
      expect(Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('KarmaProxy:SecurityGroup'))).toEqual([]);
    });
  });

  test('one app deployed twice (staging, production) gives each fleet a pool of its own', () => {
    const app = new App();
    const pools = ['karma-staging', 'karma-production'].map((stackName) =>
      new KarmaProxy(new Stack(app, stackName), 'Proxy', { domain: DOMAIN, redis: false }).poolId);
    expect(pools[0]).not.toBe(pools[1]);
    expect(pools[0].startsWith('karma-staging.')).toBe(true);
    expect(pools.every((p) => /^[A-Za-z0-9 +=._:/@-]{1,256}$/.test(p))).toBe(true); // what an EC2 tag value may hold
  });

  test('no hosted zone: no record, the addresses are still there', () => {
    const stack = new Stack(new App(), 'Test');
    const proxy = new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, redis: false });
    const t = Template.fromStack(stack);
    t.resourceCountIs('AWS::Route53::RecordSet', 0);
    t.resourceCountIs('AWS::EC2::EIP', 1);
    expect(proxy.wildcardRecord).toBeUndefined();
    expect(proxy.wildcardDomainName).toBe(`*.${DOMAIN}`);
  });

  test("with a zone and no domain, the domain is the zone's name", () => {
    const stack = new Stack(new App(), 'Test');
    const zone = route53.HostedZone.fromHostedZoneAttributes(stack, 'Zone', { hostedZoneId: 'Z0APEX', zoneName: 'example.com' });
    const proxy = new KarmaProxy(stack, 'Proxy', { hostedZone: zone, redis: false });
    expect(proxy.runtimeEnvironment.DOMAIN).toBe('example.com');
    Template.fromStack(stack).hasResourceProperties('AWS::Route53::RecordSet', { Name: '*.example.com.', HostedZoneId: 'Z0APEX' });
  });

  test('a stack given nothing synthesizes with example values and a warning', () => {
    const stack = new KarmaProxyStack(new App(), 'KarmaProxy');
    expect(stack.usesExampleValues).toBe(true);
    Annotations.fromStack(stack).hasWarning('/KarmaProxy', Match.stringLikeRegexp('example values'));
    Template.fromStack(stack).hasResourceProperties('AWS::Route53::RecordSet', { Name: '*.proxy.example.com.' });
  });

  test('a zone known only by id takes the record too (the name is absolute)', () => {
    const stack = new Stack(new App(), 'Test');
    const zone = route53.HostedZone.fromHostedZoneId(stack, 'Zone', 'Z0BYID');
    new KarmaProxy(stack, 'Proxy', { domain: DOMAIN, hostedZone: zone, redis: false });
    Template.fromStack(stack).hasResourceProperties('AWS::Route53::RecordSet', {
      Name: `*.${DOMAIN}.`, HostedZoneId: 'Z0BYID',
    });
  });
});
