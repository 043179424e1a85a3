#!/usr/bin/env node
/**
 * The CDK app: context keys and KARMA_* env vars to a KarmaProxyStack. With nothing given it still
 * synthesizes (example values, said in a warning), offline. Prints the monthly cost estimate.
 * Messages go to stderr so that `cdk synth > template.yaml` stays a template.
 */
import { App } from 'aws-cdk-lib';
import { contextSettings, straySettings } from '../lib/context';
import { formatCostTable } from '../lib/cost';
import { InvalidPropsError } from '../lib/karma-proxy';
import { KarmaProxyStack } from '../lib/karma-proxy-stack';

function main(): void {
  const app = new App();
  // Said first: a mistyped key may be why the settings below are refused (-c hostedZoneID=...).
  for (const w of straySettings(Object.keys(app.node.getAllContext()), process.env)) process.stderr.write(`karma-proxy: warning: ${w}\n`);
  const { result: settings, problems, settled } = contextSettings((key) => app.node.tryGetContext(key), process.env);
  for (const w of settings.warnings) process.stderr.write(`karma-proxy: warning: ${w}\n`);

  let stack: KarmaProxyStack | undefined;
  // Built even when some settings are bad (those left out), to learn what it refuses of the rest; not
  // when discovery, the domain or its zone is refused, which its every check hangs on.
  if (settled) {
    try {
      stack = new KarmaProxyStack(app, settings.stackName, settings.props);
    } catch (e) {
      problems.push(...(e instanceof InvalidPropsError ? e.problems : [(e as Error).message]));
    }
  }
  if (problems.length > 0 || !stack) {
    process.stderr.write(`karma-proxy: Invalid Karma Proxy settings:\n  - ${problems.join('\n  - ')}\n`);
    process.exit(1);
  }
  process.stderr.write(`${formatCostTable(stack.proxy.costEstimate)}\n`);
  app.synth();
}

main();
