/**
 * Structured logs: one JSON object per line on stdout (errors on stderr), so journald and any log
 * shipper can parse them. Never log secrets: callers pass only what they mean to show.
 */
type Level = 'debug' | 'info' | 'warn' | 'error';

export function log(level: Level, msg: string, fields?: Record<string, unknown>): void {
  const line = JSON.stringify({ time: new Date().toISOString(), level, msg, pid: process.pid, ...fields });
  if (level === 'error' || level === 'warn') process.stderr.write(line + '\n');
  else process.stdout.write(line + '\n');
}

/** Error fields that are safe and useful in a log line. */
export function errorFields(err: unknown): Record<string, unknown> {
  if (err instanceof Error) {
    const e = err as Error & { code?: string; $metadata?: { httpStatusCode?: number } };
    return { error: e.message, code: e.code ?? e.name, status: e.$metadata?.httpStatusCode };
  }
  return { error: String(err) };
}

/**
 * Node's process warnings (the AWS SDK's NodeVersionSupportWarning on Node 20, deprecations) as log
 * lines too: Node's own printer writes them as several lines of plain text, which breaks a JSON-lines log.
 */
export function logProcessWarnings(): void {
  process.removeAllListeners('warning');
  process.on('warning', (w: Error & { code?: string }) => {
    log('warn', w.message.replace(/\s+/g, ' ').trim(), { warning: w.name, ...(w.code ? { code: w.code } : {}) });
  });
}
