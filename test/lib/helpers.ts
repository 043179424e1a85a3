/** Shared by the CDK tests: build a stack, read its template, render its user data with placeholders. */
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { KarmaProxyStack, KarmaProxyStackProps } from '../../lib';

export const ZONE = { hostedZoneId: 'Z0TESTZONE', hostedZoneName: 'example.com' } as const;
export const DOMAIN = 'apps.example.com';

export function makeStack(props: KarmaProxyStackProps = {}, id = 'KarmaProxy'): { app: App; stack: KarmaProxyStack } {
  const app = new App();
  const stack = new KarmaProxyStack(app, id, { domain: DOMAIN, ...ZONE, ...props });
  return { app, stack };
}

export function templateOf(props: KarmaProxyStackProps = {}): { stack: KarmaProxyStack; template: Template } {
  const { stack } = makeStack(props);
  return { stack, template: Template.fromStack(stack) };
}

/** Asset hashes change with every bundle build: replace them so snapshots only change with the design. */
export function stripAssetHashes(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value).replace(/[0-9a-f]{64}/g, 'ASSET_HASH'));
}

type Json = Record<string, unknown>;

/** The one resource of a type (the test fails when there is not exactly one). */
export function only(template: Template, type: string): Json {
  const found = Object.values(template.findResources(type)) as Json[];
  if (found.length !== 1) throw new Error(`expected one ${type}, found ${found.length}`);
  return found[0];
}

/** The launch template's user data as the instance would see it, with CloudFormation values replaced by
 * a placeholder that is safe in shell words (`TOKEN`). */
export function userDataText(template: Template, placeholder = 'TOKEN'): string {
  const lt = only(template, 'AWS::EC2::LaunchTemplate') as {
    Properties: { LaunchTemplateData: { UserData: { 'Fn::Base64': unknown } } };
  };
  const render = (node: unknown): string => {
    if (typeof node === 'string') return node;
    const o = node as Json;
    if (o && Array.isArray(o['Fn::Join'])) {
      const [sep, parts] = o['Fn::Join'] as [string, unknown[]];
      return parts.map(render).join(sep);
    }
    return placeholder;
  };
  return render(lt.Properties.LaunchTemplateData.UserData['Fn::Base64']);
}

/** The text between `<<'DELIM'` and `DELIM` in a script. */
export function heredocBody(script: string, delimiter: string): string {
  const m = new RegExp(`<<'${delimiter}'\\n([\\s\\S]*?)^${delimiter}$`, 'm').exec(script);
  if (!m) throw new Error(`no here-document ${delimiter}`);
  return m[1];
}

/** KEY=value lines of an env file. */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(line);
    if (m) out[m[1]] = m[2];
  }
  return out;
}
