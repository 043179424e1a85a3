/**
 * The log stays bounded in memory when nobody reads it: past LOG_BACKLOG_MAX_BYTES unwritten, lines are
 * dropped, counted, and said once the log is read again.
 */
import { log, LOG_BACKLOG_MAX_BYTES } from '../../runtime/log';
import { register } from '../../runtime/metrics';

/** Makes a stream look as if that many bytes wait unwritten (as a stalled pipe would hold them). */
function backlog(stream: NodeJS.WriteStream, bytes: () => number): () => void {
  Object.defineProperty(stream, 'writableLength', { get: bytes, configurable: true });
  return () => delete (stream as { writableLength?: number }).writableLength;
}

test('lines past the backlog bound are dropped and counted, and the count is said once the log drains', async () => {
  const out: string[] = [];
  const err: string[] = [];
  const stdout = jest.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => (out.push(String(c)), true));
  const stderr = jest.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => (err.push(String(c)), true));
  let waiting = LOG_BACKLOG_MAX_BYTES + 1;
  const restore = backlog(process.stdout, () => waiting);
  const dropped = async (): Promise<number> => (await register.getSingleMetric('karma_log_lines_dropped_total')!.get()).values[0]?.value ?? 0;
  try {
    const before = await dropped();
    for (let i = 0; i < 3; i++) log('info', 'access', { status: 200 });
    expect(out).toEqual([]);
    expect(await dropped()).toBe(before + 3);
    // Said on stderr, with the next line that goes out.
    waiting = 0;
    log('info', 'access', { status: 204 });
    expect(out.map((l) => JSON.parse(l).status)).toEqual([204]);
    expect(err.map((l) => JSON.parse(l))).toEqual([expect.objectContaining({ level: 'warn', msg: 'log lines dropped: the log was not read fast enough', dropped: 3 })]);
    log('info', 'access', { status: 200 });
    expect(err).toHaveLength(1);
  } finally {
    restore();
    stdout.mockRestore();
    stderr.mockRestore();
  }
});
