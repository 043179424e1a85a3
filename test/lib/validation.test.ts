/** Bad props fail at synth with one error that names every problem, in words a user can act on. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { App, CfnParameter, Duration, SecretValue, Stack } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as route53 from 'aws-cdk-lib/aws-route53';
import { KarmaProxy, KarmaProxyProps, KarmaProxyStack } from '../../lib';

function build(props: KarmaProxyProps, withZone = false): () => KarmaProxy {
  return () => {
    const stack = new Stack(new App(), 'Test');
    const hostedZone = withZone
      ? route53.HostedZone.fromHostedZoneAttributes(stack, 'Zone', { hostedZoneId: 'Z0TEST', zoneName: 'example.com' })
      : undefined;
    return new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false, hostedZone, ...props });
  };
}

function messageOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error('expected an error');
}

describe('one problem, its exact message', () => {
  test.each<[string, KarmaProxyProps, string, boolean?]>([
    ['min above max', { minCapacity: 3, maxCapacity: 2 }, 'minCapacity (3) must not exceed maxCapacity (2)'],
    ['a domain outside the zone', { domain: 'x.other.com' }, "domain 'x.other.com' is not inside hosted zone 'example.com'", true],
    ['a zone name that only ends like the zone', { domain: 'notexample.com' }, "domain 'notexample.com' is not inside hosted zone 'example.com'", true],
    ['min of zero', { minCapacity: 0, maxCapacity: 1 }, 'minCapacity (0) must be a whole number of at least 1'],
    ['an x86 instance type', { instanceType: new ec2.InstanceType('t3.micro') },
      "instanceType 't3.micro' is not an ARM Graviton (arm64) type: the image and Node.js are arm64 (use t4g, c7g, m7g...)"],
    ['an instance type in upper case (EC2 has none)', { instanceType: new ec2.InstanceType('T4G.NANO') },
      "instanceType 'T4G.NANO' is not an EC2 instance type: a family and a size in lower case, such as t4g.nano"],
    ['a family without a size', { instanceType: new ec2.InstanceType('t4g') },
      "instanceType 't4g' is not an EC2 instance type: a family and a size in lower case, such as t4g.nano"],
    ['an x86 metal type whose size has a hyphen', { instanceType: ec2.InstanceType.of(ec2.InstanceClass.M7I, ec2.InstanceSize.XLARGE24METAL) },
      "instanceType 'm7i.metal-24xl' is not an ARM Graviton (arm64) type: the image and Node.js are arm64 (use t4g, c7g, m7g...)"],
    ['an x86 image, as latestAmazonLinux2023() is unless told arm64', { machineImage: ec2.MachineImage.latestAmazonLinux2023() },
      'machineImage is an x86_64 image (SSM parameter /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64): Graviton instances need arm64 ' +
        '(ec2.MachineImage.latestAmazonLinux2023({ cpuType: ec2.AmazonLinuxCpuType.ARM_64 }))'],
    ['an x86 image resolved at launch', { machineImage: ec2.MachineImage.resolveSsmParameterAtLaunch('/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64') },
      'machineImage is an x86_64 image (SSM parameter /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64)'],
    ['an Amazon Linux 2 image', { machineImage: ec2.MachineImage.latestAmazonLinux2({ cpuType: ec2.AmazonLinuxCpuType.ARM_64 }) },
      'machineImage is not Amazon Linux 2023 (SSM parameter /aws/service/ami-amazon-linux-latest/amzn2-ami-kernel-5.10-hvm-arm64-gp2): ' +
        'the boot script needs it (dnf and its nodejs22 package)'],
    ['the ECS-optimized Amazon Linux 2, arm64', { machineImage: ecs.EcsOptimizedImage.amazonLinux2(ecs.AmiHardwareType.ARM) },
      'machineImage is not Amazon Linux 2023 (SSM parameter /aws/service/ecs/optimized-ami/amazon-linux-2/arm64/recommended/image_id)'],
    ['the ECS-optimized Amazon Linux 2023 on x86 (its name says no CPU)', { machineImage: ecs.EcsOptimizedImage.amazonLinux2023() },
      'machineImage is an x86_64 image (SSM parameter /aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id)'],
    ['the ECS-optimized Amazon Linux 1', { machineImage: ecs.EcsOptimizedImage.amazonLinux() },
      'machineImage is'],
    ['Bottlerocket', { machineImage: new ecs.BottleRocketImage({ architecture: ec2.InstanceArchitecture.ARM_64 }) },
      'machineImage is not Amazon Linux 2023'],
    ['a Windows image by its SSM parameter alone', { machineImage: ec2.MachineImage.fromSsmParameter('/aws/service/ami-windows-latest/Windows_Server-2022-English-Full-Base') },
      'machineImage is a Windows image'],
    ['a Windows image looked up', { machineImage: ec2.MachineImage.lookup({ name: 'Windows_Server-2022-*', windows: true }) },
      'machineImage is a Windows image'],
    ['the ECS-optimized Windows image', { machineImage: ecs.EcsOptimizedImage.windows(ecs.WindowsOptimizedVersion.SERVER_2022) },
      'machineImage is a Windows image'],
    ['a Windows image', { machineImage: ec2.MachineImage.latestWindows(ec2.WindowsVersion.WINDOWS_SERVER_2022_ENGLISH_FULL_BASE) },
      'machineImage is a Windows image: the instances boot a Linux script (Amazon Linux 2023 arm64)'],
    ['an x86 image cached in context', { machineImage: ec2.MachineImage.latestAmazonLinux2023({ cachedInContext: true }) },
      'machineImage is an x86_64 image (SSM parameter /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64)'],
    ['a Windows image by its id', { machineImage: ec2.MachineImage.genericWindows({ 'us-east-1': 'ami-0123456789abcdef0' }) },
      'machineImage is a Windows image'],
    ['no domain in ecs mode', { domain: undefined },
      "domain is required when discovery is 'ecs' (routes are <service>-<port>-<cluster>.<domain>)"],
    ['a bad domain', { domain: 'not a domain' }, "domain 'not a domain' is not a DNS name such as apps.example.com"],
    ['a bad domain, quoted as given', { domain: 'Bad_Domain.example.com' }, "domain 'Bad_Domain.example.com' is not a DNS name such as apps.example.com"],
    ['static with no targets', { discovery: 'static' }, "staticTargets is required when discovery is 'static' (host:port each)"],
    ['a bad static target', { discovery: 'static', staticTargets: ['10.0.0.1'] }, "staticTargets entry '10.0.0.1' must be host:port"],
    ['a bad CIDR', { allowedCidrs: ['10.0.0.0/33'] }, "allowedCidrs entry '10.0.0.0/33' is not a CIDR such as 0.0.0.0/0 or 203.0.113.0/24"],
    ['a CIDR with bits past its prefix', { allowedCidrs: ['203.0.113.7/24'] },
      "allowedCidrs entry '203.0.113.7/24' has bits set past its /24 prefix: give 203.0.113.0/24, or 203.0.113.7/32 for one address"],
    ['a metrics CIDR that is no address', { metricsPeer: ec2.Peer.ipv4('999.0.0.0/8') }, 'metricsPeer 999.0.0.0/8 is not a CIDR such as 10.0.0.0/16'],
    ['a metrics CIDR with bits past its prefix', { metricsPeer: ec2.Peer.ipv4('10.0.0.1/8') },
      'metricsPeer 10.0.0.1/8 has bits set past its /8 prefix: give 10.0.0.0/8, or 10.0.0.1/32 for one address'],
    ['a cluster ARN of another service', { clusters: ['arn:aws:ecs:us-east-1:123456789012:service/prod/api'] },
      "clusters entry 'arn:aws:ecs:us-east-1:123456789012:service/prod/api' is not an ECS cluster name or ARN"],
    ['metrics on the proxy port', { metricsPort: 80 }, "metricsPort (80) must differ from the proxy's ports 80 and 443"],
    ['the proxy moved off port 80 through environment', { environment: { PORT: '8080' } },
      "environment.PORT '8080' cannot move the proxy off port 80: the security group and the health probe are wired for it"],
    ['metrics on the proxy port through environment', { environment: { METRICS_PORT: '80' } },
      "environment.METRICS_PORT (80) must differ from the proxy's ports 80 and 443"],
    ['metrics open to the internet', { metricsPeer: ec2.Peer.anyIpv4() },
      "metricsPeer 0.0.0.0/0 would open the metrics port to the internet: give your monitoring's own CIDR or security group"],
    ['metrics open to the IPv6 internet', { metricsPeer: ec2.Peer.ipv6('::/0') },
      "metricsPeer ::/0 would open the metrics port to the internet: give your monitoring's own CIDR or security group"],
    ['metrics open to half the internet', { metricsPeer: ec2.Peer.ipv4('0.0.0.0/1') },
      "metricsPeer 0.0.0.0/1 would open the metrics port to the internet: give your monitoring's own CIDR or security group"],
    ['a bad port', { ports: [70000] }, "ports entry '70000' must be a port (1-65535) or a range such as 8000-8100"],
    ['a bad cluster name', { clusters: ['prod cluster'] }, "clusters entry 'prod cluster' is not an ECS cluster name or ARN"],
    ['clusters outside ecs mode', { discovery: 'tag', clusters: ['prod'] }, "clusters only applies when discovery is 'ecs' (discovery is 'tag')"],
    ['a cache type without a cache', { redisNodeType: 'cache.t4g.small' }, 'redisNodeType is set but redis is false'],
    ['a cache for static targets, which are not discovered', { discovery: 'static', staticTargets: ['10.0.1.5:8080'], redis: true },
      "redis only applies when discovery is not 'static' (static targets are not discovered: the cache would share nothing)"],
    ['a Redis of one\'s own for static targets', { discovery: 'static', staticTargets: ['10.0.1.5:8080'], environment: { REDIS_URL: 'rediss://r.example.internal:6379' } },
      "environment.REDIS_URL only applies when discovery is not 'static' (static targets are not discovered: a Redis would share nothing)"],
    ['its token secret, for static targets', { discovery: 'static', staticTargets: ['10.0.1.5:8080'], environment: { REDIS_AUTH_SECRET_ARN: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:tok-AbCdEf' } },
      "environment.REDIS_AUTH_SECRET_ARN only applies when discovery is not 'static'"],
    ['a cache node type for static targets', { discovery: 'static', staticTargets: ['10.0.1.5:8080'], redisNodeType: 'cache.t4g.small' },
      "redisNodeType only applies when discovery is not 'static' (a static pool gets no cache)"],
    ['a bad cache type', { redis: true, redisNodeType: 't4g.micro' }, "redisNodeType 't4g.micro' is not a cache node type such as cache.t4g.micro"],
    ['a small root volume', { rootVolumeSize: 4 }, "rootVolumeSize (4) must be a whole number of GB from 8 (the image's size) to 16384"],
    ['a health timeout above its interval', { healthCheck: { interval: Duration.seconds(5), timeout: Duration.seconds(10) } },
      'healthCheck.timeout (10 s) must not exceed healthCheck.interval (5 s)'],
    ['a health timeout above the default interval', { healthCheck: { timeout: Duration.seconds(40) } },
      'healthCheck.timeout (40 s) must not exceed the health check interval (30 s), as an ALB\'s'],
    ['a health timeout above the interval environment gives', { healthCheck: { timeout: Duration.seconds(10) }, environment: { HEALTH_CHECK_PERIOD: '5' } },
      'healthCheck.timeout (10 s) must not exceed the health check interval (5 s), as an ALB\'s'],
    ['a bad health path', { healthCheck: { path: 'health' } }, "healthCheck.path 'health' must start with '/' (or be 'off')"],
    ['a health path with a space', { healthCheck: { path: '/he alth' } },
      "healthCheck.path '/he alth' must hold no spaces, control or non-ASCII characters (percent-encode them)"],
    ['an IPv6 CIDR that is no address', { allowedCidrs: [':::::/64'] }, "allowedCidrs entry ':::::/64' is not a CIDR such as 0.0.0.0/0 or 203.0.113.0/24"],
    ['an IPv6 CIDR of nine groups', { allowedCidrs: ['1:2:3:4:5:6:7:8:9/64'] }, "allowedCidrs entry '1:2:3:4:5:6:7:8:9/64' is not a CIDR"],
    ['an IPv6 CIDR with a group too long', { allowedCidrs: ['fffff::/16'] }, "allowedCidrs entry 'fffff::/16' is not a CIDR"],
    ['an IPv6 CIDR of one colon', { allowedCidrs: [':/0'] }, "allowedCidrs entry ':/0' is not a CIDR"],
    ['an IPv6 CIDR with bits past its prefix', { allowedCidrs: ['2001:db8::1/64'] }, "allowedCidrs entry '2001:db8::1/64' has bits set past its /64 prefix"],
    ['more instance slots than a role\'s policy holds', { minCapacity: 1, maxCapacity: 51 },
      "maxCapacity (51) must be at most 50: each instance slot is an Elastic IP, paid for whether used or not, and a line of the role's policy, whose size IAM limits"],
    ['a bad env var name', { environment: { 'log-connections': 'true' } }, "environment key 'log-connections' is not an env var name (A-Z, 0-9, _)"],
    ['a two-line env value', { environment: { DOMAIN: 'a\nb' } }, 'environment.DOMAIN must be one line'],
    ['a discovery mode through environment, leaving the role for another', { environment: { NODE_FILTER: 'asg', ASG_NAME: 'workers' } },
      "environment.NODE_FILTER 'asg' differs from discovery 'ecs': set discovery instead (the role's permissions follow it)"],
    ['a Redis password through environment, which the template and env file would carry', { environment: { REDIS_URL: 'rediss://:s3cret-token@cache.internal:6379' } },
      'environment.REDIS_URL carries a password, which would be written into the template, the user data and the env file: ' +
        'put the token in a Secrets Manager secret and set environment.REDIS_AUTH_SECRET_ARN to its ARN (the role is granted its read)'],
    ['a Redis password in the URL\'s query, which the client reads too', { environment: { REDIS_URL: 'rediss://cache.internal:6379/?password=s3cret' } },
      'environment.REDIS_URL carries a password, which would be written into the template, the user data and the env file: ' +
        'put the token in a Secrets Manager secret and set environment.REDIS_AUTH_SECRET_ARN to its ARN (the role is granted its read)'],
    ['a Redis of one\'s own beside the stack\'s cache, which would get the cache\'s AUTH token', { redis: true, environment: { REDIS_URL: 'my-redis:6379' } },
      "environment.REDIS_URL is set while redis is on (the stack's own cache, whose AUTH token the proxy would send to it): set redis to false to use a Redis of your own"],
    ['a token secret of one\'s own beside the stack\'s cache', { redis: true, environment: { REDIS_AUTH_SECRET_ARN: 'arn:aws:secretsmanager:us-east-1:123456789012:secret:mine-AbCdEf' } },
      'environment.REDIS_AUTH_SECRET_ARN is set while redis is on'],
    ['a Redis token secret that is not a secret ARN', { environment: { REDIS_URL: 'rediss://cache.internal:6379', REDIS_AUTH_SECRET_ARN: 'my-token' } },
      "environment.REDIS_AUTH_SECRET_ARN 'my-token' must be a Secrets Manager secret ARN (the role is granted GetSecretValue on it)"],
    ['static AWS keys through environment, which would replace the role and sit in the template', { environment: { AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE' } },
      'environment.AWS_ACCESS_KEY_ID cannot be set: the proxy takes its credentials from the instance role'],
    ['a secret key through environment', { environment: { AWS_SECRET_ACCESS_KEY: 'wJalrEXAMPLE' } }, 'environment.AWS_SECRET_ACCESS_KEY cannot be set'],
    ['a credentials profile through environment', { environment: { AWS_PROFILE: 'prod' } }, 'environment.AWS_PROFILE cannot be set'],
    ['metrics listening where the boot does not ask', { environment: { METRICS_HOST: '10.1.2.3' } },
      "environment.METRICS_HOST '10.1.2.3' must be 0.0.0.0, :: or 127.0.0.1: the boot and the liveness check ask 127.0.0.1 for /healthz"],
    ['a static target on the metadata service', { discovery: 'static', staticTargets: ['169.254.169.254:80'] },
      "static target '169.254.169.254:80' is on the instance itself (loopback or link-local, the metadata service): give the pool's own addresses"],
    ['a static target on the proxy\'s own metrics, through environment', { discovery: 'static', environment: { STATIC_TARGETS: '10.0.0.5:80,127.0.0.1:6970' } },
      "static target '127.0.0.1:6970' is on the instance itself"],
    ['a static target on IPv6 loopback', { discovery: 'static', staticTargets: ['[::1]:8080'] }, "static target '[::1]:8080' is on the instance itself"],
    ['a static target on the IPv6 metadata service', { discovery: 'static', staticTargets: ['[fd00:ec2::254]:80'] }, "static target '[fd00:ec2::254]:80' is on the instance itself"],
    ['a static target on loopback spelt long', { discovery: 'static', staticTargets: ['[0:0:0:0:0:0:0:1]:80'] }, "static target '[0:0:0:0:0:0:0:1]:80' is on the instance itself"],
    ['a static target on loopback, IPv4-mapped', { discovery: 'static', staticTargets: ['[::ffff:7f00:1]:80'] }, "static target '[::ffff:7f00:1]:80' is on the instance itself"],
    ['a static target on the metadata service, spelt as one decimal number', { discovery: 'static', staticTargets: ['2852039166:80'] }, "static target '2852039166:80' is on the instance itself"],
    ['a static target on the metadata service, spelt in hex', { discovery: 'static', staticTargets: ['0xa9fea9fe:80'] }, "static target '0xa9fea9fe:80' is on the instance itself"],
    ['a static target on loopback, spelt in octal and short', { discovery: 'static', staticTargets: ['0177.1:80'] }, "static target '0177.1:80' is on the instance itself"],
    ['a static target on loopback by its name, with the root\'s dot', { discovery: 'static', staticTargets: ['localhost.:8080'] }, "static target 'localhost.:8080' is on the instance itself"],
    ['a static target on the metadata service by its name', { discovery: 'static', staticTargets: ['instance-data.ec2.internal:80'] }, "static target 'instance-data.ec2.internal:80' is on the instance itself"],
    ['a static target on the metadata service, IPv4-mapped', { discovery: 'static', staticTargets: ['[::ffff:169.254.169.254]:80'] }, "static target '[::ffff:169.254.169.254]:80' is on the instance itself"],
    ['static targets outside static mode, which the runtime would ignore', { staticTargets: ['10.0.0.1:8080'] },
      "staticTargets only applies when discovery is 'static' (discovery is 'ecs')"],
    ['a target port in ecs mode, where ports come from the Host', { targetPort: 8080 },
      "targetPort only applies when discovery is 'asg' or 'tag' (discovery is 'ecs')"],
    ['an Auto Scaling group name in tag mode', { discovery: 'tag', asgName: 'workers' }, "asgName only applies when discovery is 'asg' (discovery is 'tag')"],
    ['a tag name in asg mode', { discovery: 'asg', tagName: 'Role' }, "tagName only applies when discovery is 'tag' (discovery is 'asg')"],
    ['a region through environment', { environment: { AWS_REGION: 'eu-west-1' } },
      "environment.AWS_REGION cannot be set: the proxy discovers in the stack's region, where the role's permissions are"],
    ['a domain through environment that the record does not have', { environment: { DOMAIN: 'other.example.com' } },
      "environment.DOMAIN 'other.example.com' differs from domain 'apps.example.com': the wildcard record and the routing would disagree; set domain"],
    ['cluster allow-lists twice', { clusters: ['prod'], environment: { ALLOWED_CLUSTERS: 'prod,staging' } },
      "environment.ALLOWED_CLUSTERS is set beside clusters: set clusters alone (the role's permissions follow it)"],
    ['metrics on port 0, where the boot cannot reach /healthz', { environment: { METRICS_PORT: '0' } },
      "environment.METRICS_PORT '0' must be a port number from 1 to 65535 (the boot waits for /healthz on it)"],
    ['the proxy listening on loopback alone through environment', { environment: { HOST: '127.0.0.1' } },
      "environment.HOST '127.0.0.1' cannot narrow where the proxy listens: clients reach it on the instance's addresses (0.0.0.0 or :: only)"],
    ['a signal wait longer than a rolling update may pause', { signalTimeout: Duration.hours(2) },
      'signalTimeout (2 hours) must be from 5 minutes to 1 hour: CloudFormation pauses a rolling update at most an hour'],
    ['a signal wait shorter than a boot', { signalTimeout: Duration.minutes(1) }, 'signalTimeout (1 minute) must be from 5 minutes to 1 hour'],
    ['a missing bundle', { bundlePath: '/nonexistent/karma-proxy.js' },
      "bundle '/nonexistent/karma-proxy.js' does not exist: run 'npm run build' first (or set bundlePath)"],
    ['a bundle file not named .js, whose read would need the whole asset bucket', { bundlePath: path.join(__dirname, '..', '..', 'package.json') },
      "must be the bundle's .js file (the role may read only .js objects of the asset bucket)"],
    // (A rest parameter: jest would take a fourth named one for a done callback on three-item rows.)
  ])('%s', (_name, props, message, ...zone) => {
    const text = messageOf(build(props, zone[0] ?? false));
    expect(text).toContain(message);
    expect(text.startsWith('Invalid KarmaProxy props (Test/Proxy):')).toBe(true);
  });
});

test('minCapacity alone, when wrong, is named alone: maxCapacity, not given, is only its echo', () => {
  expect(messageOf(build({ minCapacity: 1.5 }))).toBe(
    'Invalid KarmaProxy props (Test/Proxy):\n  - minCapacity (1.5) must be a whole number of at least 1');
  expect(messageOf(build({ minCapacity: 60 })))
    .toContain("maxCapacity (60, minCapacity's when not given) must be at most 50: each instance slot is an Elastic IP");
});

test('a directory named like a bundle is refused: it would be uploaded as a zip', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'karma-bundle-'));
  try {
    fs.mkdirSync(path.join(dir, 'karma-proxy.js'));
    expect(messageOf(build({ bundlePath: path.join(dir, 'karma-proxy.js') }))).toContain("must be the bundle's .js file");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a secret's value in environment is refused, token or not: CloudFormation would write it into the user data", () => {
  const stack = new Stack(new App(), 'Test');
  const secret = new secretsmanager.Secret(stack, 'Token');
  const text = messageOf(() => new KarmaProxy(stack, 'Proxy', {
    domain: 'apps.example.com',
    redis: false,
    environment: {
      REDIS_URL: `rediss://:${secret.secretValue.unsafeUnwrap()}@cache.internal:6379`,
      LOG_LEVEL: SecretValue.ssmSecure('/karma/level').unsafeUnwrap(),
    },
  }));
  expect(text).toContain('environment.REDIS_URL carries a password');
  expect(text).toContain("environment.REDIS_URL holds a secret's value, which CloudFormation would write into the user data in plain text");
  expect(text).toContain("environment.LOG_LEVEL holds a secret's value");
});

test("the Stateless Load Balancer's HEALTH_CHECK_TIMEOUT above its HEALTH_CHECK_PERIOD, in environment, is kept, as the proxy keeps it", () => {
  expect(build({ environment: { HEALTH_CHECK_PERIOD: '2', HEALTH_CHECK_TIMEOUT: '5' } })().runtimeEnvironment).toMatchObject({ HEALTH_CHECK_PERIOD: '2', HEALTH_CHECK_TIMEOUT: '5' });
});

test('every problem in one error, one per line', () => {
  const text = messageOf(build({
    minCapacity: 3, maxCapacity: 2, domain: 'x.other.com', instanceType: new ec2.InstanceType('m5.large'),
  }, true));
  expect(text).toBe([
    'Invalid KarmaProxy props (Test/Proxy):',
    '  - minCapacity (3) must not exceed maxCapacity (2)',
    "  - instanceType 'm5.large' is not an ARM Graviton (arm64) type: the image and Node.js are arm64 (use t4g, c7g, m7g...)",
    "  - domain 'x.other.com' is not inside hosted zone 'example.com'",
  ].join('\n'));
});

test('an AWS endpoint given in environment (a forwarder on the instance) does not let loopback targets through', () => {
  expect(build({ environment: { AWS_ENDPOINT_URL_ECS: 'http://127.0.0.1:8000' } })().runtimeEnvironment).toMatchObject({ LOOPBACK_TARGETS: 'false' });
  expect(build({ environment: { AWS_ENDPOINT_URL_ECS: 'http://127.0.0.1:8000', LOOPBACK_TARGETS: 'true' } })().runtimeEnvironment)
    .toMatchObject({ LOOPBACK_TARGETS: 'true' });
  expect(build({})().runtimeEnvironment).not.toHaveProperty('LOOPBACK_TARGETS');
});

test('bad props of the wrong type, or environment keys no env var has, are named, not crashed on', () => {
  const odd = (props: Record<string, unknown>) => messageOf(build({ discovery: 'static', staticTargets: ['10.0.0.1:80'], ...props } as KarmaProxyProps));
  expect(odd({ environment: { 'X(': '1', WORKERS: 'x' } })).toContain("environment key 'X(' is not an env var name (A-Z, 0-9, _)");
  expect(odd({ environment: { 'X(': '1', WORKERS: 'x' } })).toContain('its env vars): WORKERS must be');
  expect(odd({ environment: { WORKERS: 4 } })).toContain('environment.WORKERS must be a string');
  expect(odd({ healthCheck: { path: 5 } })).toContain("healthCheck.path '5' must start with '/' (or be 'off')");
  // Said once: environment.METRICS_PORT's own check, not the runtime's words for it again.
  const once = messageOf(build({ maxCapacity: 60, environment: { METRICS_PORT: '80' } }));
  expect(once).toContain("environment.METRICS_PORT (80) must differ from the proxy's ports 80 and 443");
  expect(once).not.toContain('METRICS_PORT must differ from PORT');
});

test('a Number parameter in a numeric prop is left to the proxy at start, not judged by its encoding', () => {
  const stack = new Stack(new App(), 'Test');
  const port = new CfnParameter(stack, 'TargetPort', { type: 'Number' }).valueAsNumber;
  const healthy = new CfnParameter(stack, 'Healthy', { type: 'Number' }).valueAsNumber;
  const every = new CfnParameter(stack, 'Every', { type: 'Number' }).valueAsNumber;
  const proxy = new KarmaProxy(stack, 'Proxy', {
    redis: false, discovery: 'asg', asgName: 'workers', targetPort: port,
    healthCheck: { healthyThreshold: healthy, interval: Duration.seconds(every) },
  });
  const env = Stack.of(proxy).resolve(proxy.runtimeEnvironment);
  expect(env.TARGET_PORT).toEqual({ Ref: 'TargetPort' });
  expect(env.HEALTHY_THRESHOLD).toEqual({ Ref: 'Healthy' });
  expect(env.HEALTH_CHECK_PERIOD).toEqual({ Ref: 'Every' });
});

test('IPv6 CIDRs in every spelling of a network pass', () => {
  for (const cidr of ['::/0', '2001:db8::/32', '2001:DB8:0:0:8::/80', 'fd00::/8', '2001:db8::1/128', '::ffff:203.0.113.0/120']) {
    expect(build({ allowedCidrs: [cidr] })).not.toThrow();
  }
});

test("the props' problems and what the proxy would refuse of environment, in one error", () => {
  const text = messageOf(build({ minCapacity: 3, maxCapacity: 2, environment: { WORKERS: 'abc', IDLE_TIMEOUT: '-5' } }));
  expect(text.startsWith('Invalid KarmaProxy props (Test/Proxy):\n  - minCapacity (3) must not exceed maxCapacity (2)\n')).toBe(true);
  expect(text).toContain("\n  - the proxy would refuse this setting at start (props and environment become its env vars): WORKERS must be");
  expect(text).toContain("\n  - the proxy would refuse this setting at start (props and environment become its env vars): IDLE_TIMEOUT must be");
});

test('a cluster given as a token (another construct\'s name or ARN) still leaves environment judged at synth', () => {
  for (const clusterOf of [(c: ecs.Cluster) => c.clusterName, (c: ecs.Cluster) => c.clusterArn]) {
    const stack = new Stack(new App(), 'Test');
    const cluster = new ecs.Cluster(stack, 'Cluster', { vpc: new ec2.Vpc(stack, 'Vpc', { natGateways: 0 }) });
    const text = messageOf(() => new KarmaProxy(stack, 'Proxy', {
      domain: 'apps.example.com', redis: false, clusters: [clusterOf(cluster)], environment: { WORKERS: 'abc', LOG_CONNECTIONS: 'maybe' },
    }));
    expect(text).toContain('its env vars): WORKERS must be');
    expect(text).toContain('its env vars): LOG_CONNECTIONS must be');
  }
  // A domain from a parameter: the rest is judged all the same, and the domain is left to the runtime.
  const stack = new Stack(new App(), 'Test');
  const domain = new CfnParameter(stack, 'Domain').valueAsString;
  expect(messageOf(() => new KarmaProxy(stack, 'Proxy', { domain, redis: false, environment: { WORKERS: '0' } }))).toContain('its env vars): WORKERS must be');
  const fine = new Stack(new App(), 'Test');
  const param = new CfnParameter(fine, 'Domain').valueAsString;
  expect(() => new KarmaProxy(fine, 'Proxy', { domain: param, redis: false })).not.toThrow();
});

test('a list known only at deploy (a CommaDelimitedList parameter) is named as such; entries that are tokens each pass', () => {
  const stack = new Stack(new App(), 'Test');
  const cidrs = new CfnParameter(stack, 'Cidrs', { type: 'CommaDelimitedList' }).valueAsList;
  const clusters = new CfnParameter(stack, 'Clusters', { type: 'CommaDelimitedList' }).valueAsList;
  const text = messageOf(() => new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false, allowedCidrs: cidrs, clusters: [...clusters, 'prod'] }));
  expect(text).toContain('allowedCidrs is a list known only at deploy (a CommaDelimitedList parameter)');
  expect(text).toContain('clusters is a list known only at deploy');
  // Not taken for a malformed entry.
  expect(text).not.toContain('is not a CIDR');
  expect(text).not.toContain('is not an ECS cluster name');
  const fine = new Stack(new App(), 'Test');
  const cidr = new CfnParameter(fine, 'Cidr').valueAsString;
  const cluster = new CfnParameter(fine, 'Cluster').valueAsString;
  expect(() => new KarmaProxy(fine, 'Proxy', { domain: 'apps.example.com', redis: false, allowedCidrs: [cidr], clusters: [cluster] })).not.toThrow();
});

describe('what the proxy itself would refuse at start fails the synth, in its own words', () => {
  test.each<[string, KarmaProxyProps, string]>([
    ['a static target that is no host:port', { discovery: 'static', staticTargets: ['my_host:80'] },
      "STATIC_TARGETS must be a comma-separated list of host:port (ports 1-65535), and 'my_host:80' is not one (got 'my_host:80')"],
    ['a static target on port 0', { discovery: 'static', staticTargets: ['10.0.0.1:0'] }, 'STATIC_TARGETS must be'],
    ['a status code past 599', { healthCheck: { healthyHttpCodes: '600' } }, 'HEALTH_CHECK_MATCHER must be'],
    ['a health check every 0 seconds', { healthCheck: { interval: Duration.seconds(0) } }, 'HEALTH_CHECK_PERIOD must be'],
    ['discovery every 0 seconds', { discoveryInterval: Duration.seconds(0) }, 'NODE_CHECK_PERIOD must be'],
    ['raw TCP with ECS discovery', { environment: { MODE: 'tcp' } }, 'MODE=tcp needs a pool'],
    ['a setting of the runtime mistyped in environment', { environment: { LOG_CONNECTIONS: 'sometimes' } }, 'LOG_CONNECTIONS must be'],
  ])('%s', (_name, props, message) => {
    const text = messageOf(build(props));
    expect(text.startsWith('Invalid KarmaProxy props (Test/Proxy):\n  - the proxy would refuse this setting at start (props and environment become its env vars): ')).toBe(true);
    expect(text).toContain(`its env vars): ${message}`);
  });

  test('values known only at deploy (the cache, the region) are judged by stand-ins, and pass', () => {
    expect(build({ redis: true, maxCapacity: 2, minCapacity: 2, clusters: ['prod'], healthCheck: { path: '/health', timeout: Duration.seconds(3) } })).not.toThrow();
  });
});

test('a cache needs somewhere private to live', () => {
  const stack = new Stack(new App(), 'Test');
  const vpc = ec2.Vpc.fromVpcAttributes(stack, 'Vpc', {
    vpcId: 'vpc-0123456789abcdef0', availabilityZones: ['us-east-1a'], publicSubnetIds: ['subnet-0aaaaaaaaaaaaaaa1'],
  });
  expect(messageOf(() => new KarmaProxy(stack, 'Proxy', { vpc, domain: 'apps.example.com' })))
    .toContain('vpc has no isolated or private subnets for the cache: give cacheSubnets, or set redis to false');
  expect(() => new KarmaProxy(stack, 'NoCache', { vpc, domain: 'apps.example.com', redis: false })).not.toThrow();
});

describe('where the proxy and the cache run: checked against the VPC, in words that name the prop', () => {
  const attrs = { vpcId: 'vpc-0123456789abcdef0', availabilityZones: ['us-east-1a', 'us-east-1b'] };
  test.each<[string, (stack: Stack) => KarmaProxyProps, string]>([
    ['an imported VPC without public subnets',
      (stack) => ({ vpc: ec2.Vpc.fromVpcAttributes(stack, 'Vpc', { ...attrs, privateSubnetIds: ['subnet-0aaaaaaaaaaaaaaa1', 'subnet-0aaaaaaaaaaaaaaa2'] }) }),
      'vpc has no public subnets (it has 0 public, 2 private (us-east-1a, us-east-1b), 0 isolated subnets): the proxy ' +
      'runs in public subnets, the only ones where its Elastic IPs are reachable and it reaches packages and AWS APIs ' +
      'without a NAT gateway. Give a VPC with public subnets (publicSubnetIds, when it is imported with Vpc.fromVpcAttributes)'],
    ['a VPC of isolated subnets only',
      (stack) => ({ vpc: new ec2.Vpc(stack, 'Vpc', { maxAzs: 2, subnetConfiguration: [{ name: 'Inside', subnetType: ec2.SubnetType.PRIVATE_ISOLATED }] }) }),
      'vpc has no public subnets (it has 0 public, 0 private, 2 isolated subnets)'],
    ['vpcSubnets naming a group the VPC does not have',
      () => ({ vpcSubnets: { subnetGroupName: 'Web' } }),
      "vpcSubnets (subnetGroupName 'Web') matches no subnet of vpc (it has 2 public, 0 private, 2 isolated subnets; " +
      'its subnet groups are Public, Cache): select public subnets it has, or leave vpcSubnets out'],
    ['vpcSubnets in an AZ the VPC has no subnet in',
      (stack) => ({ vpc: ec2.Vpc.fromVpcAttributes(stack, 'Vpc', { ...attrs, publicSubnetIds: ['subnet-0aaaaaaaaaaaaaaa1', 'subnet-0aaaaaaaaaaaaaaa2'] }),
        vpcSubnets: { availabilityZones: ['us-east-1c'] } }),
      'vpcSubnets (availabilityZones us-east-1c) matches no subnet of vpc (it has 2 public (us-east-1a, us-east-1b), ' +
      '0 private, 0 isolated subnets): select public subnets it has, or leave vpcSubnets out'],
    ['vpcSubnets of isolated subnets, where the addresses cannot be reached',
      () => ({ vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_ISOLATED } }),
      'vpcSubnets selects subnetType PRIVATE_ISOLATED: the proxy runs in public subnets, the only ones where its ' +
      'Elastic IPs are reachable and it reaches packages and AWS APIs without a NAT gateway. Select public subnets, ' +
      'or leave vpcSubnets out'],
    ['vpcSubnets naming the group of isolated subnets',
      () => ({ vpcSubnets: { subnetGroupName: 'Cache' } }),
      "vpcSubnets (subnetGroupName 'Cache') selects 2 private or isolated subnet(s): the proxy runs in public subnets"],
    ['vpcSubnets listing a private subnet of an imported VPC',
      (stack) => {
        const vpc = ec2.Vpc.fromVpcAttributes(stack, 'Vpc', { ...attrs, publicSubnetIds: ['subnet-0aaaaaaaaaaaaaaa1', 'subnet-0aaaaaaaaaaaaaaa2'],
          privateSubnetIds: ['subnet-0bbbbbbbbbbbbbbb1', 'subnet-0bbbbbbbbbbbbbbb2'] });
        return { vpc, vpcSubnets: { subnets: [ec2.Subnet.fromSubnetId(stack, 'Inside', 'subnet-0bbbbbbbbbbbbbbb1')] } };
      },
      'vpcSubnets (subnets subnet-0bbbbbbbbbbbbbbb1) selects 1 private or isolated subnet(s)'],
    ['cacheSubnets of a kind the VPC does not have',
      () => ({ redis: true, cacheSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS } }),
      'cacheSubnets (subnetType PRIVATE_WITH_EGRESS) matches no subnet of vpc (it has 2 public, 0 private, 2 isolated ' +
      'subnets): select subnets it has, or leave cacheSubnets out'],
  ])('%s', (_name, props, message) => {
    const stack = new Stack(new App(), 'Test');
    const text = messageOf(() => new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false, ...props(stack) }));
    expect(text).toContain(`  - ${message}`);
    expect(text.startsWith('Invalid KarmaProxy props (Test/Proxy):')).toBe(true);
  });

  test('the selections a VPC can satisfy are fine', () => {
    expect(build({ signalTimeout: Duration.minutes(5) })).not.toThrow();
    expect(build({ signalTimeout: Duration.hours(1) })).not.toThrow();
    expect(build({ environment: { HOST: '::' } })).not.toThrow();
    for (const cidr of ['10.0.0.0/8', '203.0.113.7/32']) expect(build({ metricsPeer: ec2.Peer.ipv4(cidr) })).not.toThrow();
    for (const cidr of ['fc00::/7', '2001:db8::/32']) expect(build({ metricsPeer: ec2.Peer.ipv6(cidr) })).not.toThrow();
    for (const vpcSubnets of [{ subnetGroupName: 'Public' }, { subnetType: ec2.SubnetType.PUBLIC, onePerAz: true }]) {
      expect(build({ vpcSubnets })).not.toThrow();
    }
    expect(build({ redis: true, cacheSubnets: { subnetGroupName: 'Cache' } })).not.toThrow();
    const stack = new Stack(new App(), 'Test');
    const subnets = [ec2.Subnet.fromSubnetId(stack, 'Mine', 'subnet-0aaaaaaaaaaaaaaa9')];
    expect(() => new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false, vpcSubnets: { subnets } })).not.toThrow();
  });
});

test('arm64 Amazon Linux 2023, and images whose names say nothing of their CPU (an id, a parameter of your own), are fine', () => {
  for (const machineImage of [
    ec2.MachineImage.latestAmazonLinux2023({ cpuType: ec2.AmazonLinuxCpuType.ARM_64 }),
    ec2.MachineImage.genericLinux({ 'us-east-1': 'ami-0123456789abcdef0' }),
    ec2.MachineImage.fromSsmParameter('/my/images/proxy'),
    ec2.MachineImage.resolveSsmParameterAtLaunch('/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64'),
    ecs.EcsOptimizedImage.amazonLinux2023(ecs.AmiHardwareType.ARM),
    // Names of one's own whose folders say anything.
    ec2.MachineImage.fromSsmParameter('/my/windows-build-agents/al2023-arm64'),
    ec2.MachineImage.fromSsmParameter('/teams/amd64-migration/proxy-ami'),
    ec2.MachineImage.fromSsmParameter('/platform/bottlerocket-replacements/al2023-arm64'),
  ]) {
    expect(build({ machineImage })).not.toThrow();
  }
  // Judging an image adds nothing to the template: genericLinux's map of AMIs is there once, the launch template's.
  const proxy = build({ machineImage: ec2.MachineImage.genericLinux({ 'us-east-1': 'ami-0123456789abcdef0' }) })();
  const mappings = Object.keys(Template.fromStack(Stack.of(proxy)).toJSON().Mappings ?? {});
  expect(mappings.filter((m) => m.includes('AmiMap'))).toHaveLength(1);
});

test('a zone known only by its id needs a domain', () => {
  const stack = new Stack(new App(), 'Test');
  const hostedZone = route53.HostedZone.fromHostedZoneId(stack, 'Zone', 'Z0BYID');
  expect(messageOf(() => new KarmaProxy(stack, 'Proxy', { hostedZone, redis: false })))
    .toContain('domain is required with a hostedZone whose name is not known (the record is *.<domain>)');
});

test('the zone apex itself and a trailing dot are fine', () => {
  expect(build({ domain: 'example.com.' }, true)).not.toThrow();
  expect(build({ domain: 'Apps.Example.com' }, true)).not.toThrow();
});

test('unresolved tokens are not judged, except capacities that size the address pool', () => {
  const stack = new Stack(new App(), 'Test');
  const domain = new CfnParameter(stack, 'Domain').valueAsString;
  const cidr = new CfnParameter(stack, 'Cidr').valueAsString;
  expect(() => new KarmaProxy(stack, 'Proxy', { domain, allowedCidrs: [cidr], redis: false })).not.toThrow();

  const stack2 = new Stack(new App(), 'Test');
  const max = new CfnParameter(stack2, 'Max', { type: 'Number' }).valueAsNumber;
  expect(messageOf(() => new KarmaProxy(stack2, 'Proxy', { domain: 'apps.example.com', redis: false, maxCapacity: max })))
    .toContain('maxCapacity must be a number at synth time (it is the number of Elastic IPs)');
});

describe('the stack', () => {
  const stackMessage = (props: ConstructorParameters<typeof KarmaProxyStack>[2]): string =>
    messageOf(() => new KarmaProxyStack(new App(), 'KarmaProxy', { domain: 'apps.example.com', ...props }));

  test('an existing VPC needs its subnets', () => {
    expect(stackMessage({ vpcId: 'vpc-1' })).toBe([
      'Invalid KarmaProxyStack props (KarmaProxy):',
      '  - vpcId needs publicSubnetIds (the proxy runs in public subnets)',
      '  - vpcId needs isolatedSubnetIds or privateSubnetIds for the cache (or redis: false)',
    ].join('\n'));
  });

  test('a cache asked for a static pool in an existing VPC is refused once, not also sent for its subnets', () => {
    const message = stackMessage({ vpcId: 'vpc-1', publicSubnetIds: ['subnet-1'], availabilityZones: ['us-east-1a'], discovery: 'static', staticTargets: ['10.0.1.5:8080'], redis: true });
    expect(message).toContain("redis only applies when discovery is not 'static'");
    expect(message).not.toContain('needs isolatedSubnetIds or privateSubnetIds');
  });

  test('a static pool in an existing VPC needs no cache subnets: it gets no cache', () => {
    expect(() => new KarmaProxyStack(new App(), 'KarmaProxy', {
      vpcId: 'vpc-1', publicSubnetIds: ['subnet-1'], availabilityZones: ['us-east-1a'], discovery: 'static', staticTargets: ['10.0.1.5:8080'],
    })).not.toThrow();
  });

  test('subnets and AZs need a VPC, a zone name needs a zone id', () => {
    expect(stackMessage({ publicSubnetIds: ['subnet-1'], availabilityZones: ['us-east-1a'], hostedZoneName: 'example.com' })).toBe([
      'Invalid KarmaProxyStack props (KarmaProxy):',
      '  - publicSubnetIds, isolatedSubnetIds and privateSubnetIds need vpcId',
      '  - availabilityZones needs vpcId (they are the AZs of its subnets)',
      '  - hostedZoneName needs hostedZoneId',
    ].join('\n'));
  });

  test('a hosted zone id is checked as the app checks it, and needs a domain or the zone\'s name; the name alone is the domain', () => {
    expect(stackMessage({ hostedZoneId: 'example.com' })).toBe([
      'Invalid KarmaProxyStack props (KarmaProxy):',
      "  - hostedZoneId 'example.com' is not a Route53 hosted zone id such as Z0123456789ABCDEFGHIJ (that looks like the zone's name: give it as hostedZoneName)",
    ].join('\n'));
    // Named once: not again as the construct's missing domain of a zone whose name is not known.
    expect(messageOf(() => new KarmaProxyStack(new App(), 'KarmaProxy', { hostedZoneId: 'Z0123456789ABCDEFGHIJ' }))).toBe([
      'Invalid KarmaProxyStack props (KarmaProxy):',
      '  - hostedZoneId needs domain or hostedZoneName',
      "  - domain is required when discovery is 'ecs' (routes are <service>-<port>-<cluster>.<domain>)",
    ].join('\n'));
    // As `aws route53 list-hosted-zones` prints it: the id CloudFormation takes.
    const listed = new KarmaProxyStack(new App(), 'KarmaProxy', { hostedZoneId: '/hostedzone/Z0123456789ABCDEFGHIJ', domain: 'apps.example.com' });
    Template.fromStack(listed).hasResourceProperties('AWS::Route53::RecordSet', { HostedZoneId: 'Z0123456789ABCDEFGHIJ' });
    // An empty zone name is none: the zone still gets its record, named by the domain.
    const unnamed = new KarmaProxyStack(new App(), 'KarmaProxy', { hostedZoneId: 'Z0123456789ABCDEFGHIJ', hostedZoneName: '', domain: 'apps.example.com' });
    Template.fromStack(unnamed).hasResourceProperties('AWS::Route53::RecordSet', { Name: '*.apps.example.com.' });
    const stack = new KarmaProxyStack(new App(), 'KarmaProxy', { hostedZoneId: 'Z0123456789ABCDEFGHIJ', hostedZoneName: 'apps.example.com' });
    Template.fromStack(stack).hasResourceProperties('AWS::Route53::RecordSet', { Name: '*.apps.example.com.', HostedZoneId: 'Z0123456789ABCDEFGHIJ' });
  });

  test('each subnet list has one subnet per AZ, in their order', () => {
    expect(stackMessage({
      vpcId: 'vpc-1', availabilityZones: ['us-east-1a', 'us-east-1b'],
      publicSubnetIds: ['subnet-1', 'subnet-2', 'subnet-3'], isolatedSubnetIds: ['subnet-4'],
    })).toBe([
      'Invalid KarmaProxyStack props (KarmaProxy):',
      '  - publicSubnetIds lists 3 subnets for the 2 availabilityZones: give one subnet per AZ, in the order of the AZs',
      '  - isolatedSubnetIds lists 1 subnet for the 2 availabilityZones: give one subnet per AZ, in the order of the AZs',
    ].join('\n'));
  });

  test('without availabilityZones, each public subnet is one AZ', () => {
    expect(stackMessage({ vpcId: 'vpc-1', publicSubnetIds: ['subnet-1', 'subnet-2', 'subnet-3'], privateSubnetIds: ['subnet-4', 'subnet-5'] })).toBe([
      'Invalid KarmaProxyStack props (KarmaProxy):',
      '  - privateSubnetIds lists 2 subnets for 3 AZs (one per publicSubnetIds entry, as availabilityZones is not set): ' +
      'give one subnet per AZ, in the order of the AZs, or set availabilityZones',
    ].join('\n'));
    expect(() => new KarmaProxyStack(new App(), 'KarmaProxy', {
      domain: 'apps.example.com', vpcId: 'vpc-1', availabilityZones: ['us-east-1a', 'us-east-1b'],
      publicSubnetIds: ['subnet-1', 'subnet-2', 'subnet-3', 'subnet-4'], isolatedSubnetIds: ['subnet-5', 'subnet-6'],
    })).not.toThrow();
  });

  test("the stack's problems and the construct's, in one error", () => {
    const text = stackMessage({ vpcId: 'vpc-1', publicSubnetIds: ['subnet-1'], minCapacity: 5, maxCapacity: 1, environment: { WORKERS: 'abc' } });
    expect(text.split('\n').slice(0, 3)).toEqual([
      'Invalid KarmaProxyStack props (KarmaProxy):',
      '  - vpcId needs isolatedSubnetIds or privateSubnetIds for the cache (or redis: false)',
      '  - minCapacity (5) must not exceed maxCapacity (1)',
    ]);
    expect(text).toContain('\n  - the proxy would refuse this setting at start (props and environment become its env vars): WORKERS must be');
  });

  test('a VPC refused leaves no problems of the VPC built in its place; a crash of the proxy does not hide the stack\'s problems', () => {
    expect(stackMessage({
      vpcId: 'vpc-1', publicSubnetIds: ['subnet-1', 'subnet-2'], isolatedSubnetIds: ['subnet-3'], availabilityZones: ['us-east-1a', 'us-east-1b'],
      vpcSubnets: { availabilityZones: ['us-east-1a'] },
    })).toBe([
      'Invalid KarmaProxyStack props (KarmaProxy):',
      '  - isolatedSubnetIds lists 1 subnet for the 2 availabilityZones: give one subnet per AZ, in the order of the AZs',
    ].join('\n'));
    const text = stackMessage({ availabilityZones: ['us-east-1a'], environment: { WORKERS: 4 as unknown as string } });
    expect(text).toContain('  - availabilityZones needs vpcId (they are the AZs of its subnets)');
    expect(text).toContain('  - environment.WORKERS must be a string');
  });

  test("the construct's checks apply through the stack", () => {
    expect(stackMessage({ hostedZoneId: 'Z1', hostedZoneName: 'example.com', domain: 'x.other.com' }))
      .toContain("domain 'x.other.com' is not inside hosted zone 'example.com'");
  });
});

describe('two proxies of one app cannot share a wildcard record', () => {
  const zoneOf = (stack: Stack): route53.IHostedZone =>
    route53.HostedZone.fromHostedZoneAttributes(stack, 'Zone', { hostedZoneId: 'Z0TEST', zoneName: 'example.com' });

  test('in one stack, or in two stacks importing the same zone: the second is refused, naming the first', () => {
    const app = new App();
    const blue = new Stack(app, 'Blue');
    const zone = zoneOf(blue);
    new KarmaProxy(blue, 'Proxy', { hostedZone: zone, redis: false });
    expect(messageOf(() => new KarmaProxy(blue, 'Again', { hostedZone: zone, redis: false })))
      .toContain("domain 'example.com': Blue/Proxy already has the record *.example.com in this hosted zone");
    const green = new Stack(app, 'Green');
    expect(messageOf(() => new KarmaProxy(green, 'Proxy', { hostedZone: zoneOf(green), domain: 'Example.com.', redis: false })))
      .toContain("domain 'example.com': Blue/Proxy already has the record *.example.com in this hosted zone");
  });

  test('zones still being looked up (HostedZone.fromLookup gives DUMMY first) are not judged: two stages of a pipeline synthesize', () => {
    const app = new App();
    for (const [name, account] of [['Dev', '111111111111'], ['Prod', '222222222222']]) {
      const stack = new Stack(app, name, { env: { account, region: 'us-east-1' } });
      const hostedZone = route53.HostedZone.fromLookup(stack, 'Zone', { domainName: 'example.com' });
      expect(hostedZone.hostedZoneId).toBe('DUMMY');
      expect(() => new KarmaProxy(stack, 'Proxy', { hostedZone, domain: 'apps.example.com', redis: false })).not.toThrow();
    }
  });

  test('a domain of its own each, or a zone of its own each, is fine', () => {
    const app = new App();
    const stack = new Stack(app, 'Test');
    const zone = zoneOf(stack);
    expect(() => new KarmaProxy(stack, 'Blue', { hostedZone: zone, domain: 'blue.example.com', redis: false })).not.toThrow();
    expect(() => new KarmaProxy(stack, 'Green', { hostedZone: zone, domain: 'green.example.com', redis: false })).not.toThrow();
    const other = route53.HostedZone.fromHostedZoneAttributes(stack, 'Other', { hostedZoneId: 'Z0OTHER', zoneName: 'example.com' });
    expect(() => new KarmaProxy(stack, 'Elsewhere', { hostedZone: other, domain: 'blue.example.com', redis: false })).not.toThrow();
  });
});


test('settings too long for EC2 user data (16 KB) fail at synth, not at the first launch', () => {
  const staticTargets = Array.from({ length: 600 }, (_, i) => `10.0.${i >> 8}.${i & 255}:8080`);
  expect(messageOf(build({ discovery: 'static', staticTargets })))
    .toMatch(/the instances' user data would be about \d+ bytes, over EC2's 16384: its settings \(staticTargets, environment\) are too long/);
  expect(build({ discovery: 'static', staticTargets: staticTargets.slice(0, 100) })).not.toThrow();
});

describe("the role's inline policies stay within IAM's 10,240 characters", () => {
  const clusters = (n: number) => Array.from({ length: n }, (_, i) => `production-cluster-${String(i).padStart(3, '0')}`);
  const synth = (props: KarmaProxyProps) => () => Template.fromStack(Stack.of(build(props)()));

  test('fifty slots and many clusters fail at synth, naming both props, not at deploy', () => {
    const message = messageOf(synth({ minCapacity: 50, maxCapacity: 50, clusters: clusters(40) }));
    expect(message).toMatch(/The role's inline policies would be about [\d,]+ characters, over IAM's 10,240 for a role \(the deploy would fail\)/);
    expect(message).toContain('(maxCapacity, 50)');
    expect(message).toContain('(clusters or ALLOWED_CLUSTERS, 40)');
  });

  test('so does what a user adds to the role after the construct', () => {
    const stack = new Stack(new App(), 'Test');
    const proxy = new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false });
    for (let i = 0; i < 120; i++) {
      proxy.role.addToPrincipalPolicy(new iam.PolicyStatement({ actions: ['s3:GetObject'], resources: [`arn:aws:s3:::bucket-number-${i}-of-many/*`] }));
    }
    expect(messageOf(() => Template.fromStack(stack))).toContain("The role's inline policies would be about");
  });

  test("clusters of the app itself (cluster.clusterName, cluster.clusterArn) are measured as the names CloudFormation gives them", () => {
    const synthWith = (stackName: string, use: 'clusterName' | 'clusterArn') => () => {
      const stack = new Stack(new App(), stackName, { env: { account: '123456789012', region: 'eu-central-1' } });
      const vpc = new ec2.Vpc(stack, 'Vpc', { maxAzs: 1, natGateways: 0 });
      const made = Array.from({ length: 20 }, (_, i) => new ecs.Cluster(stack, `Cluster${i}`, { vpc })[use]);
      new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false, vpc, minCapacity: 50, maxCapacity: 50, clusters: made });
      Template.fromStack(stack);
    };
    for (const use of ['clusterName', 'clusterArn'] as const) {
      // `Test-Cluster0...-<12>`: 20 of them fit beside 50 slots; with a long stack name in each, they do not.
      expect(synthWith('Test', use)).not.toThrow();
      expect(messageOf(synthWith('karma-proxy-production-eu-central-1-stack-blue', use))).toContain("The role's inline policies would be about");
    }
  });

  test('a stack for any region is refused only when the shortest region is too long; when only a long one is, synth warns', () => {
    const stack = new Stack(new App(), 'Test');
    new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false, minCapacity: 50, maxCapacity: 50, clusters: clusters(33) });
    expect(() => Template.fromStack(stack)).not.toThrow();
    const warnings = Annotations.fromStack(stack).findWarning('/Test/Proxy', Match.stringLikeRegexp('KarmaProxy:PolicySize')).map((w) => String(w.entry.data));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/in ap-southeast-2, over IAM's 10,240 for a role \(about [\d,]+ in us-east-1\)/);
  });

  test("a stack in another partition is measured with that partition's longer ARNs", () => {
    const inRegion = (region: string) => () => {
      const stack = new Stack(new App(), 'Test', { env: { account: '123456789012', region } });
      new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false, minCapacity: 50, maxCapacity: 50, clusters: clusters(31) });
      Template.fromStack(stack);
    };
    expect(inRegion('us-east-1')).not.toThrow();
    expect(messageOf(inRegion('us-gov-west-1'))).toContain("The role's inline policies would be about");
  });

  test("a role of the app's own is measured with its own inline policies, and the advice names one that takes no statements", () => {
    const stack = new Stack(new App(), 'Test');
    const big = new iam.PolicyDocument({ statements: Array.from({ length: 100 }, (_, i) => new iam.PolicyStatement({ actions: ['s3:GetObject'], resources: [`arn:aws:s3:::bucket-number-${i}-of-many/*`] })) });
    const role = new iam.Role(stack, 'Own', { assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'), inlinePolicies: { big } });
    new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false, role });
    const message = messageOf(() => Template.fromStack(stack));
    expect(message).toContain("The role's inline policies would be about");
    expect(message).toContain('role.withoutPolicyUpdates()');
  });

  test('the largest fleet with two dozen clusters, fifty clusters, or any number of slots alone, is fine', () => {
    expect(synth({ minCapacity: 50, maxCapacity: 50, clusters: clusters(25) })).not.toThrow();
    expect(synth({ minCapacity: 50, maxCapacity: 50 })).not.toThrow();
    expect(synth({ clusters: clusters(50) })).not.toThrow();
  });
});

test.each(['t4g.nano', 'c7gn.medium', 'm7g.metal', 'im4gn.large', 'x2gd.xlarge', 'r8g.metal-24xl', 'c8g.metal-48xl'])('the Graviton type %s is taken', (type) => {
  expect(build({ instanceType: new ec2.InstanceType(type) })).not.toThrow();
});
