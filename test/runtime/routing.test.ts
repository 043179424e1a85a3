import { parseHost, RoutingRules } from '../../runtime/routing';

const rules: RoutingRules = { domain: 'example.com', allowedClusters: [], allowedPorts: [] };

describe('parseHost: <service>-<port>-<cluster>.<domain>', () => {
  test.each([
    ['backend-8080-production.example.com', 'backend', 8080, 'production'],
    ['my-api-8080-prod.example.com', 'my-api', 8080, 'prod'],
    ['api-v2-8080-prod-eu.example.com', 'api-v2', 8080, 'prod-eu'],
    ['a-b-c-1-d-e-f.example.com', 'a-b-c', 1, 'd-e-f'],
    ['svc-65535-c.example.com', 'svc', 65535, 'c'],
    ['BACKEND-8080-Production.EXAMPLE.com', 'backend', 8080, 'production'],
    ['backend-8080-production.example.com:6969', 'backend', 8080, 'production'],
    ['backend-8080-production.example.com:', 'backend', 8080, 'production'], // an empty port (RFC 3986), as in pool mode
    ['backend-8080-production.example.com.', 'backend', 8080, 'production'],
    ['backend-8080-production.example.com.:80', 'backend', 8080, 'production'],
    ['123-8080-prod.example.com', '123', 8080, 'prod'],
    ['svc-80-443.example.com', 'svc', 80, '443'],
    ['my_svc-80-my_cluster.example.com', 'my_svc', 80, 'my_cluster'],
    ['my-api-030080-prod.example.com', 'my-api', 30080, 'prod'],
    ['svc-0000000000080-c.example.com', 'svc', 80, 'c'],
  ])('%s routes to service %s, port %d, cluster %s', (host, service, port, cluster) => {
    expect(parseHost(host, rules)).toEqual({ ok: true, key: { service, port, cluster } });
  });

  test.each([
    [undefined, 'no_host'],
    ['', 'no_host'],
    ['backend-8080-production.other.com', 'wrong_domain'],
    ['backend-8080-production.example.com.evil.net', 'wrong_domain'],
    ['backend-8080-productionexample.com', 'wrong_domain'],
    ['example.com', 'wrong_domain'],
    ['.example.com', 'wrong_domain'],
    ['backend-production.example.com', 'no_port'],
    ['backend-8080.example.com', 'no_port'],
    ['8080-production.example.com', 'no_port'],
    ['backend-api-production.example.com', 'no_port'],
    ['backend-0-production.example.com', 'bad_port'],
    ['backend-0000-production.example.com', 'bad_port'],
    ['backend-0065536-production.example.com', 'bad_port'],
    ['backend-65536-production.example.com', 'bad_port'],
    ['backend-99999999999999999999-production.example.com', 'bad_port'],
    ['a.backend-8080-production.example.com', 'bad_host'],
    ['backend--8080-production.example.com', 'bad_host'],
    ['backend-8080-production-.example.com', 'bad_host'],
    ['back end-8080-prod.example.com', 'bad_host'],
    ['backend-8080-prod.example.com:http', 'bad_host'],
    ['backend-8080-prod.example.com:65536', 'bad_host'],
    ['backend-8080-prod.example.com::80', 'bad_host'],
    ['[::1]:80', 'bad_host'],
    ['127.0.0.1', 'wrong_domain'],
    ['localhost', 'wrong_domain'],
    ['169.254.169.254', 'wrong_domain'],
  ])('%s is a 400 (%s)', (host, reason) => {
    const r = parseHost(host, rules);
    expect(r).toMatchObject({ ok: false, status: 400, reason });
    expect(r.ok ? '' : r.message).not.toBe('');
  });

  test('a cluster outside ALLOWED_CLUSTERS is a 403', () => {
    const r = parseHost('svc-80-staging.example.com', { ...rules, allowedClusters: ['prod', 'prod-eu'] });
    expect(r).toMatchObject({ ok: false, status: 403, reason: 'cluster_not_allowed' });
    expect(parseHost('svc-80-prod-eu.example.com', { ...rules, allowedClusters: ['prod', 'prod-eu'] })).toMatchObject({ ok: true });
  });

  test('a port outside ALLOWED_PORTS is a 403; ranges are inclusive', () => {
    const allowed = { ...rules, allowedPorts: [{ from: 80, to: 80 }, { from: 8000, to: 8100 }] };
    expect(parseHost('svc-22-prod.example.com', allowed)).toMatchObject({ ok: false, status: 403, reason: 'port_not_allowed' });
    expect(parseHost('svc-8101-prod.example.com', allowed)).toMatchObject({ ok: false, status: 403 });
    expect(parseHost('svc-8100-prod.example.com', allowed)).toMatchObject({ ok: true });
    expect(parseHost('svc-80-prod.example.com', allowed)).toMatchObject({ ok: true });
  });
});
