/**
 * More accepts per event-loop turn for a worker's listening socket.
 *
 * libuv accepts one connection per listening handle per event-loop turn (since libuv 1.45, so Node 20
 * and 22; libuv pull request 3696). A worker busy with hundreds of connections takes a turn every few
 * tens of milliseconds, so a burst of new connections waited in the kernel's accept queue for seconds:
 * the 1,000-connection benchmark's p99 of ~4 s, in every Node forwarder measured, while the turns
 * themselves were fine. Each extra handle on the same socket accepts one more connection per turn.
 *
 * A worker gets them by sending its listening handle to the primary and back over the cluster channel:
 * each pass is a new descriptor for the same socket (SCM_RIGHTS), so the kernel's one accept queue is
 * shared and no connection can land on a handle that nobody serves. Connections accepted by an extra
 * handle are handed to the main server ('connection'), and counted as its own: MAX_CONNECTIONS, close()
 * and draining on shutdown hold across all of them.
 */
import cluster from 'node:cluster';
import * as net from 'node:net';
import { errorFields, log } from './log';

/**
 * Listening handles per worker, the main one included. Measured (fresh worker, 2 s of warm-up, then
 * 5 s of 1,000 new keep-alive connections opened at once; three interleaved rounds): p99 of that burst
 * 382-490 ms with 8, 267-304 with 16, 192-242 with 32. Each handle with a connection waiting makes its
 * own accept call per turn, most of them finding none once the line is short: a connection per request
 * (50 at a time) ran 14.3-14.9k per core with 8, 13.8-14.5k with 16, 13.6-14.3k with 32. 16 halves
 * most of the burst's wait for a few per cent of that rate.
 */
export const ACCEPT_HANDLES = 16;

/** How long a worker waits for the primary to hand a copy back before doing without. */
const ROUND_TRIP_MS = 2000;

interface NetServerInternals {
  _handle: unknown;
  _connections: number;
  _listen2(address: string | null, port: number, addressType: number, backlog: number): void;
  maxConnections: number;
  noDelay?: boolean;
  allowHalfOpen?: boolean;
  pauseOnConnect?: boolean;
  keepAlive?: boolean;
  keepAliveInitialDelay?: number;
}

interface SocketInternals {
  _server: unknown;
}

/** A copy of the listening handle, from the primary. */
function copyOf(handle: unknown, n: number): Promise<unknown> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(undefined), ROUND_TRIP_MS);
    const onMessage = (m: { t?: string; n?: number } | undefined, copy: unknown): void => {
      if (m?.t === 'acceptor' && m.n === n) done(copy);
    };
    const done = (copy: unknown): void => {
      clearTimeout(timer);
      process.off('message', onMessage);
      resolve(copy);
    };
    process.on('message', onMessage);
    process.send!({ t: 'acceptor', n }, handle as net.Server, (err: Error | null) => err && done(undefined));
  });
}

export interface Acceptors {
  /** Extra handles listening. */
  readonly count: number;
  /** Stops accepting on the extra handles (the main server's close() does the rest). */
  close(): void;
}

/**
 * Adds up to `ACCEPT_HANDLES - 1` listening handles to `main`, a server already listening in a cluster
 * worker. Anywhere else (a test starting a worker in-process) it adds none.
 */
export async function addAcceptors(main: net.Server, backlog: number): Promise<Acceptors> {
  const extras: net.Server[] = [];
  const m = main as unknown as NetServerInternals;
  if (cluster.isWorker && process.send && m._handle) {
    for (let n = 1; n < ACCEPT_HANDLES; n++) {
      const copy = await copyOf(m._handle, n);
      if (!copy) break;
      const extra = new net.Server({
        noDelay: m.noDelay,
        allowHalfOpen: m.allowHalfOpen,
        pauseOnConnect: m.pauseOnConnect,
        keepAlive: m.keepAlive,
        keepAliveInitialDelay: (m.keepAliveInitialDelay ?? 0) * 1000,
      });
      const e = extra as unknown as NetServerInternals;
      // Past MAX_CONNECTIONS (counted on the main server) an extra handle drops the connection, as the
      // main one does: net closes it when its own count (always 0 here) reaches this.
      Object.defineProperty(extra, 'maxConnections', {
        get: () => {
          if (!m.maxConnections) return undefined;
          const left = m.maxConnections - m._connections;
          return left > 0 ? left : -1;
        },
      });
      extra.on('connection', (socket: net.Socket) => {
        // Counted as the main server's: its close() waits for it, its limit counts it.
        e._connections--;
        (socket as unknown as SocketInternals)._server = main;
        m._connections++;
        main.emit('connection', socket);
      });
      extra.on('drop', (d) => main.emit('drop', d));
      extra.on('error', (err) => log('warn', 'extra accept handle failed', errorFields(err)));
      // A handle sent over IPC is bound already: set it up as node does for one (setupListenHandle).
      // Internals: a Node where they differ gets one accept handle, as before, not a failed start.
      try {
        if (typeof e._listen2 !== 'function' || typeof m._connections !== 'number') throw new Error('net.Server internals have changed');
        e._handle = copy;
        e._listen2(null, -1, -1, backlog);
      } catch (err) {
        log('warn', 'cannot add accept handles; accepting on one', errorFields(err));
        (copy as { close?: () => void }).close?.();
        break;
      }
      extras.push(extra);
    }
  }
  return {
    count: extras.length,
    close: () => {
      for (const extra of extras) extra.close();
    },
  };
}

/** The primary's half: a worker's listening handle goes straight back as a new descriptor. */
export function answerAcceptorRequest(worker: { send(m: unknown, handle: net.Server, cb: (err: Error | null) => void): boolean }, m: { t?: string; n?: number }, handle: unknown): boolean {
  if (m?.t !== 'acceptor' || !handle) return false;
  worker.send({ t: 'acceptor', n: m.n }, handle as net.Server, () => (handle as { close?: () => void }).close?.());
  return true;
}
