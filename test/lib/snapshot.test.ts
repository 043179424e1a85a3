/**
 * One snapshot per configuration, asset hashes stripped: a diff here is a change to what gets deployed,
 * to be read and accepted (`npx jest test/lib -u`) on purpose.
 */
import { Template } from 'aws-cdk-lib/assertions';
import { makeStack, stripAssetHashes } from './helpers';

const snapshot = (props: Parameters<typeof makeStack>[0]): unknown =>
  stripAssetHashes(Template.fromStack(makeStack(props).stack).toJSON());

test('default', () => {
  expect(snapshot({})).toMatchSnapshot();
});

test('existing VPC, redis: false', () => {
  expect(snapshot({
    vpcId: 'vpc-0123456789abcdef0',
    availabilityZones: ['us-east-1a', 'us-east-1b'],
    publicSubnetIds: ['subnet-0aaaaaaaaaaaaaaa1', 'subnet-0aaaaaaaaaaaaaaa2'],
    redis: false,
  })).toMatchSnapshot();
});

test('spot', () => {
  expect(snapshot({ spot: true })).toMatchSnapshot();
});
