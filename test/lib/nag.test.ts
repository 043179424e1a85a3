/**
 * cdk-nag's AwsSolutions pack finds nothing left unacknowledged, and every acknowledgment says why.
 * (cdk-nag 3 is a policy validation plugin: acknowledgments are CDK's own `Validations.acknowledge`.)
 */
import { App, Stack, Validations } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import { AwsSolutionsChecks } from 'cdk-nag';
import { IConstruct } from 'constructs';
import { KarmaProxy } from '../../lib';
import { makeStack } from './helpers';

const configs = {
  default: {},
  'existing VPC, redis: false': {
    vpcId: 'vpc-0123456789abcdef0',
    publicSubnetIds: ['subnet-0aaaaaaaaaaaaaaa1', 'subnet-0aaaaaaaaaaaaaaa2'],
    redis: false,
  },
  'spot, two instances, clusters': { spot: true, clusters: ['prod'], minCapacity: 2, maxCapacity: 2 },
  'an account and region of its own': { env: { account: '123456789012', region: 'eu-west-1' }, clusters: ['prod'] },
};

describe.each(Object.entries(configs))('%s', (_name, props) => {
  const { app, stack } = makeStack(props);
  app.synth();

  test('no AwsSolutions violation', () => {
    const report = new AwsSolutionsChecks().validateScope(stack);
    const found = report.violations.map((v) =>
      `${v.ruleName} at ${v.violatingResources.map((r) => r.constructPath).join(', ')}`);
    expect(found).toEqual([]);
    expect(report.success).toBe(true);
  });
});

test('an existing VPC given by ids synthesizes without warnings, so `cdk synth --strict` passes', () => {
  const { app, stack } = makeStack(configs['existing VPC, redis: false']);
  app.synth();
  expect(Annotations.fromStack(stack).findWarning('*', Match.anyValue()).map((w) => String(w.entry.data))).toEqual([]);
});

test('the checks do find what is not acknowledged: a security group the user brings', () => {
  const stack = new Stack(new App(), 'Test');
  const vpc = new ec2.Vpc(stack, 'Vpc', { natGateways: 0, restrictDefaultSecurityGroup: false });
  const securityGroup = new ec2.SecurityGroup(stack, 'Mine', { vpc });
  new KarmaProxy(stack, 'Proxy', { vpc, securityGroup, domain: 'apps.example.com', redis: false });
  const rules = new AwsSolutionsChecks().validateScope(stack).violations.map((v) => v.ruleName);
  expect(rules).toContain('AwsSolutions-EC23');
});

test("a role the user brings keeps its own findings: the proxy's statements come in a policy of their own, acknowledged there", () => {
  const stack = new Stack(new App(), 'Test');
  const role = new iam.Role(stack, 'Mine', { assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com') });
  role.addToPolicy(new iam.PolicyStatement({ actions: ['s3:GetObject'], resources: ['*'] }));
  new KarmaProxy(stack, 'Proxy', { role, domain: 'apps.example.com', redis: false });
  const violations = new AwsSolutionsChecks().validateScope(stack).violations;
  const paths = violations.filter((v) => v.ruleName.startsWith('AwsSolutions-IAM5')).flatMap((v) => v.violatingResources.map((r) => r.constructPath));
  expect(paths).toEqual(['Test/Mine/DefaultPolicy/Resource']);
  expect(Template.fromStack(stack).findResources('AWS::IAM::Policy', { Properties: { PolicyName: Match.stringLikeRegexp('ProxyRolePolicy') } })).not.toEqual({});
});

test("what a user adds to the construct's own role later is checked: the acknowledgments stay on the proxy's own policy", () => {
  const stack = new Stack(new App(), 'Test');
  const proxy = new KarmaProxy(stack, 'Proxy', { domain: 'apps.example.com', redis: false });
  proxy.role.addToPrincipalPolicy(new iam.PolicyStatement({ actions: ['s3:GetObject'], resources: ['*'] }));
  const violations = new AwsSolutionsChecks().validateScope(stack).violations;
  const found = violations.filter((v) => v.ruleName.startsWith('AwsSolutions-IAM5')).flatMap((v) => v.violatingResources.map((r) => `${v.ruleName} at ${r.constructPath}`));
  expect(found).toEqual(['AwsSolutions-IAM5[Resource::*] at Test/Proxy/Role/DefaultPolicy/Resource']);
});

test('the pack registered on the app the documented way lets synth through', () => {
  const { app } = makeStack({});
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  expect(() => app.synth()).not.toThrow();
});

test('every acknowledgment carries a reason', () => {
  const { stack } = makeStack({ clusters: ['prod'] });
  const acks: { path: string; id: string; reason: unknown }[] = [];
  const walk = (c: IConstruct): void => {
    for (const m of c.node.metadata) {
      if (m.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY) {
        for (const [id, reason] of Object.entries(m.data as Record<string, unknown>)) {
          if (id.includes('AwsSolutions-')) acks.push({ path: c.node.path, id, reason });
        }
      }
    }
    c.node.children.forEach(walk);
  };
  walk(stack);
  expect(acks.length).toBeGreaterThan(5);
  for (const a of acks) {
    expect(typeof a.reason).toBe('string');
    expect((a.reason as string).length).toBeGreaterThan(30);
  }
  // Acknowledged where they apply, never for the whole stack.
  expect(acks.filter((a) => a.path === stack.node.path)).toEqual([]);
});
