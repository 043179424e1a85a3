import * as os from 'node:os';
import { ConfigError, ENV_NAMES, loadConfig, mistypedSettings, selfTargets, TCP_IDLE_TIMEOUT_MS } from '../../runtime/config';
import { parseHost, rulesFrom } from '../../runtime/routing';

const errorOf = (env: Record<string, string>): ConfigError => {
  try {
    loadConfig(env);
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError');
};

describe('configuration', () => {
  test('defaults: port 6969 on 0.0.0.0, ecs mode, ALB-like health checks', () => {
    const c = loadConfig({ DOMAIN: 'Example.COM' });
    expect(c).toMatchObject({
      port: 6969,
      host: '0.0.0.0',
      domain: 'example.com',
      nodeFilter: 'ecs',
      mode: 'http',
      poolSize: 100,
      poolTimeoutMs: 2000,
      upstreamTimeoutMs: 60_000,
      shutdownTimeoutMs: 30_000,
      logConnections: false,
      metricsPort: 6970,
      allowedClusters: [],
      allowedPorts: [],
      nodeCheckPeriodMs: 30_000,
      healthCheckPath: '/',
      healthCheckPeriodMs: 30_000,
      healthCheckTimeoutMs: 5000,
      healthyThreshold: 5,
      unhealthyThreshold: 2,
      healthCheckMatcher: [{ from: 200, to: 399 }],
      circuitBreakerThreshold: 5,
      circuitBreakerTimeoutMs: 300_000,
      retries: 2,
      ipPreference: 'private',
      negativeCacheTtlMs: 10_000,
      maxRoutes: 1000,
      routeIdleTtlMs: 600_000,
    });
    expect(c.workers).toBeGreaterThanOrEqual(1);
  });

  test("pool modes take the stateless load balancer's defaults and units", () => {
    const c = loadConfig({ NODE_FILTER: 'asg' });
    expect(c).toMatchObject({
      nodeFilter: 'asg',
      asgName: 'worker-nodes',
      tagName: 'Name',
      tagValue: 'worker-node',
      targetPort: 30080,
      nodeCheckPeriodMs: 10_000,
      healthCheckPath: '/ping',
      healthCheckPeriodMs: 2000,
      healthCheckTimeoutMs: 2000,
      healthCheckMatcher: [{ from: 200, to: 200 }],
      domain: undefined,
    });
  });

  test('the seed example: every variable keeps its name, meaning and unit', () => {
    const c = loadConfig({
      AWS_REGION: 'us-east-1',
      NODE_FILTER: 'tag',
      TAG_NAME: 'Environment',
      TAG_VALUE: 'Production',
      PORT: '8080',
      HEALTH_CHECK_PERIOD: '30',
      HEALTH_CHECK_PATH: '/health',
      HEALTH_CHECK_TIMEOUT: '5',
      TARGET_PORT: '30080',
      POOL_SIZE: '200',
      POOL_TIMEOUT: '3',
      CIRCUIT_BREAKER_THRESHOLD: '3',
      CIRCUIT_BREAKER_TIMEOUT: '10',
      SHUTDOWN_TIMEOUT: '60',
      NODE_CHECK_PERIOD: '10',
      LOG_CONNECTIONS: 'true',
      HOST: '0.0.0.0',
      ASG_NAME: 'workers',
    });
    expect(c).toMatchObject({
      awsRegion: 'us-east-1',
      tagName: 'Environment',
      tagValue: 'Production',
      port: 8080,
      healthCheckPeriodMs: 30_000,
      healthCheckPath: '/health',
      healthCheckTimeoutMs: 5000,
      poolSize: 200,
      poolTimeoutMs: 3000,
      circuitBreakerThreshold: 3,
      circuitBreakerTimeoutMs: 600_000,
      shutdownTimeoutMs: 60_000,
      logConnections: true,
      asgName: 'workers',
    });
    for (const name of ['PORT', 'HOST', 'NODE_FILTER', 'AWS_REGION', 'TAG_NAME', 'TAG_VALUE', 'ASG_NAME', 'NODE_CHECK_PERIOD',
      'HEALTH_CHECK_PERIOD', 'HEALTH_CHECK_PATH', 'HEALTH_CHECK_TIMEOUT', 'TARGET_PORT', 'POOL_SIZE', 'POOL_TIMEOUT',
      'CIRCUIT_BREAKER_THRESHOLD', 'CIRCUIT_BREAKER_TIMEOUT', 'SHUTDOWN_TIMEOUT', 'LOG_CONNECTIONS', 'REDIS_URL']) {
      expect(ENV_NAMES).toContain(name);
    }
  });

  test("whole numbers take Go's Atoi forms: a leading + and leading zeros", () => {
    const c = loadConfig({ NODE_FILTER: 'asg', POOL_SIZE: '+200', TARGET_PORT: '08080', CIRCUIT_BREAKER_THRESHOLD: ' +3 ' });
    expect([c.poolSize, c.targetPort, c.circuitBreakerThreshold]).toEqual([200, 8080, 3]);
    for (const raw of ['-1', '1.5', '1e2', '0x10', '+', '1_000']) {
      expect(() => loadConfig({ NODE_FILTER: 'asg', POOL_SIZE: raw })).toThrow(/POOL_SIZE must be an integer from 0 to/);
    }
  });

  test("the Stateless Load Balancer's zeros start the proxy: no timeout of their own, bounded by the clock above them", () => {
    const c = loadConfig({ NODE_FILTER: 'asg', HEALTH_CHECK_TIMEOUT: '0', HEALTH_CHECK_PERIOD: '10', POOL_TIMEOUT: '0', UPSTREAM_TIMEOUT: '30', CIRCUIT_BREAKER_TIMEOUT: '0', CIRCUIT_BREAKER_THRESHOLD: '0', POOL_SIZE: '0' });
    expect([c.healthCheckTimeoutMs, c.poolTimeoutMs, c.circuitBreakerTimeoutMs]).toEqual([10_000, 30_000, 300_000]);
    expect(c.poolSize).toBe(100_000); // no cap of its own: MAX_CONNECTIONS bounds it
    // It ignored both breaker settings, and ran with 5 failures and 5 minutes.
    expect(c.circuitBreakerThreshold).toBe(5);
    // Still no negative, and nothing that rounds to zero.
    expect(errorOf({ NODE_FILTER: 'asg', POOL_TIMEOUT: '-1', HEALTH_CHECK_TIMEOUT: '0.0001' }).problems).toEqual([
      "HEALTH_CHECK_TIMEOUT must be 0 or at least 0.001 seconds (got '0.0001')",
      "POOL_TIMEOUT must be a number of seconds (got '-1')",
    ]);
  });

  test("the metrics endpoint listens where the proxy does, unless METRICS_HOST says otherwise", () => {
    expect(loadConfig({ NODE_FILTER: 'asg' }).metricsHost).toBe('0.0.0.0');
    expect(loadConfig({ NODE_FILTER: 'asg', HOST: '127.0.0.1' }).metricsHost).toBe('127.0.0.1');
    expect(loadConfig({ NODE_FILTER: 'asg', HOST: '[::]' }).metricsHost).toBe('::');
    expect(loadConfig({ NODE_FILTER: 'asg', HOST: '127.0.0.1', METRICS_HOST: '0.0.0.0' }).metricsHost).toBe('0.0.0.0');
  });

  test('CIRCUIT_BREAKER_TIMEOUT takes fractions of a minute', () => {
    expect(loadConfig({ NODE_FILTER: 'asg', CIRCUIT_BREAKER_TIMEOUT: '0.05' }).circuitBreakerTimeoutMs).toBe(3000);
  });

  test("durations are read in every decimal form Go's ParseFloat takes, and one too long says its limit", () => {
    for (const [raw, ms] of [['.5', 500], ['2.', 2000], ['1e1', 10_000], ['2.5E-1', 250], [' 3 ', 3000], ['+2', 2000]] as const) {
      expect(loadConfig({ NODE_FILTER: 'asg', POOL_TIMEOUT: raw }).poolTimeoutMs).toBe(ms);
    }
    for (const raw of ['-1', '0x10', 'Inf', 'NaN', '1e', '.', '1..2', '5s', '++1', '+']) {
      expect(() => loadConfig({ NODE_FILTER: 'asg', POOL_TIMEOUT: raw })).toThrow(/POOL_TIMEOUT must be a number of seconds \(got/);
    }
    expect(() => loadConfig({ NODE_FILTER: 'asg', CIRCUIT_BREAKER_TIMEOUT: '1e12' })).toThrow(/CIRCUIT_BREAKER_TIMEOUT must be at most 35791 minutes/);
  });

  test('static mode reads STATIC_TARGETS, IPv6 included', () => {
    const c = loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: '10.0.0.1:80, [::1]:8080,localhost:3000' });
    expect(c.staticTargets).toEqual([
      { id: '10.0.0.1:80', host: '10.0.0.1', port: 80 },
      { id: '[::1]:8080', host: '::1', port: 8080 },
      { id: 'localhost:3000', host: 'localhost', port: 3000 },
    ]);
  });

  test('STATIC_TARGETS: brackets hold an IPv6 address, and all-numeric labels an IPv4 one; anything else is named', () => {
    expect(loadConfig({ NODE_FILTER: 'static', STATIC_TARGETS: '[::ffff:10.0.0.1]:80,[fd00::1]:81,10.0.0.2:82,api-1.internal:83' })
      .staticTargets.map((t) => t.id)).toEqual(['[::ffff:10.0.0.1]:80', '[fd00::1]:81', '10.0.0.2:82', 'api-1.internal:83']);
    expect(errorOf({ NODE_FILTER: 'static', STATIC_TARGETS: '[::::]:80,999.1.1.1:80,[1.2.3.4]:80,10.0.0.1:80,1.2.3:80' }).problems).toEqual([
      "STATIC_TARGETS must be a comma-separated list of host:port (ports 1-65535), and '[::::]:80', '999.1.1.1:80', '[1.2.3.4]:80', '1.2.3:80' are not " +
        "(got '[::::]:80,999.1.1.1:80,[1.2.3.4]:80,10.0.0.1:80,1.2.3:80')",
    ]);
  });

  test("REDIS_URL takes redis://, rediss:// with credentials, and Karma's bare host:port", () => {
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: 'cache.local:6379' }).redisUrl).toBe('redis://cache.local:6379');
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: 'rediss://u:p@cache:6380/0' }).redisUrl).toBe('rediss://u:p@cache:6380/0');
    expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: 'http://cache' }).problems).toEqual([
      "REDIS_URL must be a redis:// or rediss:// URL, or host:port (got 'http://cache')",
    ]);
  });

  test("REDIS_URL: a plain host alone is on port 6379, `:port` is this machine (go-redis's reading); a single word is refused, unshown", () => {
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: 'my-redis.cache.amazonaws.com' }).redisUrl).toBe('redis://my-redis.cache.amazonaws.com:6379');
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: ' localhost ' }).redisUrl).toBe('redis://localhost:6379');
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: '10.0.0.5' }).redisUrl).toBe('redis://10.0.0.5:6379');
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: '[::1]' }).redisUrl).toBe('redis://[::1]:6379');
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: ':6380' }).redisUrl).toBe('redis://127.0.0.1:6380');
    for (const bad of [':', ':0', ':70000', 'my redis', 'cache!', 'true', '1', 'redis', '1.2', '999.1.1.1', '999.1.1.1:6379', 'redis://1.2.3:6379']) expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: bad }).problems).toEqual([expect.stringMatching(/^REDIS_URL must be /)]);
    // A token pasted alone is neither taken as a host (and sent to DNS) nor shown.
    const token = 'Xk9fP2qLm7Rt4vWzS3cr3t';
    expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: token }).problems).toEqual(["REDIS_URL must be a redis:// or rediss:// URL, or host:port (got '***')"]);
  });

  test('REDIS_URL\'s host is an IP address or a DNS name (a compose service\'s my_redis too); a stray quote is refused at start', () => {
    for (const ok of ['my_redis:6379', '[::1]:6379', 'redis://my_redis:6379', 'redis://[fd00::5]:6379/1', 'rediss://master.x.cache.amazonaws.com.:6379']) {
      expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: ok }).redisUrl).toContain(ok.replace(/^(?!redis)/, 'redis://'));
    }
    for (const bad of ['"127.0.0.1:6379', 'my_redis!:6379', 'redis://"cache:6379', 'redis://ca che:6379', "rediss://cache':6379"]) {
      expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: bad }).problems).toEqual([expect.stringMatching(/^REDIS_URL must be .*(host is an IP address or a DNS name|URL, or host:port)/)]);
    }
  });

  test('REDIS_URL in quotes (the seed README\'s REDIS_URL="...", through docker --env-file) is refused saying so, shown as the same value unquoted would be', () => {
    expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: '"redis://127.0.0.1:6379"' }).problems).toEqual([
      `REDIS_URL must be a redis:// or rediss:// URL, or host:port, without the quotes around it (got '"redis://127.0.0.1:6379"')`,
    ]);
    expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: "'cache.local:6379'" }).problems).toEqual([
      `REDIS_URL must be a redis:// or rediss:// URL, or host:port, without the quotes around it (got ''cache.local:6379'')`,
    ]);
    // A password stays hidden, quoted or not.
    const problems = errorOf({ NODE_FILTER: 'asg', REDIS_URL: '"redis://:s3cr3t-token@cache:6379"' }).problems;
    expect(problems).toEqual([`REDIS_URL must be a redis:// or rediss:// URL, or host:port, without the quotes around it (got '"redis://***@cache:6379"')`]);
    expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: '"Xk9fP2qLm7Rt4vWzS3cr3t"' }).problems[0]).not.toContain('Xk9f');
  });

  test('AWS_DEFAULT_REGION, the region when AWS_REGION is unset, is checked as AWS_REGION is and named when wrong', () => {
    expect(loadConfig({ NODE_FILTER: 'asg', AWS_DEFAULT_REGION: ' eu-west-1 ' }).awsRegion).toBe('eu-west-1');
    expect(loadConfig({ NODE_FILTER: 'asg', AWS_REGION: 'us-east-1', AWS_DEFAULT_REGION: 'eu-west-1' }).awsRegion).toBe('us-east-1');
    expect(loadConfig({ NODE_FILTER: 'asg', AWS_REGION: ' ', AWS_DEFAULT_REGION: 'eu-west-1' }).awsRegion).toBe('eu-west-1');
    for (const bad of ['EU-WEST-1', 'eu-west-1 # the region', 'eu west 1']) {
      expect(errorOf({ NODE_FILTER: 'asg', AWS_DEFAULT_REGION: bad }).problems).toEqual([`AWS_DEFAULT_REGION must be a region name such as eu-west-1 (got '${bad}')`]);
    }
    // Set aside by AWS_REGION, as the SDKs and the CLI set it aside.
    expect(loadConfig({ NODE_FILTER: 'asg', AWS_REGION: 'us-east-1', AWS_DEFAULT_REGION: 'EU-WEST-1' }).awsRegion).toBe('us-east-1');
  });

  test('a DOMAIN of dots alone is named as given wrong, not as missing', () => {
    expect(errorOf({ DOMAIN: '..' }).problems).toEqual(["DOMAIN must be a DNS domain such as example.com (got '..')"]);
  });

  test('REDIS_URL names its database by number, or not at all: anything else the client would send as SELECT NaN', () => {
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: 'redis://cache:6379/' }).redisUrl).toBe('redis://cache:6379/');
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: 'redis://cache:6379/3' }).redisUrl).toBe('redis://cache:6379/3');
    for (const url of ['redis://cache:6379/abc', 'redis://cache:6379/%20', 'redis://cache:6379/1.5', 'redis://cache:6379/0x1', 'redis://cache:6379/1/2']) {
      // (Shown masked: a path that is not a number may be a token pasted in the wrong place.)
      expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: url }).problems).toEqual([
        "REDIS_URL must be a redis:// or rediss:// URL whose path, if any, is a database number such as /0 (got 'redis://***')",
      ]);
    }
  });

  test('a bad REDIS_URL is named without its password: the message goes to the journal', () => {
    const token = 'Tok#en:w1th$chars!&^<>-zz%41';
    const { problems } = errorOf({ NODE_FILTER: 'asg', REDIS_URL: `redis://:${token}@10.0.0.5:6379` });
    expect(problems).toEqual(["REDIS_URL must be a redis:// or rediss:// URL, or host:port (got 'redis://***@10.0.0.5:6379')"]);
    for (const url of ['redis://:s3cret', 'rediss://:s3cret-token-without-its-host', 'aGVsbG8s3cret+/x==', 'http://admin:s3cret@cache:6380', 'user:s3cret@cache:6379', ':s3cret@cache:6379', 'redis:/:s3cret@cache:6379', 'rediss://cache:99999/?password=s3cret']) {
      expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: url }).problems.join()).not.toContain('s3cret');
    }
  });

  test('REDIS_URL with a password that is not percent-encoded, or a port past 65535, is refused at start', () => {
    expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: 'redis://:abc%zz@cache:6379' }).problems).toEqual([
      "REDIS_URL must be a URL whose user and password are percent-encoded (% as %25), or the token in REDIS_AUTH_SECRET_ARN (got 'redis://***@cache:6379')",
    ]);
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: 'redis://:abc%25zz@cache:6379' }).redisUrl).toBe('redis://:abc%25zz@cache:6379');
    expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: '127.0.0.1:99999' }).problems[0]).toMatch(/^REDIS_URL must be .*port from 1 to 65535/);
  });

  test('LOOPBACK_TARGETS is on by itself when an AWS endpoint is on loopback (a local stand-in), and only then', () => {
    const ecs = { DOMAIN: 'example.com' };
    expect(loadConfig(ecs).loopbackTargets).toBe(false);
    for (const [name, url] of [['AWS_ENDPOINT_URL_ECS', 'http://127.0.0.1:4566'], ['AWS_ENDPOINT_URL', 'http://localhost:4566/'],
      ['AWS_ENDPOINT_URL_EC2', 'http://[::1]:8080'], ['AWS_ENDPOINT_URL_AUTO_SCALING', 'http://127.0.0.2']]) {
      expect(loadConfig({ ...ecs, [name]: url }).loopbackTargets).toBe(true);
    }
    expect(loadConfig({ ...ecs, AWS_ENDPOINT_URL_ECS: 'https://ecs.us-east-1.amazonaws.com' }).loopbackTargets).toBe(false);
    expect(loadConfig({ ...ecs, AWS_ENDPOINT_URL_ECS: 'http://10.0.0.5:4566' }).loopbackTargets).toBe(false);
    expect(loadConfig({ ...ecs, AWS_ENDPOINT_URL_ECS: 'not a url' }).loopbackTargets).toBe(false);
    for (const url of ['http://0.0.0.0:4566', 'http://[::ffff:127.0.0.1]:4566', 'http://127.1:4566', 'http://s3.localhost:4566']) {
      expect(loadConfig({ ...ecs, AWS_ENDPOINT_URL: url }).loopbackTargets).toBe(true);
    }
    // The SDK told to ignore the endpoint settings talks to AWS itself.
    expect(loadConfig({ ...ecs, AWS_ENDPOINT_URL: 'http://127.0.0.1:4566', AWS_IGNORE_CONFIGURED_ENDPOINT_URLS: 'true' }).loopbackTargets).toBe(false);
    // Said in so many words, it stands.
    expect(loadConfig({ ...ecs, AWS_ENDPOINT_URL_ECS: 'http://127.0.0.1:4566', LOOPBACK_TARGETS: 'false' }).loopbackTargets).toBe(false);
  });

  test("the SDK's AWS_MAX_ATTEMPTS and AWS_RETRY_MODE are checked at start with the rest, not taken silently", () => {
    expect(() => loadConfig({ DOMAIN: 'example.com', AWS_MAX_ATTEMPTS: '5', AWS_RETRY_MODE: 'standard' })).not.toThrow();
    expect(() => loadConfig({ DOMAIN: 'example.com', AWS_RETRY_MODE: 'adaptive' })).not.toThrow();
    expect(errorOf({ DOMAIN: 'example.com', AWS_MAX_ATTEMPTS: 'abc', AWS_RETRY_MODE: 'bogus', PORT: 'x' }).problems).toEqual([
      "PORT must be an integer from 0 to 65535 (got 'x')",
      "AWS_MAX_ATTEMPTS must be a whole number of attempts from 1 to 999 (got 'abc')",
      "AWS_RETRY_MODE must be standard or adaptive (got 'bogus')",
    ]);
    // As the SDK reads it: any other spelling would silently be standard there.
    for (const mode of [' adaptive ', 'ADAPTIVE', 'legacy']) {
      expect(errorOf({ DOMAIN: 'example.com', AWS_RETRY_MODE: mode }).problems).toEqual([`AWS_RETRY_MODE must be standard or adaptive (got '${mode}')`]);
    }
    expect(errorOf({ DOMAIN: 'example.com', AWS_MAX_ATTEMPTS: '0' }).problems).toEqual(["AWS_MAX_ATTEMPTS must be a whole number of attempts from 1 to 999 (got '0')"]);
  });

  test('HEALTH_CHECK_PATH=off disables active checks', () => {
    expect(loadConfig({ NODE_FILTER: 'asg', HEALTH_CHECK_PATH: 'off' }).healthCheckPath).toBeNull();
  });

  test('allow-lists: clusters as ECS spells them (a Host matches them in any case), ports and ranges', () => {
    const c = loadConfig({ DOMAIN: 'example.com', ALLOWED_CLUSTERS: 'Prod, staging', ALLOWED_PORTS: '80,8000-8100' });
    expect(c.allowedClusters).toEqual(['Prod', 'staging']);
    expect(rulesFrom(c).allowedClusters).toEqual(['prod', 'staging']);
    expect(parseHost('api-80-prod.example.com', rulesFrom(c))).toMatchObject({ ok: true, key: { cluster: 'prod' } });
    expect(c.allowedPorts).toEqual([{ from: 80, to: 80 }, { from: 8000, to: 8100 }]);
  });

  test('ALLOWED_CLUSTERS takes a cluster ARN as the name at its end; an entry no Host could name stops the start', () => {
    const c = loadConfig({ DOMAIN: 'example.com', ALLOWED_CLUSTERS: 'arn:aws:ecs:us-east-1:123456789012:cluster/Prod, arn:aws-us-gov:ecs:us-gov-west-1:123456789012:cluster/gov_1' });
    expect(c.allowedClusters).toEqual(['Prod', 'gov_1']);
    expect(parseHost('api-80-prod.example.com', rulesFrom(c))).toMatchObject({ ok: true, key: { cluster: 'prod' } });
    expect(errorOf({ DOMAIN: 'example.com', ALLOWED_CLUSTERS: 'prod, prod.east' }).problems).toEqual([
      "ALLOWED_CLUSTERS must be a comma-separated list of ECS cluster names (letters, digits, - and _) or ARNs, and 'prod.east' is neither (got 'prod, prod.east')",
    ]);
  });

  test('every bad or missing setting is named in one error', () => {
    const e = errorOf({ PORT: 'http', POOL_SIZE: '-1', NODE_FILTER: 'ecs', LOG_CONNECTIONS: 'maybe', ALLOWED_PORTS: '80,70000', UPSTREAM_TIMEOUT: '-1' });
    expect(e.problems).toEqual([
      "PORT must be an integer from 0 to 65535 (got 'http')",
      "POOL_SIZE must be an integer from 0 to 100000 (got '-1')",
      "UPSTREAM_TIMEOUT must be a number of seconds above 0 (got '-1')",
      "LOG_CONNECTIONS must be true or false (got 'maybe')",
      "ALLOWED_PORTS must be a comma-separated list of ports or ranges (1-65535), and '70000' is not one (got '80,70000')",
      'DOMAIN is required when NODE_FILTER=ecs (routes are <service>-<port>-<cluster>.<DOMAIN>); for one EC2 pool set NODE_FILTER=asg, tag or static',
    ]);
    expect(e.message).toMatch(/^invalid configuration: PORT must be/);
  });

  test('listen addresses are IP literals or host names; durations too small for a millisecond timer are refused', () => {
    const pool = { NODE_FILTER: 'asg' };
    expect(errorOf({ ...pool, HOST: 'not a host', METRICS_HOST: '999.1.1.1' }).problems).toEqual([
      "HOST must be an IP address (0.0.0.0, ::, 127.0.0.1) or a host name (got 'not a host')",
      "METRICS_HOST must be an IP address (0.0.0.0, ::, 127.0.0.1) or a host name (got '999.1.1.1')",
    ]);
    for (const host of ['0.0.0.0', '::', '::1', '127.0.0.1', 'localhost', 'ip-10-0-0-1.ec2.internal']) expect(loadConfig({ ...pool, HOST: host }).host).toBe(host);
    expect(errorOf({ ...pool, WORKER_STUCK_TIMEOUT: '0.5' }).problems).toEqual(["WORKER_STUCK_TIMEOUT must be 0 (off) or at least 1 second (got '0.5')"]);
    expect(loadConfig({ ...pool, WORKER_STUCK_TIMEOUT: '0' }).workerStuckTimeoutMs).toBe(0);
    // An IPv6 address in brackets, as Go listen addresses write it, is that address.
    expect(loadConfig({ ...pool, HOST: '[::]', METRICS_HOST: '[::1]' })).toMatchObject({ host: '::', metricsHost: '::1' });
    expect(errorOf({ ...pool, HOST: '[127.0.0.1]' }).problems[0]).toMatch(/^HOST must be/);
    expect(errorOf({ ...pool, UPSTREAM_TIMEOUT: '0.0001', REQUEST_TIMEOUT: '0.0004' }).problems).toEqual([
      "UPSTREAM_TIMEOUT must be at least 0.001 seconds (got '0.0001')",
      "REQUEST_TIMEOUT must be 0 or at least 0.001 seconds (got '0.0004')",
    ]);
    expect(loadConfig({ ...pool, UPSTREAM_TIMEOUT: '0.001' }).upstreamTimeoutMs).toBe(1);
  });

  test("booleans take Go's ParseBool forms, as the seeds read them", () => {
    for (const v of ['1', 't', 'T', 'TRUE', 'true', 'True', 'yes', 'on']) expect(loadConfig({ NODE_FILTER: 'asg', LOG_CONNECTIONS: v }).logConnections).toBe(true);
    for (const v of ['0', 'f', 'F', 'FALSE', 'false', 'False', 'no', 'off']) expect(loadConfig({ NODE_FILTER: 'asg', LOG_CONNECTIONS: v }).logConnections).toBe(false);
    expect(errorOf({ NODE_FILTER: 'asg', LOG_CONNECTIONS: 'tru' }).problems).toEqual(["LOG_CONNECTIONS must be true or false (got 'tru')"]);
  });

  test("a Stateless Load Balancer user who never set NODE_FILTER is told to set it; a misspelt one is the only problem", () => {
    expect(errorOf({ ASG_NAME: 'workers' }).problems).toEqual([
      'DOMAIN is required when NODE_FILTER=ecs (routes are <service>-<port>-<cluster>.<DOMAIN>); for one EC2 pool set NODE_FILTER=asg, tag or static (ecs is the default)',
    ]);
    expect(errorOf({ NODE_FILTER: 'tags', MODE: 'tcp' }).problems).toEqual(["NODE_FILTER must be one of ecs, asg, tag, static (got 'tags')"]);
  });

  test('a health check period shorter than the default timeout shortens the timeout; a timeout set longer is an error', () => {
    expect(loadConfig({ NODE_FILTER: 'asg', HEALTH_CHECK_PERIOD: '1' })).toMatchObject({ healthCheckPeriodMs: 1000, healthCheckTimeoutMs: 1000 });
    expect(loadConfig({ DOMAIN: 'example.com', HEALTH_CHECK_PERIOD: '3' })).toMatchObject({ healthCheckPeriodMs: 3000, healthCheckTimeoutMs: 3000 });
    expect(loadConfig({ DOMAIN: 'example.com', HEALTH_CHECK_PERIOD: '10' }).healthCheckTimeoutMs).toBe(5000);
  });

  test('MODE=tcp keeps quiet connections for 350 s, like an NLB, unless IDLE_TIMEOUT is set', () => {
    const tcp = { NODE_FILTER: 'static', STATIC_TARGETS: '10.0.0.1:5432', MODE: 'tcp' };
    expect(loadConfig(tcp).idleTimeoutMs).toBe(TCP_IDLE_TIMEOUT_MS);
    expect(TCP_IDLE_TIMEOUT_MS).toBe(350_000);
    expect(loadConfig({ ...tcp, IDLE_TIMEOUT: '60' }).idleTimeoutMs).toBe(60_000);
    expect(loadConfig({ ...tcp, MODE: 'http' }).idleTimeoutMs).toBe(60_000);
  });

  test('IDLE_TIMEOUT=0 keeps idle tunnels open for good in MODE=tcp, as the Stateless Load Balancer did; HTTP needs one', () => {
    const tcp = { NODE_FILTER: 'static', STATIC_TARGETS: '10.0.0.1:5432', MODE: 'tcp' };
    expect(loadConfig({ ...tcp, IDLE_TIMEOUT: '0' }).idleTimeoutMs).toBe(0);
    expect(errorOf({ ...tcp, MODE: 'http', IDLE_TIMEOUT: '0' }).problems).toEqual(["IDLE_TIMEOUT may be 0 (no idle timeout) only with MODE=tcp (got '0')"]);
  });

  test('HEALTH_CHECK_PROTOCOL: http by default in both modes (the Stateless Load Balancer checked its TCP pools over HTTP), tcp on request', () => {
    const tcp = { NODE_FILTER: 'static', STATIC_TARGETS: '10.0.0.1:5432', MODE: 'tcp' };
    expect(loadConfig(tcp).healthCheckProtocol).toBe('http');
    expect(loadConfig({ ...tcp, HEALTH_CHECK_PROTOCOL: 'TCP' }).healthCheckProtocol).toBe('tcp');
    expect(errorOf({ ...tcp, HEALTH_CHECK_PROTOCOL: 'udp' }).problems).toEqual(["HEALTH_CHECK_PROTOCOL must be one of http, tcp (got 'udp')"]);
  });

  test('PORT and METRICS_PORT conflict where the kernel would refuse the second: same address, or a wildcard covering it', () => {
    const pool = { NODE_FILTER: 'asg', PORT: '8080', METRICS_PORT: '8080' };
    const clashes = [['0.0.0.0', '127.0.0.1'], ['127.0.0.1', '0.0.0.0'], ['::', '127.0.0.1'], ['::', '::1'], ['10.0.0.1', '10.0.0.1'],
      ['::0', '127.0.0.1'], ['0:0:0:0:0:0:0:0', '10.0.0.1'], ['::ffff:127.0.0.1', '127.0.0.1'], ['0.0.0.0', '::ffff:10.0.0.1'], ['::1', '0:0:0:0:0:0:0:1'],
      ['::', 'localhost'], ['localhost', '0.0.0.0'], ['localhost', 'LOCALHOST'], ['127.0.0.1', 'localhost'], ['localhost', '::ffff:127.0.0.1'], ['::1', 'localhost']];
    for (const [host, metricsHost] of clashes) {
      expect(errorOf({ ...pool, HOST: host, METRICS_HOST: metricsHost }).problems).toEqual([
        `METRICS_PORT must differ from PORT where HOST (${host}) and METRICS_HOST (${metricsHost}) overlap`,
      ]);
    }
    for (const [host, metricsHost] of [['10.0.0.1', '127.0.0.1'], ['0.0.0.0', '::1'], ['::1', '127.0.0.1'], ['localhost', '10.0.0.1'], ['proxy.internal', '127.0.0.1']]) {
      expect(loadConfig({ ...pool, HOST: host, METRICS_HOST: metricsHost }).metricsPort).toBe(8080);
    }
  });

  test('REDIS_URL takes a bare [IPv6]:port like host:port', () => {
    expect(loadConfig({ NODE_FILTER: 'asg', REDIS_URL: '[::1]:6379' }).redisUrl).toBe('redis://[::1]:6379');
    expect(errorOf({ NODE_FILTER: 'asg', REDIS_URL: '[nope]:6379' }).problems[0]).toMatch(/^REDIS_URL must be/);
  });

  test('mode-specific requirements', () => {
    expect(errorOf({ NODE_FILTER: 'static' }).problems).toEqual(['STATIC_TARGETS is required when NODE_FILTER=static (ip:port,ip:port)']);
    expect(errorOf({ NODE_FILTER: 'nope' }).problems[0]).toBe("NODE_FILTER must be one of ecs, asg, tag, static (got 'nope')");
    expect(errorOf({ DOMAIN: 'example.com', MODE: 'tcp' }).problems[0]).toMatch(/^MODE=tcp needs a pool/);
    expect(errorOf({ NODE_FILTER: 'static', STATIC_TARGETS: '10.0.0.1' }).problems[0]).toMatch(/^STATIC_TARGETS must be/);
  });

  test('STATIC_TARGETS naming the proxy itself: its PORT or METRICS_PORT at an address its listener is reached at', () => {
    const selves = (env: Record<string, string>) => selfTargets(loadConfig({ NODE_FILTER: 'static', PORT: '46040', METRICS_PORT: '46041', ...env })).map((t) => t.id);
    const own = Object.values(os.networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
    // Listening on every IPv4 address: loopback, the unspecified address, this machine's own.
    const targets = ['127.0.0.1:46040', '127.0.0.2:46041', '[::ffff:127.0.0.1]:46040', '0.0.0.0:46040', 'localhost:46040', ...(own ? [`${own}:46040`] : [])];
    expect(selves({ STATIC_TARGETS: ['10.0.0.5:80', ...targets].join(',') })).toEqual(targets);
    // Another port, the same port elsewhere, or IPv6 loopback when only IPv4 is listened on: targets like any.
    expect(selves({ STATIC_TARGETS: '127.0.0.1:46042,10.0.0.5:46040,[::1]:46040' })).toEqual([]);
    expect(selves({ HOST: '::', STATIC_TARGETS: '[::1]:46040' })).toEqual(['[::1]:46040']);
    // A listener on one address is reached there only: 127.0.0.2:46040 in front of an app on 127.0.0.1:46040.
    expect(selves({ HOST: '127.0.0.2', STATIC_TARGETS: '127.0.0.1:46040' })).toEqual([]);
    expect(selves({ HOST: '127.0.0.2', STATIC_TARGETS: '127.0.0.2:46040' })).toEqual(['127.0.0.2:46040']);
    expect(selves({ HOST: '127.0.0.1', METRICS_HOST: '127.0.0.1', STATIC_TARGETS: `${own ?? '10.9.9.9'}:46041` })).toEqual([]);
    // Not a static pool, or the ports left to the system (0): nothing to judge.
    expect(selves({ PORT: '0', METRICS_PORT: '0', STATIC_TARGETS: '127.0.0.1:46040' })).toEqual([]);
  });

  test('STATIC_TARGETS names every entry that is not host:port, not just the first', () => {
    expect(errorOf({ NODE_FILTER: 'static', STATIC_TARGETS: '10.0.0.1:80,10.0.0.2,10.0.0.3:80,10.0.0.4:99999' }).problems).toEqual([
      "STATIC_TARGETS must be a comma-separated list of host:port (ports 1-65535), and '10.0.0.2', '10.0.0.4:99999' are not (got '10.0.0.1:80,10.0.0.2,10.0.0.3:80,10.0.0.4:99999')",
    ]);
  });

  test('a health check timeout above its period, which the Stateless Load Balancer took, is kept as set', () => {
    const c = loadConfig({ NODE_FILTER: 'asg', HEALTH_CHECK_TIMEOUT: '5', HEALTH_CHECK_PERIOD: '2' });
    expect([c.healthCheckTimeoutMs, c.healthCheckPeriodMs]).toEqual([5000, 2000]);
    // Left unset, the mode's default timeout never exceeds a shorter period.
    expect(loadConfig({ DOMAIN: 'example.com', HEALTH_CHECK_PERIOD: '1' }).healthCheckTimeoutMs).toBe(1000);
  });

  test('a variable one or two letters from a setting is named as a likely typo; others are not', () => {
    expect(mistypedSettings({ HEALTH_CHECK_PAHT: '/x', SHUTDOWN_TIMOUT: '5', LOG_CONNECTION: 'true', HOME: '/root', HOSTNAME: 'a', NODE_ENV: 'production', PORT: '1', JOURNAL_STREAM: '8:1' })).toEqual([
      { name: 'HEALTH_CHECK_PAHT', meant: 'HEALTH_CHECK_PATH' },
      { name: 'SHUTDOWN_TIMOUT', meant: 'SHUTDOWN_TIMEOUT' },
      { name: 'LOG_CONNECTION', meant: 'LOG_CONNECTIONS' },
    ]);
    // Short names only for two letters swapped: PROT is PORT, but HOME, USER, TERM, PWD, LANG are their own.
    expect(mistypedSettings({ PROT: '80', HSOT: '::', MDOE: 'tcp', HOME: '/root', USER: 'a', TERM: 'xterm', PWD: '/', LANG: 'C', SHELL: 'sh', POST: 'x', HOTS: '1' })).toEqual([
      { name: 'PROT', meant: 'PORT' },
      { name: 'HSOT', meant: 'HOST' },
      { name: 'MDOE', meant: 'MODE' },
      { name: 'HOTS', meant: 'HOST' },
    ]);
  });

  test('two ports that do not parse are two problems, not also a clash between them', () => {
    expect(errorOf({ NODE_FILTER: 'static', STATIC_TARGETS: '10.0.0.1:80', PORT: 'abc', METRICS_PORT: 'xyz' }).problems).toEqual([
      "PORT must be an integer from 0 to 65535 (got 'abc')",
      "METRICS_PORT must be an integer from 0 to 65535 (got 'xyz')",
    ]);
  });
});

test('a password in a URL given where an address belongs is not shown in the error', () => {
  const message = errorOf({ NODE_FILTER: 'static', STATIC_TARGETS: 'http://u:TopSecretPw3@127.0.0.1:8080,a:b@10.0.0.1:80' }).message;
  expect(message).toContain('STATIC_TARGETS must be');
  expect(message).toContain("'http://***@127.0.0.1:8080,***@10.0.0.1:80'");
  expect(message).not.toMatch(/TopSecretPw3|a:b@/);
  // Up to the last @ of a value: a password may hold @ or /.
  expect(errorOf({ NODE_FILTER: 'static', STATIC_TARGETS: 'http://admin:p@s/s@10.0.0.1:80' }).message).toContain("'http://***@10.0.0.1:80'");
});

