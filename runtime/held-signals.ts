/**
 * Signals that come while the primary starts, before its own handlers are set (evaluating the bundle,
 * loading the AWS SDK for discovery: a few hundred milliseconds), held rather than left to Node's
 * default, which ends the process by the signal (exit 143 on a `systemctl stop` right after a start) or,
 * for SIGHUP, at once. main.ts imports this module first, so the hold begins before the rest of the
 * bundle is evaluated; workers set their own handlers and hold nothing.
 */
import cluster from 'node:cluster';

const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;

let first: NodeJS.Signals | undefined;
const hold = (signal: NodeJS.Signals): void => {
  if (signal !== 'SIGHUP') first ??= signal;
};

if (cluster.isPrimary) for (const s of SIGNALS) process.on(s, hold);

export const heldSignals = {
  /**
   * A signal is heard on a turn of the event loop: one that came during synchronous work (loading the
   * SDK) is heard after this, while still held.
   */
  heard: (): Promise<void> => new Promise((resolve) => setImmediate(resolve)),
  /** Stops holding (the proxy's own handlers are set); the first stop signal that came meanwhile, if any. */
  release(): NodeJS.Signals | undefined {
    for (const s of SIGNALS) process.off(s, hold);
    return first;
  },
};
