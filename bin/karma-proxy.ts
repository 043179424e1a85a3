#!/usr/bin/env node
/**
 * The CDK app: context keys and KARMA_* env vars to a KarmaProxyStack. With nothing given it still
 * synthesizes (example values, said in a warning), offline. Prints the monthly cost estimate.
 * Messages go to stderr so that `cdk synth > template.yaml` stays a template.
 */
import { App } from 'aws-cdk-lib';
import { propsFromContext, straySettings } from '../lib/context';
import { formatCostTable } from '../lib/cost';
import { KarmaProxyStack } from '../lib/karma-proxy-stack';

function main(): void {
  const app = new App();
  // Said first: a mistyped key may be why the settings below are refused (-c hostedZoneID=...).
  for (const w of straySettings(Object.keys(app.node.getAllContext()), process.env)) process.stderr.write(`karma-proxy: warning: ${w}\n`);
  let settings;
  try {
    settings = propsFromContext((key) => app.node.tryGetContext(key), process.env);
  } catch (e) {
    process.stderr.write(`karma-proxy: ${(e as Error).message}\n`);
    process.exit(1);
  }
  for (const w of settings.warnings) process.stderr.write(`karma-proxy: warning: ${w}\n`);

  let stack: KarmaProxyStack;
  try {
    stack = new KarmaProxyStack(app, settings.stackName, settings.props);
  } catch (e) {
    process.stderr.write(`karma-proxy: ${(e as Error).message}\n`);
    process.exit(1);
  }
  process.stderr.write(`${formatCostTable(stack.proxy.costEstimate)}\n`);
  app.synth();
}

main();
