/**
 * A tiny AWS on 127.0.0.1: enough of ECS, EC2, Auto Scaling and Secrets Manager, spoken in their real
 * wire protocols, for the real SDK clients (and the bundle) to discover through it.
 *
 *   ECS, Secrets Manager: awsJson1_1 — POST /, `X-Amz-Target: AmazonEC2ContainerServiceV20141113.ListTasks`
 *     (`secretsmanager.GetSecretValue`), JSON body; errors are 400 with `{"__type": …}`.
 *   EC2: the ec2Query protocol — form-encoded `Action=DescribeInstances&InstanceId.1=…&Filter.1.Name=…`,
 *     XML with `<item>` lists; errors `<Response><Errors><Error><Code>`.
 *   Auto Scaling: the awsQuery protocol — form-encoded `AutoScalingGroupNames.member.1=…`, XML wrapped in
 *     `<…Result>` with `<member>` lists; errors `<ErrorResponse><Error><Code>`.
 *
 * Point clients at it with `stub.env()` (AWS_ENDPOINT_URL_ECS / _EC2 / _AUTO_SCALING / _SECRETS_MANAGER,
 * dummy credentials, us-east-1): the SDK reads those itself. The model is plain data and can be changed
 * between calls; faults (throttling, 500, hang, reset, malformed body, delay) are queued per API; every
 * call is recorded.
 *
 * Real-API behaviours kept on purpose, because the code under test must cope with them: ListTasks
 * pages of at most 100 (and returns PENDING tasks for desiredStatus=RUNNING), DescribeTasks and
 * DescribeContainerInstances refuse more than 100 items, DescribeInstances / DescribeNetworkInterfaces
 * fail the whole call on one unknown id and refuse ids together with MaxResults, an unknown filter is an
 * error, a missing Auto Scaling group is an empty list (not an error).
 */
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface StubBinding {
  readonly containerPort: number;
  readonly hostPort: number;
  readonly protocol?: 'tcp' | 'udp';
}

export interface StubTask {
  /** Generated from cluster and position when absent. */
  arn?: string;
  lastStatus?: string; // default RUNNING
  desiredStatus?: string; // default RUNNING
  healthStatus?: 'HEALTHY' | 'UNHEALTHY' | 'UNKNOWN'; // default UNKNOWN
  launchType?: 'FARGATE' | 'EC2'; // default FARGATE when ip is set, else EC2
  /** awsvpc: the ENI's private IPv4. */
  ip?: string;
  /** awsvpc: the ENI id (generated when absent); its public IP is `publicIp`. */
  eniId?: string;
  publicIp?: string;
  /** bridge/host: the container instance and the container's port bindings. */
  containerInstanceArn?: string;
  bindings?: StubBinding[];
}

export interface StubInstance {
  id: string;
  privateIp?: string;
  publicIp?: string;
  state?: 'pending' | 'running' | 'shutting-down' | 'terminated' | 'stopping' | 'stopped'; // default running
  tags?: Record<string, string>;
}

export interface StubAsgInstance {
  id: string;
  lifecycleState?: string; // default InService
  healthStatus?: string; // default Healthy
}

export interface StubModel {
  /** cluster name → service name → tasks. A cluster or service not here does not exist. */
  clusters: Record<string, Record<string, StubTask[]>>;
  /** container instance ARN → its EC2 instance id (bridge/host tasks). */
  containerInstances: Record<string, string>;
  instances: StubInstance[];
  /** Auto Scaling group name → instances. */
  asgs: Record<string, StubAsgInstance[]>;
  /** Secrets Manager: secret id (ARN or name) → SecretString. */
  secrets: Record<string, string>;
}

/** `noItemList`: the answer as usual, but its items without their own list (an Auto Scaling group without `Instances`, a reservation without `instancesSet`). */
export type Fault = 'throttle' | 'error500' | 'hang' | 'reset' | 'malformed' | 'empty200' | 'html200' | 'emptyObject200' | 'delay' | 'noItemList';

export interface FaultOptions {
  /** How many calls get the fault. @default 1 (Infinity: until clearFaults) */
  times?: number;
  /** For 'delay': milliseconds before the normal answer (default 1000); for the others, before the fault (default none). */
  delayMs?: number;
}

export interface StubCall {
  /** `ListTasks`, `DescribeInstances`, … */
  readonly api: string;
  readonly params: Record<string, unknown>;
  /** The region the call was signed for (its SigV4 credential scope). */
  readonly region?: string;
  /** The access key it was signed with. */
  readonly accessKeyId?: string;
}

export interface AwsStub {
  /** http://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  /** The live model: change it between calls. */
  readonly model: StubModel;
  /** Every call received, faults included, in order. */
  readonly calls: StubCall[];
  /** Calls of one API (or all). */
  count(api?: string): number;
  /** Answers the next `times` calls of `api` ('*' = any) with a fault. */
  fail(api: string, fault: Fault, opts?: FaultOptions): void;
  clearFaults(): void;
  resetCalls(): void;
  /** Environment that points the SDK (in this process or a child) at the stub, with dummy credentials. */
  env(): Record<string, string>;
  /** Sets env() in process.env; returns a function that restores the previous values. */
  applyEnv(): () => void;
  /** Closes the server and every connection, hung ones included. */
  close(): Promise<void>;
}

const ACCOUNT = '123456789012';
const REGION = 'us-east-1';
const ECS_PREFIX = 'AmazonEC2ContainerServiceV20141113.';
const SM_PREFIX = 'secretsmanager.';
const STATE_CODES: Record<string, number> = { pending: 0, running: 16, 'shutting-down': 32, terminated: 48, stopping: 64, stopped: 80 };

class ApiError extends Error {
  constructor(readonly code: string, message: string, readonly status = 400) {
    super(message);
  }
}

const xmlEscape = (s: unknown): string =>
  String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const tag = (name: string, value: unknown): string => (value === undefined || value === null ? '' : `<${name}>${xmlEscape(value)}</${name}>`);

/** `prefix.1`, `prefix.2`, … of a query-protocol request, in order. */
function queryList(p: URLSearchParams, prefix: string): string[] {
  const out: [number, string][] = [];
  for (const [k, v] of p) {
    const m = new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.(\\d+)$`).exec(k);
    if (m) out.push([Number(m[1]), v]);
  }
  return out.sort((a, b) => a[0] - b[0]).map(([, v]) => v);
}

/** EC2 `Filter.N.Name` / `Filter.N.Value.M`. */
function ec2Filters(p: URLSearchParams): { name: string; values: string[] }[] {
  const out: { name: string; values: string[] }[] = [];
  for (let n = 1; p.has(`Filter.${n}.Name`); n++) out.push({ name: p.get(`Filter.${n}.Name`) as string, values: queryList(p, `Filter.${n}.Value`) });
  return out;
}

const hash = (s: string): string => createHash('sha256').update(s).digest('hex');
const token = (offset: number): string => Buffer.from(`offset:${offset}`).toString('base64');
function fromToken(t: unknown): number {
  if (t === undefined || t === null || t === '') return 0;
  const m = /^offset:(\d+)$/.exec(Buffer.from(String(t), 'base64').toString());
  if (!m) throw new ApiError('InvalidParameterException', 'Invalid nextToken');
  return Number(m[1]);
}

export interface AwsStubOptions {
  /** Largest page any paged API returns, to force paging in tests. @default the API's own maximum */
  pageSize?: number;
}

export async function startAwsStub(model: Partial<StubModel> = {}, opts: AwsStubOptions = {}): Promise<AwsStub> {
  const m: StubModel = { clusters: {}, containerInstances: {}, instances: [], asgs: {}, secrets: {}, ...model };
  const calls: StubCall[] = [];
  const faults: { api: string; fault: Fault; left: number; delayMs: number | undefined }[] = [];
  const sockets = new Set<import('node:net').Socket>();
  let closing = false;

  const taskArn = (cluster: string, service: string, i: number, t: StubTask) =>
    t.arn ?? `arn:aws:ecs:${REGION}:${ACCOUNT}:task/${cluster}/${hash(`${cluster}/${service}/${i}`).slice(0, 32)}`;
  const eniOf = (arn: string, t: StubTask) => t.eniId ?? `eni-${hash(arn).slice(0, 17)}`;
  const clusterName = (c: unknown): string => {
    const s = String(c ?? 'default');
    return s.startsWith('arn:') ? s.slice(s.lastIndexOf('/') + 1) : s;
  };
  const cluster = (c: unknown): [string, Record<string, StubTask[]>] => {
    const name = clusterName(c);
    const services = m.clusters[name];
    if (!services) throw new ApiError('ClusterNotFoundException', 'Cluster not found.');
    return [name, services];
  };
  const allTasks = (name: string, services: Record<string, StubTask[]>) =>
    Object.entries(services).flatMap(([svc, tasks]) => tasks.map((t, i) => ({ arn: taskArn(name, svc, i, t), service: svc, task: t })));
  const page = (max: number, requested: unknown): number => Math.min(max, Number(requested) > 0 ? Number(requested) : max, opts.pageSize ?? max);

  function taskJson(clusterN: string, arn: string, service: string, t: StubTask) {
    const clusterArn = `arn:aws:ecs:${REGION}:${ACCOUNT}:cluster/${clusterN}`;
    const base = {
      taskArn: arn,
      clusterArn,
      group: `service:${service}`,
      lastStatus: t.lastStatus ?? 'RUNNING',
      desiredStatus: t.desiredStatus ?? 'RUNNING',
      healthStatus: t.healthStatus ?? 'UNKNOWN',
      launchType: t.launchType ?? (t.ip ? 'FARGATE' : 'EC2'),
      taskDefinitionArn: `arn:aws:ecs:${REGION}:${ACCOUNT}:task-definition/${service}:1`,
      version: 3,
    };
    const container = { containerArn: `${arn.replace(':task/', ':container/')}/app`, taskArn: arn, name: 'app', lastStatus: base.lastStatus };
    if (t.ip) {
      const eni = eniOf(arn, t);
      const attachmentId = `att-${eni.slice(4)}`;
      return {
        ...base,
        attachments: [
          {
            id: attachmentId,
            type: 'ElasticNetworkInterface',
            status: 'ATTACHED',
            details: [
              { name: 'subnetId', value: 'subnet-0123456789abcdef0' },
              { name: 'networkInterfaceId', value: eni },
              { name: 'macAddress', value: '0a:1b:2c:3d:4e:5f' },
              { name: 'privateDnsName', value: `ip-${t.ip.replace(/\./g, '-')}.ec2.internal` },
              { name: 'privateIPv4Address', value: t.ip },
            ],
          },
        ],
        containers: [{ ...container, networkInterfaces: [{ attachmentId, privateIpv4Address: t.ip }], networkBindings: [] }],
      };
    }
    return {
      ...base,
      ...(t.containerInstanceArn ? { containerInstanceArn: t.containerInstanceArn } : {}),
      attachments: [],
      containers: [
        {
          ...container,
          networkInterfaces: [],
          networkBindings: (t.bindings ?? []).flatMap((b) => [
            { bindIP: '0.0.0.0', containerPort: b.containerPort, hostPort: b.hostPort, protocol: b.protocol ?? 'tcp' },
            { bindIP: '::', containerPort: b.containerPort, hostPort: b.hostPort, protocol: b.protocol ?? 'tcp' },
          ]),
        },
      ],
    };
  }

  // ---- ECS and Secrets Manager (awsJson1_1) ----
  const json: Record<string, (b: Record<string, unknown>) => unknown> = {
    ListTasks(b) {
      const [name, services] = cluster(b.cluster);
      let tasks = allTasks(name, services);
      if (b.serviceName !== undefined) {
        if (!services[String(b.serviceName)]) throw new ApiError('ServiceNotFoundException', 'Service not found.');
        tasks = tasks.filter((t) => t.service === b.serviceName);
      }
      // desiredStatus=RUNNING also lists tasks that are still PENDING: that is ECS's behaviour.
      const desired = String(b.desiredStatus ?? 'RUNNING');
      tasks = tasks.filter((t) => (t.task.desiredStatus ?? 'RUNNING') === desired);
      if (b.maxResults !== undefined && (Number(b.maxResults) < 1 || Number(b.maxResults) > 100)) {
        throw new ApiError('InvalidParameterException', 'maxResults must be between 1 and 100.');
      }
      const from = fromToken(b.nextToken);
      const size = page(100, b.maxResults);
      const next = from + size < tasks.length ? token(from + size) : undefined;
      return { taskArns: tasks.slice(from, from + size).map((t) => t.arn), ...(next ? { nextToken: next } : {}) };
    },
    ListClusters(b) {
      if (b.maxResults !== undefined && (Number(b.maxResults) < 1 || Number(b.maxResults) > 100)) {
        throw new ApiError('InvalidParameterException', 'maxResults must be between 1 and 100.');
      }
      const names = Object.keys(m.clusters);
      const from = fromToken(b.nextToken);
      const size = page(100, b.maxResults);
      const next = from + size < names.length ? token(from + size) : undefined;
      return { clusterArns: names.slice(from, from + size).map((n) => `arn:aws:ecs:${REGION}:${ACCOUNT}:cluster/${n}`), ...(next ? { nextToken: next } : {}) };
    },
    ListServices(b) {
      const [name, services] = cluster(b.cluster);
      if (b.maxResults !== undefined && (Number(b.maxResults) < 1 || Number(b.maxResults) > 100)) {
        throw new ApiError('InvalidParameterException', 'maxResults must be between 1 and 100.');
      }
      const names = Object.keys(services);
      const from = fromToken(b.nextToken);
      // ECS's default page is 10 services.
      const size = page(b.maxResults === undefined ? 10 : 100, b.maxResults);
      const next = from + size < names.length ? token(from + size) : undefined;
      return { serviceArns: names.slice(from, from + size).map((n) => `arn:aws:ecs:${REGION}:${ACCOUNT}:service/${name}/${n}`), ...(next ? { nextToken: next } : {}) };
    },
    DescribeTasks(b) {
      const [name, services] = cluster(b.cluster);
      const wanted = (b.tasks as string[] | undefined) ?? [];
      if (wanted.length === 0 || wanted.length > 100) throw new ApiError('InvalidParameterException', 'Tasks cannot be empty or more than 100.');
      const byArn = new Map(allTasks(name, services).map((t) => [t.arn, t]));
      const tasks: unknown[] = [];
      const failures: unknown[] = [];
      for (const arn of wanted) {
        const t = byArn.get(arn);
        if (t) tasks.push(taskJson(name, arn, t.service, t.task));
        else failures.push({ arn, reason: 'MISSING' });
      }
      return { tasks, failures };
    },
    DescribeContainerInstances(b) {
      const [name] = cluster(b.cluster);
      const wanted = (b.containerInstances as string[] | undefined) ?? [];
      if (wanted.length === 0 || wanted.length > 100) throw new ApiError('InvalidParameterException', 'containerInstances cannot be empty or more than 100.');
      const containerInstances: unknown[] = [];
      const failures: unknown[] = [];
      for (const arn of wanted) {
        const id = m.containerInstances[arn];
        if (id) containerInstances.push({ containerInstanceArn: arn, ec2InstanceId: id, status: 'ACTIVE', agentConnected: true, clusterArn: `arn:aws:ecs:${REGION}:${ACCOUNT}:cluster/${name}` });
        else failures.push({ arn, reason: 'MISSING' });
      }
      return { containerInstances, failures };
    },
    GetSecretValue(b) {
      const id = String(b.SecretId);
      const value = m.secrets[id];
      if (value === undefined) throw new ApiError('ResourceNotFoundException', "Secrets Manager can't find the specified secret.");
      return { ARN: id.startsWith('arn:') ? id : `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:${id}-AbCdEf`, Name: id, SecretString: value, VersionId: 'v1', VersionStages: ['AWSCURRENT'] };
    },
  };

  // ---- EC2 (ec2Query) ----
  function instanceMatches(i: StubInstance, f: { name: string; values: string[] }): boolean {
    if (f.name.startsWith('tag:')) {
      const v = i.tags?.[f.name.slice(4)];
      return v !== undefined && f.values.includes(v);
    }
    if (f.name === 'instance-state-name') return f.values.includes(i.state ?? 'running');
    if (f.name === 'instance-id') return f.values.includes(i.id);
    throw new ApiError('InvalidParameterValue', `The filter '${f.name}' is invalid`);
  }

  function instanceXml(i: StubInstance): string {
    const state = i.state ?? 'running';
    const tags = Object.entries(i.tags ?? {})
      .map(([k, v]) => `<item>${tag('key', k)}${tag('value', v)}</item>`)
      .join('');
    return (
      `<item>${tag('instanceId', i.id)}${tag('imageId', 'ami-0123456789abcdef0')}` +
      `<instanceState>${tag('code', STATE_CODES[state])}${tag('name', state)}</instanceState>` +
      `${tag('instanceType', 't4g.nano')}${tag('privateIpAddress', i.privateIp)}${tag('ipAddress', i.publicIp)}` +
      `<tagSet>${tags}</tagSet></item>`
    );
  }

  const ec2: Record<string, (p: URLSearchParams) => string> = {
    DescribeInstances(p) {
      const ids = queryList(p, 'InstanceId');
      const filters = ec2Filters(p);
      if (ids.length > 0 && p.has('MaxResults')) {
        throw new ApiError('InvalidParameterCombination', 'The parameter instancesSet cannot be used with the parameter maxResults');
      }
      let found = m.instances;
      if (ids.length > 0) {
        const missing = ids.filter((id) => !m.instances.some((i) => i.id === id));
        if (missing.length > 0) throw new ApiError('InvalidInstanceID.NotFound', `The instance IDs '${missing.join(', ')}' do not exist`);
        found = found.filter((i) => ids.includes(i.id));
      }
      found = found.filter((i) => filters.every((f) => instanceMatches(i, f)));
      let next: string | undefined;
      if (p.has('MaxResults')) {
        const max = Number(p.get('MaxResults'));
        if (max < 5 || max > 1000) throw new ApiError('InvalidParameterValue', 'Value for parameter maxResults is invalid. Expecting a value between 5 and 1000.');
        const from = fromToken(p.get('NextToken'));
        const size = page(1000, max);
        next = from + size < found.length ? token(from + size) : undefined;
        found = found.slice(from, from + size);
      }
      const reservations = found
        .map((i, n) => `<item>${tag('reservationId', `r-${n}${i.id.slice(2)}`)}${tag('ownerId', ACCOUNT)}<groupSet/><instancesSet>${instanceXml(i)}</instancesSet></item>`)
        .join('');
      return `<reservationSet>${reservations}</reservationSet>${tag('nextToken', next)}`;
    },
    DescribeNetworkInterfaces(p) {
      const enis = Object.entries(m.clusters).flatMap(([cn, services]) =>
        Object.entries(services).flatMap(([svc, tasks]) =>
          tasks.flatMap((t, i) => (t.ip ? [{ id: eniOf(taskArn(cn, svc, i, t), t), ip: t.ip, publicIp: t.publicIp }] : [])),
        ),
      );
      const ids = queryList(p, 'NetworkInterfaceId');
      if (ids.length > 0 && p.has('MaxResults')) {
        throw new ApiError('InvalidParameterCombination', 'The parameter NetworkInterfaceIds cannot be used with the parameter maxResults');
      }
      let found = enis;
      if (ids.length > 0) {
        const missing = ids.filter((id) => !enis.some((e) => e.id === id));
        if (missing.length > 0) throw new ApiError('InvalidNetworkInterfaceID.NotFound', `The networkInterface ID '${missing[0]}' does not exist`);
        found = found.filter((e) => ids.includes(e.id));
      }
      for (const f of ec2Filters(p)) {
        if (f.name !== 'network-interface-id') throw new ApiError('InvalidParameterValue', `The filter '${f.name}' is invalid`);
        found = found.filter((e) => f.values.includes(e.id));
      }
      const items = found
        .map(
          (e) =>
            `<item>${tag('networkInterfaceId', e.id)}${tag('status', 'in-use')}${tag('privateIpAddress', e.ip)}` +
            (e.publicIp ? `<association>${tag('publicIp', e.publicIp)}${tag('ipOwnerId', 'amazon')}</association>` : '') +
            `</item>`,
        )
        .join('');
      return `<networkInterfaceSet>${items}</networkInterfaceSet>`;
    },
  };

  // ---- Auto Scaling (awsQuery) ----
  const autoScaling: Record<string, (p: URLSearchParams) => string> = {
    DescribeAutoScalingGroups(p) {
      const names = queryList(p, 'AutoScalingGroupNames.member');
      // A name that does not exist is simply absent from the answer: no error.
      const groups = Object.entries(m.asgs).filter(([n]) => names.length === 0 || names.includes(n));
      const from = fromToken(p.get('NextToken'));
      const size = page(100, p.get('MaxRecords') ?? 50);
      const next = from + size < groups.length ? token(from + size) : undefined;
      const members = groups
        .slice(from, from + size)
        .map(([name, instances]) => {
          const inst = instances
            .map(
              (i) =>
                `<member>${tag('InstanceId', i.id)}${tag('InstanceType', 't4g.nano')}${tag('AvailabilityZone', 'us-east-1a')}` +
                `${tag('LifecycleState', i.lifecycleState ?? 'InService')}${tag('HealthStatus', i.healthStatus ?? 'Healthy')}` +
                `${tag('ProtectedFromScaleIn', 'false')}</member>`,
            )
            .join('');
          return (
            `<member>${tag('AutoScalingGroupName', name)}` +
            `${tag('AutoScalingGroupARN', `arn:aws:autoscaling:${REGION}:${ACCOUNT}:autoScalingGroup:0:autoScalingGroupName/${name}`)}` +
            `${tag('MinSize', 0)}${tag('MaxSize', 10)}${tag('DesiredCapacity', instances.length)}${tag('DefaultCooldown', 300)}` +
            `<AvailabilityZones><member>us-east-1a</member></AvailabilityZones>${tag('HealthCheckType', 'EC2')}` +
            `${tag('CreatedTime', '2024-01-01T00:00:00.000Z')}<Instances>${inst}</Instances></member>`
          );
        })
        .join('');
      return `<AutoScalingGroups>${members}</AutoScalingGroups>${tag('NextToken', next)}`;
    },
  };

  // ---- protocol framing ----
  const requestId = () => `${Date.now().toString(16)}-stub-${calls.length}`;

  function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { 'content-type': 'application/x-amz-json-1.1', 'x-amzn-requestid': requestId() });
    res.end(JSON.stringify(body));
  }
  function sendXml(res: http.ServerResponse, status: number, body: string): void {
    res.writeHead(status, { 'content-type': 'text/xml;charset=UTF-8', 'x-amzn-requestid': requestId() });
    res.end(`<?xml version="1.0" encoding="UTF-8"?>\n${body}`);
  }
  type Proto = 'json' | 'ec2' | 'query';
  function sendError(res: http.ServerResponse, proto: Proto, e: ApiError): void {
    if (proto === 'json') sendJson(res, e.status, { __type: e.code, message: e.message });
    else if (proto === 'ec2') {
      sendXml(res, e.status, `<Response><Errors><Error>${tag('Code', e.code)}${tag('Message', e.message)}</Error></Errors>${tag('RequestID', requestId())}</Response>`);
    } else {
      sendXml(
        res,
        e.status,
        `<ErrorResponse xmlns="https://autoscaling.amazonaws.com/doc/2011-01-01/"><Error>${tag('Type', e.status >= 500 ? 'Receiver' : 'Sender')}` +
          `${tag('Code', e.code)}${tag('Message', e.message)}</Error>${tag('RequestId', requestId())}</ErrorResponse>`,
      );
    }
  }
  const throttleOf: Record<Proto, ApiError> = {
    json: new ApiError('ThrottlingException', 'Rate exceeded'),
    ec2: new ApiError('RequestLimitExceeded', 'Request limit exceeded.', 503),
    query: new ApiError('Throttling', 'Rate exceeded'),
  };
  const internalOf: Record<Proto, ApiError> = {
    json: new ApiError('ServerException', 'Internal server error', 500),
    ec2: new ApiError('InternalError', 'An internal error has occurred', 500),
    query: new ApiError('InternalFailure', 'An internal error has occurred', 500),
  };

  async function handle(req: http.IncomingMessage, res: http.ServerResponse, raw: string): Promise<void> {
    const target = String(req.headers['x-amz-target'] ?? '');
    let proto: Proto;
    let api: string;
    let params: Record<string, unknown>;
    let form: URLSearchParams | undefined;
    if (target) {
      proto = 'json';
      api = target.startsWith(ECS_PREFIX) ? target.slice(ECS_PREFIX.length) : target.startsWith(SM_PREFIX) ? target.slice(SM_PREFIX.length) : target;
      try {
        params = raw ? (JSON.parse(raw) as Record<string, unknown>) : {};
      } catch {
        return sendError(res, 'json', new ApiError('SerializationException', 'Malformed JSON'));
      }
    } else {
      form = new URLSearchParams(raw);
      api = form.get('Action') ?? '';
      proto = form.get('Version') === '2011-01-01' ? 'query' : 'ec2';
      params = Object.fromEntries(form);
    }
    const scope = /Credential=([^/]+)\/\d{8}\/([^/]+)\//.exec(String(req.headers.authorization ?? ''));
    calls.push({ api, params, region: scope?.[2], accessKeyId: scope?.[1] });

    if (!String(req.headers.authorization ?? '').startsWith('AWS4-HMAC-SHA256 ')) {
      return sendError(res, proto, new ApiError('MissingAuthenticationToken', 'Request is missing Authentication Token', 403));
    }

    const f = faults.find((x) => x.left > 0 && (x.api === api || x.api === '*'));
    let itemListsLeftOut = false;
    if (f) {
      f.left--;
      if (f.fault !== 'delay' && f.delayMs !== undefined) {
        await new Promise((r) => setTimeout(r, f.delayMs));
        if (closing) return;
      }
      switch (f.fault) {
        case 'throttle':
          return sendError(res, proto, throttleOf[proto]);
        case 'error500':
          return sendError(res, proto, internalOf[proto]);
        case 'hang':
          return; // never answered; close() destroys the socket
        case 'reset':
          req.socket.destroy();
          return;
        case 'malformed':
          res.writeHead(200, { 'content-type': proto === 'json' ? 'application/x-amz-json-1.1' : 'text/xml' });
          res.end(proto === 'json' ? '{"taskArns": [' : '<DescribeInstancesResponse><reservationSet><item>');
          return;
        case 'empty200':
          res.writeHead(200, { 'content-type': proto === 'json' ? 'application/x-amz-json-1.1' : 'text/xml' });
          res.end();
          return;
        case 'html200': // what a captive portal or a misrouted endpoint answers
          res.writeHead(200, { 'content-type': 'text/html' });
          res.end('<html><body><h1>Service Temporarily Unavailable</h1></body></html>');
          return;
        case 'emptyObject200':
          res.writeHead(200, { 'content-type': 'application/x-amz-json-1.1' });
          res.end('{}');
          return;
        case 'delay':
          await new Promise((r) => setTimeout(r, f.delayMs ?? 1000));
          if (closing) return;
          break;
        case 'noItemList':
          itemListsLeftOut = true;
          break;
      }
    }

    try {
      if (proto === 'json') {
        const fn = json[api];
        if (!fn) throw new ApiError('UnknownOperationException', `Unknown operation ${target}`);
        return sendJson(res, 200, fn(params));
      }
      const table = proto === 'ec2' ? ec2 : autoScaling;
      const fn = table[api];
      if (!fn) throw new ApiError('InvalidAction', `The action ${api} is not valid for this web service.`);
      let body = fn(form as URLSearchParams);
      if (itemListsLeftOut) body = body.replace(/<instancesSet>.*?<\/instancesSet>|<Instances>.*?<\/Instances>/g, '');
      if (proto === 'ec2') {
        return sendXml(res, 200, `<${api}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">${tag('requestId', requestId())}${body}</${api}Response>`);
      }
      return sendXml(
        res,
        200,
        `<${api}Response xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><${api}Result>${body}</${api}Result>` +
          `<ResponseMetadata>${tag('RequestId', requestId())}</ResponseMetadata></${api}Response>`,
      );
    } catch (e) {
      if (e instanceof ApiError) return sendError(res, proto, e);
      return sendError(res, proto, internalOf[proto]);
    }
  }

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void handle(req, res, Buffer.concat(chunks).toString('utf8')).catch(() => res.destroy());
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://127.0.0.1:${port}`;

  const env = (): Record<string, string> => ({
    AWS_ENDPOINT_URL_ECS: url,
    AWS_ENDPOINT_URL_EC2: url,
    AWS_ENDPOINT_URL_AUTO_SCALING: url,
    AWS_ENDPOINT_URL_SECRETS_MANAGER: url,
    AWS_ACCESS_KEY_ID: 'AKIASTUBSTUBSTUBSTUB',
    AWS_SECRET_ACCESS_KEY: 'stub-secret-key',
    AWS_REGION: REGION,
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    // The stub's tasks and instances live on loopback, where the tests' backends are.
    LOOPBACK_TARGETS: 'true',
  });

  return {
    url,
    port,
    model: m,
    calls,
    count: (api?: string) => (api ? calls.filter((c) => c.api === api).length : calls.length),
    fail(api, fault, o = {}) {
      faults.push({ api, fault, left: o.times ?? 1, delayMs: o.delayMs });
    },
    clearFaults() {
      faults.length = 0;
    },
    resetCalls() {
      calls.length = 0;
    },
    env,
    applyEnv() {
      const before = new Map<string, string | undefined>();
      const vars = env();
      // AWS_PROFILE or a shared endpoint must not lead the SDK elsewhere.
      for (const k of ['AWS_PROFILE', 'AWS_ENDPOINT_URL', 'AWS_SESSION_TOKEN', 'AWS_IGNORE_CONFIGURED_ENDPOINT_URLS']) {
        before.set(k, process.env[k]);
        delete process.env[k];
      }
      for (const [k, v] of Object.entries(vars)) {
        if (!before.has(k)) before.set(k, process.env[k]);
        process.env[k] = v;
      }
      return () => {
        for (const [k, v] of before) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      };
    },
    async close() {
      closing = true;
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
