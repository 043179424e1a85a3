/**
 * What a Karma Proxy stack costs per month, next to the floor of the Application Load Balancer it
 * replaces. The prices are a small table, not a call to the Pricing API: synth stays offline and the
 * number is reproducible. They are us-east-1 on-demand list prices; other regions differ by a few
 * percent. Data transfer is not counted (it is the same for an ALB and for us).
 */

/** When the table below was read. Update the two together. */
export const PRICE_DATE = '2026-11';
/** The region of the prices below; others differ by a few percent. */
export const PRICE_REGION = 'us-east-1';
/** Hours in the month AWS bills by. */
export const HOURS_PER_MONTH = 730;

/** Monthly USD, us-east-1, as of PRICE_DATE. */
export const PRICES = {
  /** Application Load Balancer: its hourly fee over a month, before any LCU. */
  albBase: 16.43,
  /** One Load Balancer Capacity Unit for a month; an ALB that is up bills at least one. */
  albLcu: 5.84,
  /** Any public IPv4 address, attached or idle (Elastic IPs included). */
  publicIpv4: 3.65,
  /** gp3 storage per GB. */
  gp3PerGb: 0.08,
  /** One public hosted zone. */
  route53Zone: 0.5,
  /** One Secrets Manager secret. */
  secret: 0.4,
  /** What a NAT gateway would add (hourly fee only); the stack creates none. */
  natGateway: 32.85,
  /** Spot price as a share of on-demand for the t4g family: about a third, and it moves. */
  spotFactor: 1 / 3,
  /** On-demand Graviton instances (Linux). */
  instances: {
    't4g.nano': 3.07,
    't4g.micro': 6.13,
    't4g.small': 12.26,
    't4g.medium': 24.53,
    't4g.large': 49.06,
    't4g.xlarge': 98.11,
    't4g.2xlarge': 196.22,
    // Fixed performance, for steady load (no CPU credits): $0.0363 and $0.0408 an hour.
    'c7g.medium': 26.5,
    'm7g.medium': 29.78,
  } as Readonly<Record<string, number>>,
  /** ElastiCache nodes (Redis OSS, on-demand). */
  cacheNodes: {
    'cache.t4g.micro': 11.68,
    'cache.t4g.small': 23.36,
    'cache.t4g.medium': 47.45,
  } as Readonly<Record<string, number>>,
} as const;

/** What the estimate needs to know about the stack. */
export interface CostInputs {
  /** e.g. 't4g.nano'. */
  readonly instanceType: string;
  /** Instances that run in steady state (the group's minimum). */
  readonly instances: number;
  /** Whether they run on Spot (about a third of on-demand). */
  readonly spot: boolean;
  /** Elastic IPs the stack allocates (one per instance slot). */
  readonly elasticIps: number;
  /** Root volume of each instance, GB of gp3. */
  readonly volumeGb: number;
  /** The cache node type, or undefined when there is no cache. */
  readonly cacheNodeType?: string;
  /** Whether a hosted zone is part of the setup (counted even when it already exists). */
  readonly hostedZone: boolean;
}

/** One row of the estimate. */
export interface CostLine {
  /** What is billed, e.g. 'EC2 t4g.nano (on-demand)'. */
  readonly item: string;
  /** How many of it run (0 for the NAT gateway the stack does without). */
  readonly quantity: number;
  /** Monthly USD of one unit; undefined when the table has no price for it. */
  readonly unitMonthlyUsd: number | undefined;
  /** quantity x unit, rounded to cents; 0 when the price is unknown. */
  readonly monthlyUsd: number;
}

/** What a stack costs per month, line by line, with the ALB's floor to compare. */
export interface CostEstimate {
  /** When the prices were read (PRICE_DATE). */
  readonly priceDate: string;
  /** The region of the prices (PRICE_REGION). */
  readonly region: string;
  /** One line per billed item. */
  readonly lines: readonly CostLine[];
  /** Sum of the lines with a known price. */
  readonly totalMonthlyUsd: number;
  /** False when some line has no price in the table (the total then leaves it out). */
  readonly complete: boolean;
  /** What the cheapest ALB bills in a month that it is up: the hourly fee plus one LCU. */
  readonly albFloorMonthlyUsd: number;
}

const cents = (n: number): number => Math.round(n * 100) / 100;

/** The ALB's floor: it is billed hourly plus at least one LCU, before any traffic. */
export const ALB_FLOOR_MONTHLY_USD = cents(PRICES.albBase + PRICES.albLcu);

/** The monthly cost of a stack from the price table: no network, the same answer every time. */
export function estimateMonthlyCost(inputs: CostInputs): CostEstimate {
  const lines: CostLine[] = [];
  const add = (item: string, quantity: number, unit: number | undefined): void => {
    lines.push({
      item,
      quantity,
      unitMonthlyUsd: unit === undefined ? undefined : cents(unit),
      monthlyUsd: unit === undefined ? 0 : cents(quantity * unit),
    });
  };

  const onDemand = PRICES.instances[inputs.instanceType];
  const instanceUnit = onDemand === undefined ? undefined : inputs.spot ? onDemand * PRICES.spotFactor : onDemand;
  add(`EC2 ${inputs.instanceType}${inputs.spot ? ' (spot, about a third of on-demand)' : ' (on-demand)'}`,
    inputs.instances, instanceUnit);
  add('Elastic IP (public IPv4), one per instance slot', inputs.elasticIps, PRICES.publicIpv4);
  add(`EBS gp3 root volume, ${inputs.volumeGb} GB each`, inputs.instances, inputs.volumeGb * PRICES.gp3PerGb);
  if (inputs.cacheNodeType !== undefined) {
    add(`ElastiCache ${inputs.cacheNodeType} (Redis)`, 1, PRICES.cacheNodes[inputs.cacheNodeType]);
    // The stack's cache comes with its AUTH token in Secrets Manager.
    add('Secrets Manager secret (the cache\'s AUTH token)', 1, PRICES.secret);
  }
  if (inputs.hostedZone) add('Route53 hosted zone', 1, PRICES.route53Zone);
  add('NAT gateway (none: the proxy sits in public subnets)', 0, PRICES.natGateway);

  return {
    priceDate: PRICE_DATE,
    region: PRICE_REGION,
    lines,
    totalMonthlyUsd: cents(lines.reduce((sum, l) => sum + l.monthlyUsd, 0)),
    complete: lines.every((l) => l.unitMonthlyUsd !== undefined),
    albFloorMonthlyUsd: ALB_FLOOR_MONTHLY_USD,
  };
}

const usd = (n: number): string => `$${n.toFixed(2)}`;

/** One line, for a stack output: `$7.86/month (us-east-1, 2026-11 prices); an ALB starts at $22.27/month`. */
export function formatCostSummary(e: CostEstimate): string {
  const partial = e.complete ? '' : ' plus items without a price in the table';
  return `${usd(e.totalMonthlyUsd)}/month${partial} (${e.region}, ${e.priceDate} prices); ` +
    `an ALB starts at ${usd(e.albFloorMonthlyUsd)}/month before traffic`;
}

/** A plain-text table for the terminal. */
export function formatCostTable(e: CostEstimate): string {
  const rows: [string, string, string, string][] = [['Item', 'Qty', 'Unit/month', 'Month']];
  for (const l of e.lines) {
    rows.push([l.item, String(l.quantity), l.unitMonthlyUsd === undefined ? 'unknown' : usd(l.unitMonthlyUsd),
      l.unitMonthlyUsd === undefined ? 'unknown' : usd(l.monthlyUsd)]);
  }
  rows.push(['Total (Karma Proxy)', '', '', usd(e.totalMonthlyUsd) + (e.complete ? '' : ' + unknown')]);
  rows.push([`ALB floor (base ${usd(PRICES.albBase)} + 1 LCU ${usd(PRICES.albLcu)})`, '', '', usd(e.albFloorMonthlyUsd)]);
  const widths = [0, 1, 2, 3].map((i) => Math.max(...rows.map((r) => r[i].length)));
  const fmt = (r: string[]): string =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [
    `Monthly cost estimate (${e.region} list prices of ${e.priceDate}; data transfer not included)`,
    ...rows.map(fmt),
  ].join('\n');
}
