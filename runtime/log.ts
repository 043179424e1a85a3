/**
 * Structured logs: one JSON object per line on stdout (errors on stderr), so journald and any log
 * shipper can parse them. Never log secrets: callers pass only what they mean to show.
 */
import { format } from 'node:util';
type Level = 'debug' | 'info' | 'warn' | 'error';

/**
 * Bytes a log stream may hold unwritten. stdout and stderr are pipes (journald's socket under systemd)
 * that Node writes asynchronously: were journald to stall, or nobody read a pipe, every access line would
 * stay in memory. Past this, lines are dropped and counted (karma_log_lines_dropped_total), and how many
 * is said once the log is read again.
 */
export const LOG_BACKLOG_MAX_BYTES = 4 * 1024 * 1024;
let droppedSinceSaid = 0;
let droppedTotal = 0;

/** Log lines dropped so far because the log was not read fast enough. */
export const logLinesDropped = (): number => droppedTotal;

export function log(level: Level, msg: string, fields?: Record<string, unknown>): void {
  const stream = level === 'error' || level === 'warn' ? process.stderr : process.stdout;
  if (stream.writableLength > LOG_BACKLOG_MAX_BYTES) {
    droppedSinceSaid++;
    droppedTotal++;
    return;
  }
  if (droppedSinceSaid > 0 && process.stderr.writableLength <= LOG_BACKLOG_MAX_BYTES) {
    const dropped = droppedSinceSaid;
    droppedSinceSaid = 0;
    process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: 'warn', msg: 'log lines dropped: the log was not read fast enough', pid: process.pid, dropped }) + '\n');
  }
  stream.write(JSON.stringify({ time: new Date().toISOString(), level, msg, pid: process.pid, ...fields }).replace(UNSAFE, escaped) + '\n');
}

/**
 * What JSON.stringify leaves raw and a reader of the log must not get raw: DEL and the C1 controls
 * (U+009B starts a terminal escape sequence, as ESC [ does), and the Unicode line separators. A client's
 * Host or path reaches a line as latin1 text, so any byte 0x80-0x9f comes out as one of these.
 */
const UNSAFE = /[\u007f-\u009f\u2028\u2029]/g;
const escaped = (c: string): string => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

/**
 * A budget for lines that clients can multiply (a target's health and breaker changes: every Host with
 * a new port is a route with targets of its own): `burst` lines at once, then one per `everyMs`. What is
 * held back is counted, and the next line let through says how many (`heldBack`).
 */
export class LogBudget {
  private tokens: number;
  private at = performance.now();
  private held = 0;

  constructor(private readonly burst: number, private readonly everyMs: number) {
    this.tokens = burst;
  }

  private flush: NodeJS.Timeout | undefined;

  /**
   * Logs the line if the budget allows, else counts it. `always`: a line no client can multiply (a target
   * that served, or passed a check, going bad), which the budget neither holds back nor pays for.
   */
  log(level: Level, msg: string, fields: Record<string, unknown>, always = false): void {
    if (always) return log(level, msg, fields);
    if (!this.take()) {
      this.held++;
      // Said even if no other line comes: once the budget has room again.
      this.flush ??= setTimeout(() => this.sayHeld(), this.everyMs).unref();
      return;
    }
    const held = this.held;
    this.held = 0;
    log(level, msg, held > 0 ? { ...fields, heldBack: held } : fields);
  }

  private take(): boolean {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + (now - this.at) / this.everyMs);
    this.at = now;
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  }

  private sayHeld(): void {
    this.flush = undefined;
    if (this.held === 0) return;
    if (!this.take()) {
      this.flush = setTimeout(() => this.sayHeld(), this.everyMs).unref();
      return;
    }
    const held = this.held;
    this.held = 0;
    log('warn', 'log lines held back: too many at once (the metrics have every change)', { heldBack: held });
  }
}

/**
 * An error logged where it happened, marked so that whoever it reaches next does not say it again (a
 * discovery failure the primary logged once for every worker).
 */
export const markLogged = (err: unknown): Error & { logged: true } => Object.assign(err instanceof Error ? err : new Error(String(err)), { logged: true as const });
export const wasLogged = (err: unknown): boolean => (err as { logged?: unknown } | undefined)?.logged === true;

/** Error fields that are safe and useful in a log line. */
export function errorFields(err: unknown): Record<string, unknown> {
  if (err instanceof Error) {
    const e = err as Error & { code?: string; $metadata?: { httpStatusCode?: number } };
    return { error: e.message, code: e.code ?? e.name, status: e.$metadata?.httpStatusCode };
  }
  return { error: String(err) };
}

/**
 * Node's process warnings (the AWS SDK's NodeVersionSupportWarning on Node 20, deprecations) and what
 * libraries print with console as log lines too: Node's own printer writes warnings as several lines of
 * plain text, which breaks a JSON-lines log.
 */
export function logProcessWarnings(): void {
  process.removeAllListeners('warning');
  process.on('warning', (w: Error & { code?: string }) => {
    log('warn', w.message.replace(/\s+/g, ' ').trim(), { warning: w.name, ...(w.code ? { code: w.code } : {}) });
  });
  // What a library prints itself (ioredis's "Skipping the ready check …" for an ACL user without INFO)
  // becomes a JSON line too: one plain line would break every reader of the log that parses it.
  const to = (level: Level) => (...args: unknown[]): void => log(level, format(...args).replace(/\s+/g, ' ').trim(), { from: 'console' });
  console.log = console.info = console.debug = to('info');
  console.warn = to('warn');
  console.error = to('error');
}
