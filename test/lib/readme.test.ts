/** The README's deploy section stays true to the code: every settings key, and the cost totals. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CONTEXT_KEYS, estimateMonthlyCost } from '../../lib';
import { envVarName } from '../../lib/context';

const readme = fs.readFileSync(path.join(__dirname, '..', '..', 'README.md'), 'utf8');

test.each(Object.keys(CONTEXT_KEYS))('the settings table has %s and its env var', (key) => {
  expect(readme).toContain(`| \`${key}\` | \`${envVarName(key)}\` |`);
});

test('the cost table adds up like the estimate', () => {
  const base = { instanceType: 't4g.nano', instances: 1, elasticIps: 1, volumeGb: 8, hostedZone: true };
  const totals = [
    estimateMonthlyCost({ ...base, spot: false, cacheNodeType: 'cache.t4g.micro' }),
    estimateMonthlyCost({ ...base, spot: false }),
    estimateMonthlyCost({ ...base, spot: true }),
  ].map((e) => `**$${e.totalMonthlyUsd.toFixed(2)}**`);
  expect(readme).toContain(`| **Total** | | ${totals.join(' | ')} |`);
  expect(readme).toContain('2026-11');
});

test('it shows the deploy command of the issue', () => {
  expect(readme).toMatch(/npx cdk deploy -c domain=\S+ -c hostedZoneId=\S+/);
});
