/**
 * AWS SDK clients of the runtime, configured in one place.
 *
 * Everything a client needs is left to the SDK: the credential chain (env, profile, IMDS role), the
 * region chain when AWS_REGION is unset, retries with backoff (`retryMode`, AWS_MAX_ATTEMPTS), and
 * endpoints. The SDK itself reads `AWS_ENDPOINT_URL_<SERVICE ID>` (`AWS_ENDPOINT_URL_ECS`,
 * `AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL_AUTO_SCALING`, `AWS_ENDPOINT_URL_SECRETS_MANAGER`, then
 * `AWS_ENDPOINT_URL`) at the first call when no `endpoint` is passed (@smithy/core endpoints,
 * getEndpointUrlConfig), so we never pass one: that is what lets the bundle be pointed at any
 * AWS-compatible endpoint, or at a test stub.
 *
 * What we add: timeouts on the HTTP handler (a hung endpoint must not hang discovery forever) and a
 * middleware that counts every HTTP attempt into `awsCalls{api,outcome}`.
 */
import { AutoScalingClient } from '@aws-sdk/client-auto-scaling';
import { EC2Client } from '@aws-sdk/client-ec2';
import { ECSClient } from '@aws-sdk/client-ecs';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { awsCalls } from './metrics';
import { AWS_ATTEMPT_TIMEOUT_MS } from './types';

export interface AwsClients {
  readonly ecs: ECSClient;
  readonly ec2: EC2Client;
  readonly autoScaling: AutoScalingClient;
}

export interface AwsClientOptions {
  /** AWS_REGION from the config; undefined leaves the region to the SDK's chain. */
  readonly region?: string | undefined;
  /** Milliseconds to open a connection. @default 3000 */
  readonly connectionTimeoutMs?: number;
  /** Milliseconds for one attempt, request and response. @default AWS_ATTEMPT_TIMEOUT_MS */
  readonly requestTimeoutMs?: number;
  /** Attempts per call; unset leaves it to the SDK (AWS_MAX_ATTEMPTS, else 3). */
  readonly maxAttempts?: number;
  /** Where AWS_RETRY_MODE is read from. @default process.env */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

type Outcome = 'ok' | 'throttled' | 'not_found' | 'error';

/** Error codes the SDK itself treats as throttling (@smithy/core retry), and the ones of our APIs. */
const THROTTLING_CODES = new Set([
  'ThrottlingException',
  'ThrottledException',
  'Throttling',
  'RequestLimitExceeded',
  'TooManyRequestsException',
  'RequestThrottled',
  'RequestThrottledException',
  'EC2ThrottledException',
  'BandwidthLimitExceeded',
  'PriorRequestNotComplete',
  'ProvisionedThroughputExceededException',
  'SlowDown',
]);

/**
 * ok, throttled, not_found or error, from an SDK error (name or Code, or HTTP 429). not_found is an
 * answer, not a failure: a cluster or service no Host should have named (junk Hosts make many), kept
 * apart so that an alert on errors means AWS failing.
 */
export function outcomeOf(err: unknown): Outcome {
  if (err === undefined || err === null) return 'ok';
  const e = err as { name?: unknown; Code?: unknown; code?: unknown; $metadata?: { httpStatusCode?: number } };
  if (e.$metadata?.httpStatusCode === 429) return 'throttled';
  for (const c of [e.name, e.Code, e.code]) if (typeof c === 'string' && THROTTLING_CODES.has(c)) return 'throttled';
  if (isNotFound(err)) return 'not_found';
  return 'error';
}

/** True for an error that means AWS is throttling us. */
export function isThrottling(err: unknown): boolean {
  return outcomeOf(err) === 'throttled';
}

/** `ListTasksCommand` → `ListTasks`. */
function apiName(commandName: unknown): string {
  return typeof commandName === 'string' && commandName !== '' ? commandName.replace(/Command\d*$/, '') : 'unknown';
}

/**
 * Inputs already counted by the middleware. The middleware sees every attempt of a real client, but
 * a client whose `send` is replaced (aws-sdk-client-mock, a proxy) runs no middleware at all; `send`
 * and `pages` count those calls themselves, and this set tells them which ones were counted already.
 */
const countedInputs = new WeakSet<object>();

const COUNTING_MIDDLEWARE = 'karmaAwsCallsMiddleware';

/**
 * The list every answer of these APIs carries, empty or not (`{"taskArns":[]}`, `<reservationSet/>`).
 * A 200 without it (an empty body, a captive portal's HTML, `{}`) is read by the SDK as an output with
 * nothing in it; taken as "no targets" it would empty a pool, so it fails like any other bad answer
 * and the route keeps its last targets.
 */
const ANSWER_LISTS: Readonly<Record<string, string>> = {
  ListTasks: 'taskArns', DescribeTasks: 'tasks', DescribeContainerInstances: 'containerInstances',
  ListClusters: 'clusterArns', ListServices: 'serviceArns', DescribeInstances: 'Reservations',
  DescribeNetworkInterfaces: 'NetworkInterfaces', DescribeAutoScalingGroups: 'AutoScalingGroups',
};

/**
 * The list every item of those lists carries too, empty or not (`<Instances/>`, `<instancesSet/>`): an
 * Auto Scaling group without its Instances would read as a group with none, an empty pool.
 */
const ITEM_LISTS: Readonly<Record<string, string>> = { DescribeAutoScalingGroups: 'Instances', DescribeInstances: 'Instances' };

export class IncompleteAnswerError extends Error {
  override readonly name = 'IncompleteAnswer';
}

function checkAnswer(api: string, output: unknown): void {
  const list = ANSWER_LISTS[api];
  if (list === undefined) return;
  const items = (output as Record<string, unknown> | undefined)?.[list];
  if (!Array.isArray(items)) throw new IncompleteAnswerError(`${api}: the answer has no ${list} list (an empty or foreign body?)`);
  const inner = ITEM_LISTS[api];
  if (inner !== undefined && !items.every((item) => Array.isArray((item as Record<string, unknown> | null)?.[inner]))) {
    throw new IncompleteAnswerError(`${api}: an item of the answer's ${list} has no ${inner} list`);
  }
}

/**
 * Counts every HTTP attempt (so a throttled attempt that the SDK retried is still seen) by API and
 * outcome. Sits right after the retry middleware, where errors are already deserialised.
 */
export function addCallCounting(client: { middlewareStack: object }): void {
  const stack = client.middlewareStack as unknown as {
    addRelativeTo: (mw: unknown, opts: object) => void;
    identify: () => string[];
  };
  if (stack.identify().some((n) => n.startsWith(COUNTING_MIDDLEWARE))) return;
  stack.addRelativeTo(
    (next: (args: { input: object }) => Promise<unknown>, context: { commandName?: string }) =>
      async (args: { input: object }) => {
        const api = apiName(context.commandName);
        if (args.input && typeof args.input === 'object') countedInputs.add(args.input);
        try {
          const out = await next(args);
          checkAnswer(api, (out as { output?: unknown }).output);
          awsCalls.inc({ api, outcome: 'ok' });
          return out;
        } catch (err) {
          awsCalls.inc({ api, outcome: outcomeOf(err) });
          throw err;
        }
      },
    { name: COUNTING_MIDDLEWARE, relation: 'after', toMiddleware: 'retryMiddleware', override: true },
  );
}

/**
 * Counts one call that did not go through the counting middleware (a mocked client). `input` is the
 * command's input object; call this after the call settled.
 */
export function countIfUncounted(api: string, input: object, err?: unknown): void {
  if (countedInputs.has(input)) {
    countedInputs.delete(input);
    return;
  }
  awsCalls.inc({ api, outcome: outcomeOf(err) });
}

/** Sends one command and makes sure it is counted once per attempt, real client or mock. */
export async function send<I extends object, O>(
  client: { send: (command: never, options?: { abortSignal?: AbortSignal }) => Promise<unknown> },
  command: { input: I },
  signal?: AbortSignal,
): Promise<O> {
  const api = apiName(command.constructor.name);
  try {
    const out = (await client.send(command as never, signal ? { abortSignal: signal } : undefined)) as O;
    countIfUncounted(api, command.input);
    return out;
  } catch (err) {
    countIfUncounted(api, command.input, err);
    throw err;
  }
}

/** Pages one paginated discovery call may take: 100 ListTasks pages are 10,000 tasks of one service. */
export const MAX_PAGES = 100;

/**
 * Iterates an SDK paginator, counting each page's call like `send` does. The paginator reuses one
 * input object for every page, which is why the mark is cleared after each page.
 */
export async function* pages<P>(api: string, input: object, paginator: AsyncIterable<P>): AsyncGenerator<P> {
  const it = paginator[Symbol.asyncIterator]();
  const tokens = new Set<string>();
  for (let n = 1; ; n++) {
    // An answer whose next token never ends (a broken or hostile endpoint) must not page for ever.
    if (n > MAX_PAGES) throw new Error(`${api}: more than ${MAX_PAGES} pages`);
    let step: IteratorResult<P>;
    try {
      step = await it.next();
    } catch (err) {
      countIfUncounted(api, input, err);
      throw err;
    }
    if (step.done) return;
    countIfUncounted(api, input);
    // A token given twice (AWS never does): the listing would go round, or, as the SDK's paginator takes
    // a token answered back as the last page (stopOnSameToken), end short. Either way the answer is not
    // whole, and the last one found is kept rather than this part of it.
    const token = nextToken(step.value);
    if (token !== undefined) {
      if (tokens.has(token)) throw new Error(`${api}: the same page token twice (a listing that is not whole)`);
      tokens.add(token);
    }
    yield step.value;
  }
}

/** A page's token for the next (ECS spells it nextToken, EC2 and Auto Scaling NextToken). */
function nextToken(page: unknown): string | undefined {
  const p = page as { nextToken?: unknown; NextToken?: unknown } | undefined;
  const t = p?.nextToken ?? p?.NextToken;
  return typeof t === 'string' && t !== '' ? t : undefined;
}

function baseConfig(opts: AwsClientOptions) {
  const env = opts.env ?? process.env;
  return {
    // AWS_DEFAULT_REGION as the AWS CLI and the Go SDK the seeds were built with read it; the JS SDK does not.
    ...(opts.region || env.AWS_DEFAULT_REGION ? { region: opts.region || env.AWS_DEFAULT_REGION } : {}),
    // Adaptive adds client-side rate limiting on top of standard retries: what a fleet sharing one
    // account-wide ECS token bucket wants. AWS_RETRY_MODE still wins, read by the SDK itself.
    ...(env.AWS_RETRY_MODE ? {} : { retryMode: 'adaptive' }),
    ...(opts.maxAttempts !== undefined ? { maxAttempts: opts.maxAttempts } : {}),
    requestHandler: {
      connectionTimeout: opts.connectionTimeoutMs ?? 3000,
      requestTimeout: opts.requestTimeoutMs ?? AWS_ATTEMPT_TIMEOUT_MS,
      throwOnRequestTimeout: true,
      // requestTimeout ends with the response's headers: a body that stalls after them is bounded by
      // the socket's silence instead.
      socketTimeout: opts.requestTimeoutMs ?? AWS_ATTEMPT_TIMEOUT_MS,
    },
  };
}

export function createEcsClient(opts: AwsClientOptions = {}): ECSClient {
  const c = new ECSClient(baseConfig(opts));
  addCallCounting(c);
  return c;
}

export function createEc2Client(opts: AwsClientOptions = {}): EC2Client {
  const c = new EC2Client(baseConfig(opts));
  addCallCounting(c);
  return c;
}

export function createAutoScalingClient(opts: AwsClientOptions = {}): AutoScalingClient {
  const c = new AutoScalingClient(baseConfig(opts));
  addCallCounting(c);
  return c;
}

export function createSecretsManagerClient(opts: AwsClientOptions = {}): SecretsManagerClient {
  const c = new SecretsManagerClient(baseConfig(opts));
  addCallCounting(c);
  return c;
}

/** The three discovery clients. Cheap: nothing connects until the first call. */
export function createAwsClients(opts: AwsClientOptions = {}): AwsClients {
  return { ecs: createEcsClient(opts), ec2: createEc2Client(opts), autoScaling: createAutoScalingClient(opts) };
}

/** The SecretString of a secret (the Redis AUTH token). Throws when the secret has no string value. */
export async function fetchSecretString(
  arn: string,
  client: SecretsManagerClient = createSecretsManagerClient(),
  signal?: AbortSignal,
): Promise<string> {
  const out = await send<object, { SecretString?: string }>(client, new GetSecretValueCommand({ SecretId: arn }), signal);
  if (typeof out.SecretString !== 'string' || out.SecretString === '') {
    throw new Error(`secret ${arn} has no SecretString`);
  }
  return out.SecretString;
}

/** Error names that mean "this service or cluster is not there": an empty route, not a failure. */
export function isNotFound(err: unknown): boolean {
  const name = (err as { name?: unknown } | null)?.name;
  return name === 'ClusterNotFoundException' || name === 'ServiceNotFoundException';
}

/** Splits a list into batches of at most `size` (DescribeTasks takes 100 tasks at most). */
export function chunk<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Calls of one kind a discovery has in flight at once. */
export const BATCH_CONCURRENCY = 4;

/**
 * `call` for every batch of at most `size` items, at most `concurrency` at a time, results in batch
 * order. A service of 10,000 tasks is 100 DescribeTasks calls: all at once they would empty the
 * account's request bucket (which every ECS and EC2 caller in the account shares) in one burst, and
 * the adaptive retry mode would then slow every later call. The first failure stops new calls.
 */
export async function inBatches<T, R>(
  items: readonly T[],
  size: number,
  call: (batch: T[]) => Promise<R>,
  concurrency = BATCH_CONCURRENCY,
): Promise<R[]> {
  const batches = chunk(items, size);
  const out = new Array<R>(batches.length);
  let next = 0;
  let failed = false;
  const lane = async (): Promise<void> => {
    while (!failed && next < batches.length) {
      const i = next++;
      try {
        out[i] = await call(batches[i]!);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, batches.length) }, lane));
  return out;
}
