/**
 * MODE=tcp: raw TCP to the one pool (static, tag, asg), what the stateless load balancer did.
 * Round-robin with the same health and breaker state as HTTP; a connection that cannot be made is
 * retried on the next target (nothing was sent yet); half-close and resets are passed on both ways. A target
 * holds at most POOL_SIZE connections: past it the next target takes the client, and with every target
 * full (or failed) the client is reset, as an NLB does.
 */
import * as net from 'node:net';
import type { Pool, TargetRegistry, TargetState } from './balancer';
import type { Config } from './config';
import { socketsClosed } from './downstream';
import { kindOf, mayHaveLeft, refusedFailure, TUNNEL_KEEPALIVE_MS } from './forward';
import { log } from './log';
import { countChunk } from './memory';
import { acceptedConnections, activeConnections, ClientBytes, countSuccess, failedConnections, limitHits, retriesTotal, upstreamErrors } from './metrics';
import type { RouteTable } from './routes';
import type { ProxyServer } from './server';
import { POOL_ROUTE } from './types';

/** What a tunnel's closing line says of a socket's error: a reset, keep-alive probes unanswered, or else. */
function socketFailure(err: NodeJS.ErrnoException): 'reset' | 'timeout' | 'error' {
  return err.code === 'ECONNRESET' || err.code === 'EPIPE' ? 'reset' : err.code === 'ETIMEDOUT' ? 'timeout' : 'error';
}

export function createTcpServer(config: Config, routes: RouteTable, registry: TargetRegistry): ProxyServer {
  const sockets = new Set<net.Socket>();
  /** The client sockets among them, and their bytes (karma_processed_bytes_total). */
  const clients = new Set<net.Socket>();
  const bytes = new ClientBytes(clients);
  /** Each client's address, read at accept: a destroyed socket no longer says it (for the closing line). */
  const addresses = new WeakMap<net.Socket, string | undefined>();
  /** Tunnels the proxy cut, and why (the closing line's `error`). */
  const cutFor = new WeakMap<net.Socket, 'idle_timeout' | 'cut_at_shutdown' | 'reset' | 'timeout' | 'error'>();
  /**
   * Cuts one of a tunnel's sockets with a reset, saying why: a FIN would read as a stream that ended
   * whole, to a protocol that ends its data with the connection (a file sent as is, syslog). A cut
   * client's target is reset in turn as it closes ('close' below); a target is cut with its client.
   */
  const cut = (socket: net.Socket, why: 'idle_timeout' | 'cut_at_shutdown'): void => {
    if (!cutFor.has(socket)) cutFor.set(socket, why);
    if (!socket.destroyed) socket.resetAndDestroy();
  };

  /**
   * No target takes the client (every one full, down or failed): a reset, as an NLB answers, not a FIN
   * that would read as a stream that ended whole.
   */
  const refuse = (client: net.Socket, why: string, startedAt: number, target?: string): void => {
    if (config.logConnections) {
      log('info', 'tcp connection refused', { client: addresses.get(client), why, ...(target ? { target } : {}), ms: Date.now() - startedAt });
    }
    if (!client.destroyed) client.resetAndDestroy();
  };

  const connect = (pool: Pool, tried: Set<TargetState>, client: net.Socket, attempt: number, startedAt: number, last?: string, full = false, asked = false): void => {
    const pick = pool.pick(tried);
    if (!pick) {
      // Refused only because a half-open target's trial is being claimed from the primary, or is out on
      // another worker: the board's answer (a grant) may be on its way. Asked once, as for HTTP, before
      // the client is reset (the first client after CIRCUIT_BREAKER_TIMEOUT would otherwise be).
      const again = (): void => {
        if (!client.destroyed) connect(pool, tried, client, attempt, startedAt, last, full, true);
      };
      if (!asked && pool.askBoard(again)) return;
      refuse(client, full ? 'every target full (POOL_SIZE)' : last === undefined ? 'no target available' : 'no other target available', startedAt, last);
      return;
    }
    const s = pick.state;
    const epoch = s.breaker.epoch;
    tried.add(s);
    if (s.inflight >= config.poolSize) {
      // POOL_SIZE connections to this target already: another target takes this one, or nobody does.
      s.breaker.release(epoch);
      limitHits.labels({ limit: 'target_sockets' }).inc();
      connect(pool, tried, client, attempt, startedAt, last, true);
      return;
    }
    // A retry is counted when it reaches a target, not when one is wanted and none is left.
    if (attempt > 0) retriesTotal.inc();
    s.inflight++;
    // Keep-alive probes find a target that vanished without a word (IDLE_TIMEOUT=0 waits on it for good).
    const upstream = net.connect({ host: s.target.host, port: s.target.port, allowHalfOpen: true, keepAlive: true, keepAliveInitialDelay: TUNNEL_KEEPALIVE_MS });
    sockets.add(upstream);
    let connected = false;
    let finished = false;
    const timer = setTimeout(() => upstream.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })), config.poolTimeoutMs);
    const done = (): void => {
      if (finished) return;
      finished = true;
      sockets.delete(upstream);
      registry.done(s);
      // One line per client connection: a try that never connected is in the line that ends it.
      if (config.logConnections && connected) {
        const why = cutFor.get(client) ?? cutFor.get(upstream);
        log('info', 'tcp connection closed', {
          client: addresses.get(client),
          target: s.target.id,
          bytesIn: client.bytesRead,
          bytesOut: client.bytesWritten,
          ms: Date.now() - startedAt,
          ...(why ? { error: why } : {}),
        });
      }
    };
    upstream.once('connect', () => {
      connected = true;
      clearTimeout(timer);
      // The target accepted: a half-open breaker's trial passed, whether or not the client is still here
      // (left unjudged, it would keep the target out for good).
      s.breaker.onSuccess(epoch);
      // The client left while this connection was being made: nothing to tunnel.
      if (client.destroyed) {
        upstream.destroy();
        return;
      }
      countSuccess(s.target.id);
      upstream.setNoDelay(true);
      upstream.setTimeout(config.idleTimeoutMs, () => {
        cut(upstream, 'idle_timeout');
        cut(client, 'idle_timeout');
      });
      client.pipe(upstream);
      upstream.pipe(client);
      // Bytes tunnelled either way, for memory.ts's young-generation collections.
      client.on('data', countChunk);
      upstream.on('data', countChunk);
      client.resume();
    });
    upstream.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (connected) {
        // The target reset (or the stream failed): the client hears a reset too, not a FIN that would say
        // the stream ended whole.
        cutFor.set(client, socketFailure(err));
        client.resetAndDestroy();
        return;
      }
      failedConnections.labels({ target: s.target.id }).inc();
      const kind = err.code === 'ETIMEDOUT' ? 'connect_timeout' : err.code === 'ECONNREFUSED' ? 'refused' : 'other';
      upstreamErrors.labels({ kind }).inc();
      // The target may have left the pool (an instance terminated): the pool is rediscovered now.
      if (mayHaveLeft(kind)) void routes.suspect(pool.id);
      done();
      // The next target once the failure is counted (with several workers, by the primary: breaker.ts).
      s.breaker.onFailure(
        epoch,
        () => {
          if (client.destroyed) return;
          if (attempt < config.retries) connect(pool, tried, client, attempt + 1, startedAt, s.target.id);
          else refuse(client, `target failed: ${err.code ?? err.message}`, startedAt, s.target.id);
        },
        refusedFailure(kindOf(err)),
      );
    });
    upstream.once('close', () => {
      clearTimeout(timer);
      if (connected) {
        done();
        // The client may still be reading what was piped; end() flushes then closes.
        if (!client.destroyed) client.end();
      }
    });
    client.once('close', () => {
      // A client that reset (an error) or that the proxy cut is passed on as a reset; one that closed, as
      // a close: after what is still queued for the target (its side closed first, it may read on; the
      // pipe ended it already).
      if (connected) {
        // A client that failed is said in the closing line as a target that failed is.
        if (client.errored && !cutFor.has(client)) cutFor.set(client, socketFailure(client.errored as NodeJS.ErrnoException));
        if (client.errored || cutFor.has(client)) upstream.resetAndDestroy();
        else if (upstream.writableFinished) upstream.destroy();
        else upstream.end();
      } else if (!finished) {
        // Gone while the connection was being made (IDLE_TIMEOUT, or the client itself): no mark against
        // the target, and its slot is free now.
        clearTimeout(timer);
        s.breaker.release(epoch);
        done();
        upstream.destroy();
      }
    });
  };

  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (client) => {
    activeConnections.inc();
    acceptedConnections.inc();
    sockets.add(client);
    if (config.logConnections) addresses.set(client, client.remoteAddress);
    client.on('error', () => undefined);
    clients.add(client);
    client.once('close', () => {
      activeConnections.dec();
      sockets.delete(client);
      clients.delete(client);
      bytes.closed(client);
    });
    client.setKeepAlive(true, TUNNEL_KEEPALIVE_MS);
    client.setTimeout(config.idleTimeoutMs, () => cut(client, 'idle_timeout'));
    const hit = routes.get(POOL_ROUTE);
    if (hit.kind !== 'pool') {
      refuse(client, 'no target available', Date.now());
      return;
    }
    connect(hit.pool, new Set(), client, 0, Date.now());
  });
  server.maxConnections = config.maxConnections;
  server.once('close', () => bytes.stop());
  server.on('drop', (d?: { remoteAddress?: string }) => {
    limitHits.labels({ limit: 'connections' }).inc();
    // Closed by node:net as it was accepted: no target was asked, and the line says why.
    if (config.logConnections) log('info', 'tcp connection refused', { client: d?.remoteAddress, why: 'MAX_CONNECTIONS reached' });
  });

  const shutdown = (timeoutMs: number): Promise<void> =>
    new Promise<void>((resolve) => {
      const deadline = setTimeout(() => {
        for (const s of sockets) cut(s, 'cut_at_shutdown');
      }, timeoutMs);
      server.close(() => {
        clearTimeout(deadline);
        // Tunnels cut at the deadline log their close ('close' comes after server.close's callback).
        void socketsClosed(sockets).then(resolve);
      });
    });

  return { server, shutdown };
}
