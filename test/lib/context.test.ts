/** The app's settings: context keys first, then KARMA_* env vars, then example values with a warning. */
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { CONTEXT_KEYS, EXAMPLE_CONTEXT, KarmaProxyStack, propsFromContext } from '../../lib';
import { contextSettings, envVarName, straySettings } from '../../lib/context';

const none = (): undefined => undefined;
const ctx = (values: Record<string, unknown>) => (key: string): unknown => values[key];

test('every key of the issue is read, each with its KARMA_ env var', () => {
  for (const key of ['domain', 'hostedZoneId', 'hostedZoneName', 'vpcId', 'instanceType', 'minCapacity', 'maxCapacity',
    'spot', 'redis', 'redisNodeType', 'allowedCidrs', 'clusters', 'ports', 'proxyEnv']) {
    expect(CONTEXT_KEYS).toHaveProperty(key);
  }
  expect(envVarName('hostedZoneId')).toBe('KARMA_HOSTED_ZONE_ID');
  expect(envVarName('redisNodeType')).toBe('KARMA_REDIS_NODE_TYPE');
  expect(envVarName('proxyEnv')).toBe('KARMA_PROXY_ENV');
  expect(envVarName('domain')).toBe('KARMA_DOMAIN');
});

test('nothing given: example values, said in a warning', () => {
  const r = propsFromContext(none, {});
  expect(r.usedExamples).toBe(true);
  expect(r.props).toEqual({ ...EXAMPLE_CONTEXT });
  expect(r.stackName).toBe('KarmaProxy');
  expect(r.warnings.join('\n')).toMatch(/example values.*proxy\.example\.com.*cdk deploy -c domain=/s);
});

test('command-line context: strings of every kind', () => {
  const r = propsFromContext(ctx({
    domain: 'apps.acme.io', hostedZoneId: 'Z1', instanceType: 't4g.micro', minCapacity: '2', maxCapacity: '3',
    spot: 'true', redis: 'false', allowedCidrs: '203.0.113.0/24, 198.51.100.0/24', clusters: 'prod,staging',
    ports: '80,8000-8100', proxyEnv: 'LOG_CONNECTIONS=true,ALLOWED_PORTS=80,8080', redisNodeType: 'cache.t4g.small',
    vpcId: 'vpc-1', publicSubnetIds: 'subnet-1,subnet-2', hostedZoneName: 'acme.io',
  }), {});
  expect(r.usedExamples).toBe(false);
  expect(r.warnings).toEqual([]);
  expect(r.props).toMatchObject({
    domain: 'apps.acme.io', hostedZoneId: 'Z1', hostedZoneName: 'acme.io', minCapacity: 2, maxCapacity: 3, spot: true,
    redis: false, redisNodeType: 'cache.t4g.small', allowedCidrs: ['203.0.113.0/24', '198.51.100.0/24'],
    clusters: ['prod', 'staging'], ports: [80, '8000-8100'],
    environment: { LOG_CONNECTIONS: 'true', ALLOWED_PORTS: '80,8080' },
    vpcId: 'vpc-1', publicSubnetIds: ['subnet-1', 'subnet-2'],
  });
  expect(r.props.instanceType?.toString()).toBe('t4g.micro');
});

test('cdk.json context: typed values', () => {
  const r = propsFromContext(ctx({
    domain: 'apps.acme.io', minCapacity: 2, spot: false, clusters: ['a', 'b'], proxyEnv: { RETRIES: 1 },
  }), {});
  expect(r.props).toMatchObject({ minCapacity: 2, spot: false, clusters: ['a', 'b'], environment: { RETRIES: '1' } });
});

test('KARMA_* env vars, and context winning over them', () => {
  const env = {
    KARMA_DOMAIN: 'env.acme.io', KARMA_HOSTED_ZONE_ID: 'ZENV', KARMA_SPOT: '1', KARMA_MAX_CAPACITY: '4',
    KARMA_PROXY_ENV: '{"LOG_CONNECTIONS":"true"}', KARMA_ALLOWED_CIDRS: '["10.0.0.0/8"]',
  };
  const r = propsFromContext(ctx({ domain: 'ctx.acme.io' }), env);
  expect(r.props).toMatchObject({
    domain: 'ctx.acme.io', hostedZoneId: 'ZENV', spot: true, maxCapacity: 4,
    environment: { LOG_CONNECTIONS: 'true' }, allowedCidrs: ['10.0.0.0/8'],
  });
});

test('a domain without a zone: no record, said in a warning', () => {
  const r = propsFromContext(ctx({ domain: 'apps.acme.io' }), {});
  expect(r.props.hostedZoneId).toBeUndefined();
  expect(r.warnings).toEqual([expect.stringContaining('no DNS record')]);
});

test('a zone id and name without a domain: the record is *.<zone name>', () => {
  const r = propsFromContext(ctx({ hostedZoneId: 'Z1', hostedZoneName: 'example.com' }), {});
  expect(r.props).toMatchObject({ domain: 'example.com', hostedZoneId: 'Z1', hostedZoneName: 'example.com' });
});

test('a zone id as `aws route53 list-hosted-zones` prints it (/hostedzone/Z...) is taken as the id CloudFormation wants', () => {
  const r = propsFromContext(ctx({ domain: 'apps.acme.io', hostedZoneId: '/hostedzone/Z0123456789ABCDEFGHIJ' }), {});
  expect(r.props.hostedZoneId).toBe('Z0123456789ABCDEFGHIJ');
});

test('static targets from context, as a list', () => {
  const r = propsFromContext(ctx({ domain: 'a.acme.io', discovery: 'static', staticTargets: '10.0.1.5:8080,10.0.2.7:8080' }), {});
  expect(r.props.staticTargets).toEqual(['10.0.1.5:8080', '10.0.2.7:8080']);
});

test('static targets on IPv6, as a comma-separated list: read as such, not as broken JSON', () => {
  const r = propsFromContext(ctx({ domain: 'a.acme.io', discovery: 'static', staticTargets: '[fd00:ec2::10]:80, [fd00:ec2::11]:80' }), {});
  expect(r.props.staticTargets).toEqual(['[fd00:ec2::10]:80', '[fd00:ec2::11]:80']);
  const json = propsFromContext(ctx({ domain: 'a.acme.io', discovery: 'static', staticTargets: '["[fd00:ec2::10]:80"]' }), {});
  expect(json.props.staticTargets).toEqual(['[fd00:ec2::10]:80']);
});

test('-c allowedCidrs= (empty) is refused rather than read as the default that opens the proxy to everyone; [] is no one', () => {
  expect(() => propsFromContext(ctx({ domain: 'a.acme.io', allowedCidrs: '' }), {})).toThrow(
    "context 'allowedCidrs' is empty: leave it out for the default (0.0.0.0/0), or give [] to open ports 80 and 443 to no one",
  );
  expect(propsFromContext(ctx({ domain: 'a.acme.io', allowedCidrs: '[]' }), {}).props.allowedCidrs).toEqual([]);
  expect(propsFromContext(ctx({ domain: 'a.acme.io' }), {}).props.allowedCidrs).toBeUndefined();
});

test('-c clusters= or ports=, or an empty list of them, is refused rather than read as "any cluster", "any port"', () => {
  expect(() => propsFromContext(ctx({ domain: 'a.acme.io', clusters: '' }), {})).toThrow(
    "context 'clusters' is empty: leave it out for the default (any cluster of the account), or name the clusters to serve");
  expect(() => propsFromContext(ctx({ domain: 'a.acme.io', ports: '[]' }), {})).toThrow(
    "context 'ports' is an empty list: leave it out for the default (any port), or name the ports to serve");
  expect(() => propsFromContext(ctx({ domain: 'a.acme.io' }), { KARMA_CLUSTERS: '' })).toThrow(
    'KARMA_CLUSTERS is empty: unset it for the default (any cluster of the account), or name the clusters to serve');
  expect(() => propsFromContext(ctx({ domain: 'a.acme.io', clusters: ' , ' }), {})).toThrow("context 'clusters' is an empty list");
  expect(propsFromContext(ctx({ domain: 'a.acme.io', clusters: 'prod', ports: '80,8080' }), {}).props).toMatchObject({ clusters: ['prod'], ports: [80, 8080] });
});

test('a pool (asg, tag, static) with no domain and no zone gets no example DNS: it is reached on its addresses', () => {
  const r = propsFromContext(ctx({ discovery: 'static', staticTargets: '10.0.0.1:80' }), {});
  expect(r.usedExamples).toBe(false);
  expect(r.props).not.toHaveProperty('domain');
  expect(r.props).not.toHaveProperty('hostedZoneId');
  expect(r.warnings).toContain('no domain and no hostedZoneId: no DNS record is created; clients reach the static pool on the Addresses output.');
  const stack = new KarmaProxyStack(new App(), 'KarmaProxy', { ...r.props, redis: false });
  expect(stack.usesExampleValues).toBe(false);
  expect(Object.keys(Template.fromStack(stack).findResources('AWS::Route53::RecordSet'))).toEqual([]);
  // ECS routes by domain: there the examples still stand in, said in a warning.
  expect(propsFromContext(ctx({}), {}).usedExamples).toBe(true);
});

test("a refused discovery, domain or zone leaves the stack's checks out of the error (they would all be about it)", () => {
  expect(contextSettings(ctx({ discovery: 'foo', staticTargets: '10.0.0.1:80' }), {}).settled).toBe(false);
  expect(contextSettings(ctx({ hostedZoneId: 'Z0123456789ABCDEFGHIJ' }), {}).settled).toBe(false);
  expect(contextSettings(ctx({ hostedZoneName: 'example.com', discovery: 'static' }), {}).settled).toBe(false);
  const fine = contextSettings(ctx({ domain: 'a.acme.io', spot: 'maybe' }), {});
  expect(fine.settled).toBe(true);
  expect(fine.problems).toEqual(["context 'spot' must be true or false (got 'maybe')"]);
});

test("booleans are read as the runtime reads its own: Go's t and f too, in any case", () => {
  for (const [given, read] of [['t', true], ['F', false], ['Yes', true], ['OFF', false], ['1', true]] as const) {
    expect(propsFromContext(ctx({ domain: 'a.acme.io', spot: given }), {}).props.spot).toBe(read);
    expect(propsFromContext(ctx({ domain: 'a.acme.io' }), { KARMA_SPOT: given }).props.spot).toBe(read);
  }
});

test('a metrics CIDR of IPv6 in upper case is the same CIDR', () => {
  const r = propsFromContext(ctx({ domain: 'a.acme.io', metricsCidr: '2001:DB8::/48' }), {});
  expect(r.props.metricsPeer?.uniqueId).toBe('2001:db8::/48');
});

test('a metrics CIDR becomes the metrics peer', () => {
  const r = propsFromContext(ctx({ domain: 'a.acme.io', metricsCidr: '10.0.0.0/16' }), {});
  expect(r.props.metricsPeer?.uniqueId).toBe(ec2.Peer.ipv4('10.0.0.0/16').uniqueId);
});

test('every bad value in one error, naming where it came from', () => {
  expect(() => propsFromContext(ctx({
    hostedZoneId: 'Z1', minCapacity: 'two', spot: 'maybe', discovery: 'dns', metricsCidr: 'nope',
  }), { KARMA_REDIS: 'perhaps' })).toThrow([
    'Invalid Karma Proxy settings:',
    '  - hostedZoneId needs domain or hostedZoneName (context domain, hostedZoneName, or KARMA_DOMAIN)',
    "  - discovery must be ecs, asg, tag or static (got 'dns')",
    "  - context 'minCapacity' must be a whole number (got 'two')",
    "  - context 'spot' must be true or false (got 'maybe')",
    "  - KARMA_REDIS must be true or false (got 'perhaps')",
    "  - metricsCidr 'nope' is not a CIDR such as 10.0.0.0/16",
  ].join('\n'));
});

test('a metricsCidr whose prefix is longer than its address is refused at synth, not at deploy', () => {
  expect(() => propsFromContext(ctx({ domain: 'a.acme.io', metricsCidr: '10.0.0.0/33' }), {})).toThrow("metricsCidr '10.0.0.0/33' is not a CIDR such as 10.0.0.0/16");
  expect(() => propsFromContext(ctx({ domain: 'a.acme.io', metricsCidr: 'fd00::/129' }), {})).toThrow("metricsCidr 'fd00::/129' is not a CIDR");
  expect(propsFromContext(ctx({ domain: 'a.acme.io', metricsCidr: 'fd00::/8' }), {}).props.metricsPeer).toBeDefined();
});

test("a zone's name given as hostedZoneId is refused, and says where it belongs", () => {
  expect(() => propsFromContext(ctx({ domain: 'apps.example.com', hostedZoneId: 'example.com' }), {})).toThrow(
    "hostedZoneId 'example.com' is not a Route53 hosted zone id such as Z0123456789ABCDEFGHIJ (that looks like the zone's name: give it as hostedZoneName)");
  expect(() => propsFromContext(ctx({ domain: 'apps.example.com', hostedZoneId: 'z-lower' }), {})).toThrow("hostedZoneId 'z-lower' is not a Route53 hosted zone id");
});

test('hostedZoneName alone is named as what is missing, not as a clash with the example domain', () => {
  expect(() => propsFromContext(ctx({ hostedZoneName: 'foo.com' }), {})).toThrow(
    'hostedZoneName needs hostedZoneId (context hostedZoneId or KARMA_HOSTED_ZONE_ID): no lookup is made');
});

test('proxyEnv as KEY=value pairs splits before upper-case names only: a health path with a query keeps its commas', () => {
  expect(propsFromContext(ctx({ domain: 'a.acme.io', proxyEnv: 'HEALTH_CHECK_PATH=/health?a=1,b=2,LOG_CONNECTIONS=true' }), {}).props.environment)
    .toEqual({ HEALTH_CHECK_PATH: '/health?a=1,b=2', LOG_CONNECTIONS: 'true' });
});

test('proxyEnv as JSON takes strings, numbers and booleans; an object or null is refused, not written as [object Object]', () => {
  expect(propsFromContext(ctx({ domain: 'a.acme.io', proxyEnv: '{"RETRIES":1,"LOG_CONNECTIONS":true,"IDLE_TIMEOUT":"30"}' }), {}).props.environment)
    .toEqual({ RETRIES: '1', LOG_CONNECTIONS: 'true', IDLE_TIMEOUT: '30' });
  expect(() => propsFromContext(ctx({ domain: 'a.acme.io', proxyEnv: '{"A":{"b":1},"B":null,"C":"ok"}' }), {}))
    .toThrow("context 'proxyEnv': A, B must be a string, a number or a boolean");
});

test('a context key or KARMA_* env var that is no setting is named, with the one it likely means; CDK\'s own keys are not', () => {
  expect(straySettings(
    ['domain', 'instanceTpye', 'mincapacity', 'frobnicate', 'instance-type', 'min.capacity', '@aws-cdk/core:newStyleStackSynthesis', 'aws:cdk:enable-path-metadata', 'cli-telemetry'],
    { KARMA_DOMAIN: 'a.io', KARMA_INSTANCETYPE: 'c7g.large', KARMA_REDIS_NODETYPE: 'x', HOME: '/root', KARMA_UNRELATED: '1' },
  )).toEqual([
    "context 'instanceTpye' is not a setting of this app and is ignored; did you mean instanceType?",
    "context 'mincapacity' is not a setting of this app and is ignored; did you mean minCapacity?",
    "context 'frobnicate' is not a setting of this app and is ignored",
    "context 'instance-type' is not a setting of this app and is ignored; did you mean instanceType?",
    "context 'min.capacity' is not a setting of this app and is ignored; did you mean minCapacity?",
    'KARMA_INSTANCETYPE is not a setting of this app and is ignored; did you mean KARMA_INSTANCE_TYPE?',
    'KARMA_REDIS_NODETYPE is not a setting of this app and is ignored; did you mean KARMA_REDIS_NODE_TYPE?',
    'KARMA_UNRELATED is not a setting of this app and is ignored',
  ]);
});

test("a seed's setting given as a context key or KARMA_* env var is pointed to the key that sets it, or to proxyEnv", () => {
  expect(straySettings(
    ['nodeFilter', 'tagName', 'TARGET_PORT', 'healthCheckPath', 'allowedClusters'],
    { KARMA_NODE_FILTER: 'tag', KARMA_TAG_VALUE: 'Production' },
  )).toEqual([
    "context 'nodeFilter' is not a setting of this app and is ignored; did you mean discovery?",
    "context 'tagName' is not a setting of this app and is ignored; did you mean -c proxyEnv='TAG_NAME=...' (the proxy's own setting)?",
    "context 'TARGET_PORT' is not a setting of this app and is ignored; did you mean -c proxyEnv='TARGET_PORT=...' (the proxy's own setting)?",
    "context 'healthCheckPath' is not a setting of this app and is ignored; did you mean -c proxyEnv='HEALTH_CHECK_PATH=...' (the proxy's own setting)?",
    "context 'allowedClusters' is not a setting of this app and is ignored; did you mean clusters?",
    'KARMA_NODE_FILTER is not a setting of this app and is ignored; did you mean KARMA_DISCOVERY?',
    "KARMA_TAG_VALUE is not a setting of this app and is ignored; did you mean KARMA_PROXY_ENV='TAG_VALUE=...' (the proxy's own setting)?",
  ]);
});

test('a setting the deployment fixes (the port, the region, the cache) is said to be fixed, not sent to proxyEnv, which would refuse it', () => {
  expect(straySettings(['port', 'awsRegion', 'redisUrl'], { KARMA_HOST: '0.0.0.0' })).toEqual([
    "context 'port' is not a setting of this app and is ignored; the deployed proxy listens on port 80 (its security group and health probe are wired for it)",
    "context 'awsRegion' is not a setting of this app and is ignored; the proxy discovers in the stack's region: deploy the stack there",
    "context 'redisUrl' is not a setting of this app and is ignored; a Redis of your own is redis=false with REDIS_URL in proxyEnv (the stack's own cache is the default)",
    'KARMA_HOST is not a setting of this app and is ignored; the deployed proxy listens on every address of its instance',
  ]);
});

test('KARMA_ALLOWED_CIDRS set but empty is refused like -c allowedCidrs=, not read as the default that opens the proxy to everyone', () => {
  expect(() => propsFromContext(ctx({ domain: 'a.io' }), { KARMA_ALLOWED_CIDRS: '' }))
    .toThrow('KARMA_ALLOWED_CIDRS is empty: unset it for the default (0.0.0.0/0), or give [] to open ports 80 and 443 to no one');
  // Context wins: an empty env var beside a context value is not read at all.
  expect(propsFromContext(ctx({ domain: 'a.io', allowedCidrs: '10.0.0.0/8' }), { KARMA_ALLOWED_CIDRS: '' }).props.allowedCidrs).toEqual(['10.0.0.0/8']);
});

test('a number given as a list in cdk.json ([2]) is refused, not read as 2', () => {
  expect(() => propsFromContext(ctx({ domain: 'a.io', minCapacity: [2] }), {})).toThrow("context 'minCapacity' must be a whole number (got '2')");
});
