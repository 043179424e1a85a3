// Process accounting from /proc: CPU time and memory of a process tree, and of the whole machine,
// so a run can say how much of a core the proxy used and how much CPU others took meanwhile.
import * as os from 'node:os';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';

let ticks = 100;
try {
  ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {
  // 100 Hz is the Linux default.
}
export const CLK_TCK = ticks;

export const hasProc = fs.existsSync('/proc/self/stat');

function read(path) {
  try {
    return fs.readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** pid and every descendant (threads are not processes: /proc/<pid>/task/<tid>/children per thread). */
export function tree(pid) {
  const out = [];
  const walk = (p) => {
    out.push(p);
    const tasks = fs.existsSync(`/proc/${p}/task`) ? fs.readdirSync(`/proc/${p}/task`) : [];
    for (const t of tasks) {
      const kids = read(`/proc/${p}/task/${t}/children`);
      if (!kids) continue;
      for (const k of kids.trim().split(/\s+/)) if (k) walk(Number(k));
    }
  };
  if (pid) walk(pid);
  return out;
}

/** utime + stime of one process, in seconds (its threads included). */
export function cpuSeconds(pid) {
  const s = read(`/proc/${pid}/stat`);
  if (!s) return 0;
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/**
 * CPU seconds of this process's children that have exited and been waited for (cutime + cstime): the
 * load generator of a run, which is spawned and reaped inside the sampled window.
 */
export function reapedChildrenSeconds() {
  const s = read('/proc/self/stat');
  if (!s) return 0;
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (Number(f[13]) + Number(f[14])) / CLK_TCK;
}

/** The number of a `Name:   123 kB` line of a /proc file's text, 0 when absent. */
function kb(text, name) {
  return Number((new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text) ?? [])[1] ?? 0);
}

/** Resident and peak resident memory of one process, in MiB. */
export function memory(pid) {
  const s = read(`/proc/${pid}/status`) ?? '';
  return { rss: kb(s, 'VmRSS') / 1024, hwm: kb(s, 'VmHWM') / 1024 };
}

/**
 * The part of a process's RSS no other process shares (USS: Private_Clean + Private_Dirty), in MiB, or
 * undefined where /proc has no smaps_rollup. What RSS adds on top is mostly pages of the node executable
 * itself, which every node process on the machine (the primary, the other workers) maps the same.
 */
export function privateMemory(pid) {
  const s = read(`/proc/${pid}/smaps_rollup`);
  if (!s) return undefined;
  return (kb(s, 'Private_Clean') + kb(s, 'Private_Dirty')) / 1024;
}

/** Busy and total seconds of the machine (all cores) from /proc/stat. */
export function machineSeconds() {
  const line = (read('/proc/stat') ?? '').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line;
  const busy = user + nice + system + irq + softirq + (steal ?? 0);
  return { busy: busy / CLK_TCK, total: (busy + idle + (iowait ?? 0)) / CLK_TCK };
}

export function onPath(cmd) {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && fs.existsSync(`${dir}/${cmd}`)) return `${dir}/${cmd}`;
  }
  for (const dir of ['/usr/sbin', '/sbin', '/usr/local/sbin']) if (fs.existsSync(`${dir}/${cmd}`)) return `${dir}/${cmd}`;
  return undefined;
}

export const taskset = onPath('taskset');

/**
 * The CPUs this process may run on (Linux's Cpus_allowed_list: a container's cpuset, or a taskset
 * around the run), which is what taskset may pin to; every CPU where that is not readable.
 */
export function allowedCores() {
  try {
    const list = /^Cpus_allowed_list:\s*(\S+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1];
    if (list) {
      const cores = list.split(',').flatMap((r) => {
        const [a, b = a] = r.split('-').map(Number);
        return Array.from({ length: b - a + 1 }, (_, i) => a + i);
      });
      if (cores.length > 0 && cores.every(Number.isInteger)) return cores;
    }
  } catch {
    // not Linux, or no /proc
  }
  return os.cpus().map((_, i) => i);
}

// Every process the bench starts, so none outlives it when it fails or is interrupted.
const children = new Set();
const killAll = () => {
  for (const c of children) {
    try {
      c.kill('SIGTERM'); // nginx's master and Karma's primary take their workers down on SIGTERM
    } catch {
      // gone already
    }
  }
};
process.on('exit', killAll);
// Interrupted (Ctrl-C), stopped, or its terminal closed: no child may outlive the run. The exit code is
// the shell's for that signal, 128 + its number.
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]]) {
  process.on(sig, () => {
    killAll();
    process.exit(code);
  });
}

/** Spawns `cmd args` pinned to `cores` (a taskset list like "1") when taskset exists. */
export function spawnPinned(cores, cmd, args, opts = {}) {
  const [c, a] = taskset && cores !== undefined ? [taskset, ['-c', String(cores), cmd, ...args]] : [cmd, args];
  const child = spawn(c, a, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits for a child to exit, killing it hard after `ms`. */
export function stopChild(child, signal = 'SIGTERM', ms = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }, ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    try {
      child.kill(signal);
    } catch {
      clearTimeout(t);
      resolve();
    }
  });
}

/**
 * Samples a set of process trees while a load runs: CPU seconds used (start to stop) and the peak
 * resident memory of each named process. foreignCores is the machine's busy time that none of them,
 * nor the harness and its load generator, used: other processes (and the kernel's own work).
 */
export class Sampler {
  /** groups: { name: () => pid[] }; privateOf: the group names whose private memory is sampled too. */
  constructor(groups, privateOf = []) {
    this.groups = groups;
    this.privateOf = privateOf;
    this.peak = {};
    this.privatePeak = {};
    this.cpu0 = {};
    this.timer = undefined;
  }

  cpuNow() {
    const out = {};
    for (const [name, pids] of Object.entries(this.groups)) {
      out[name] = pids().reduce((sum, p) => sum + cpuSeconds(p), 0);
    }
    return out;
  }

  start() {
    this.cpu0 = this.cpuNow();
    this.machine0 = machineSeconds();
    this.reaped0 = reapedChildrenSeconds();
    this.self0 = process.cpuUsage();
    this.t0 = process.hrtime.bigint();
    const sample = () => {
      for (const [name, pids] of Object.entries(this.groups)) {
        for (const p of pids()) {
          const key = `${name}:${p}`;
          const m = memory(p).rss;
          if (m > (this.peak[key] ?? 0)) this.peak[key] = m;
          if (this.privateOf.includes(name)) {
            const u = privateMemory(p);
            if (u !== undefined && u > (this.privatePeak[key] ?? 0)) this.privatePeak[key] = u;
          }
        }
      }
    };
    sample();
    this.timer = setInterval(sample, 200);
  }

  stop() {
    clearInterval(this.timer);
    const wall = Number(process.hrtime.bigint() - this.t0) / 1e9;
    const cpu1 = this.cpuNow();
    const m1 = machineSeconds();
    const cpu = {};
    let ours = 0;
    for (const name of Object.keys(cpu1)) {
      cpu[name] = cpu1[name] - (this.cpu0[name] ?? 0);
      ours += cpu[name];
    }
    // The load generator (reaped by now) and this harness are part of the run, not other processes.
    const self = process.cpuUsage(this.self0);
    const harness = reapedChildrenSeconds() - this.reaped0 + (self.user + self.system) / 1e6;
    const busy = m1.busy - this.machine0.busy;
    return { wall, cpu, harnessCores: harness / wall, peakRss: this.peak, peakPrivate: this.privatePeak, foreignCores: Math.max(0, (busy - ours - harness) / wall) };
  }
}
