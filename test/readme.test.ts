import * as fs from 'node:fs';
import * as path from 'node:path';
import { ENV_NAMES } from '../runtime/config';

const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');

test('the README documents every runtime setting', () => {
  const missing = ENV_NAMES.filter((name) => !readme.includes(`| \`${name}\` |`));
  expect(missing).toEqual([]);
});

test('the README gives the test command that CI runs', () => {
  expect(readme).toContain('npm ci && npm test');
});
