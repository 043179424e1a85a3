/** The price table and the estimate: dated, small, and adding up. */
import { ALB_FLOOR_MONTHLY_USD, PRICE_DATE, PRICES, estimateMonthlyCost, formatCostSummary, formatCostTable } from '../../lib';

const base = { instanceType: 't4g.nano', instances: 1, spot: false, elasticIps: 1, volumeGb: 8, hostedZone: true };

test('the table is dated and holds the prices we compare with', () => {
  expect(PRICE_DATE).toBe('2026-11');
  expect(PRICES).toMatchObject({
    albBase: 16.43, albLcu: 5.84, publicIpv4: 3.65, gp3PerGb: 0.08, route53Zone: 0.5, secret: 0.4, natGateway: 32.85,
  });
  expect(PRICES.instances['t4g.nano']).toBe(3.07);
  expect(PRICES.cacheNodes['cache.t4g.micro']).toBe(11.68);
  expect(ALB_FLOOR_MONTHLY_USD).toBe(22.27);
});

test('default: instance, address, volume, cache with its AUTH token secret, and zone', () => {
  const e = estimateMonthlyCost({ ...base, cacheNodeType: 'cache.t4g.micro' });
  expect(e.lines.map((l) => [l.item.split(' ')[0], l.monthlyUsd])).toEqual([
    ['EC2', 3.07], ['Elastic', 3.65], ['EBS', 0.64], ['ElastiCache', 11.68], ['Secrets', 0.4], ['Route53', 0.5], ['NAT', 0],
  ]);
  expect(e.totalMonthlyUsd).toBe(19.94);
  expect(e.complete).toBe(true);
  expect(e.albFloorMonthlyUsd).toBe(22.27);
});

test('without the cache, a few dollars a month', () => {
  expect(estimateMonthlyCost(base).totalMonthlyUsd).toBe(7.86);
});

test('spot is about a third of on-demand', () => {
  const e = estimateMonthlyCost({ ...base, spot: true, hostedZone: false });
  expect(e.lines[0]).toMatchObject({ unitMonthlyUsd: 1.02, monthlyUsd: 1.02 });
  expect(e.totalMonthlyUsd).toBe(5.31);
});

test('a type outside the table is said, not guessed', () => {
  const e = estimateMonthlyCost({ ...base, instanceType: 'c7g.large' });
  expect(e.complete).toBe(false);
  expect(e.lines[0]).toMatchObject({ unitMonthlyUsd: undefined, monthlyUsd: 0 });
  expect(formatCostSummary(e)).toContain('plus items without a price in the table');
  expect(formatCostTable(e)).toContain('unknown');
});

test('the printed table', () => {
  const table = formatCostTable(estimateMonthlyCost({ ...base, cacheNodeType: 'cache.t4g.micro' }));
  expect(table).toContain('us-east-1 list prices of 2026-11');
  expect(table).toMatch(/Total \(Karma Proxy\)\s+\$19\.94/);
  expect(table).toMatch(/ALB floor .*\$22\.27/);
});
