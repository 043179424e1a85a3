/**
 * The text the instance runs at first boot, and the files it writes: the env file and the systemd unit.
 * Pure functions of their options, so tests can render them with plain values and check them with
 * `bash -n` and `systemd-analyze verify`. Values may contain CDK tokens; CloudFormation resolves them
 * inside the user data (bucket names, ARNs, endpoints: none needs quoting).
 */
import { Token } from 'aws-cdk-lib';

/** Where things live on the instance. */
export const INSTANCE_PATHS = {
  /** Amazon Linux 2023's namespaced Node.js 22 binary: an upgrade of the default `node` cannot change it. */
  node: '/usr/bin/node-22',
  bundleDir: '/opt/karma-proxy',
  bundle: '/opt/karma-proxy/karma-proxy.js',
  envDir: '/etc/karma-proxy',
  envFile: '/etc/karma-proxy/env',
  unitName: 'karma-proxy.service',
  unitFile: '/etc/systemd/system/karma-proxy.service',
  livenessScript: '/opt/karma-proxy/liveness.sh',
  livenessService: '/etc/systemd/system/karma-proxy-liveness.service',
  livenessTimer: '/etc/systemd/system/karma-proxy-liveness.timer',
  livenessTimerName: 'karma-proxy-liveness.timer',
  swapFile: '/swapfile',
  swapSysctl: '/etc/sysctl.d/90-karma-proxy-swap.conf',
} as const;

export interface UnitOptions {
  /** Seconds systemd waits after SIGTERM before SIGKILL: at least the runtime's SHUTDOWN_TIMEOUT. */
  readonly timeoutStopSec: number;
  /** @default INSTANCE_PATHS.node */
  readonly node?: string;
  /** @default INSTANCE_PATHS.bundle */
  readonly bundle?: string;
  /** @default INSTANCE_PATHS.envFile */
  readonly envFile?: string;
  /** Open files per process (client plus upstream sockets). */
  readonly limitNoFile: number;
}

/**
 * The service: unprivileged (a fresh dynamic user), allowed to bind port 80 and nothing more, a
 * read-only system, restarted whatever happens, stopped with SIGTERM and time to drain.
 */
export function renderUnit(o: UnitOptions): string {
  return [
    '[Unit]',
    'Description=Karma Proxy (HTTP load balancer for ECS services and EC2 pools)',
    'Wants=network-online.target',
    'After=network-online.target',
    // Never give up restarting: a proxy that stays down is worse than one that crash-loops visibly.
    'StartLimitIntervalSec=0',
    '',
    '[Service]',
    'Type=simple',
    // Fewer glibc malloc arenas: a worker's RSS stays ~20 MB lower under load on a 512 MiB instance.
    'Environment=MALLOC_ARENA_MAX=2',
    `EnvironmentFile=${o.envFile ?? INSTANCE_PATHS.envFile}`,
    `ExecStart=${o.node ?? INSTANCE_PATHS.node} ${o.bundle ?? INSTANCE_PATHS.bundle}`,
    'Restart=always',
    'RestartSec=2',
    // A worker the kernel's OOM killer ends is replaced by the primary, as any worker that dies; systemd's
    // default (stop) would take the whole proxy down with it, every connection of every worker.
    'OOMPolicy=continue',
    'KillSignal=SIGTERM',
    `TimeoutStopSec=${o.timeoutStopSec}`,
    `LimitNOFILE=${o.limitNoFile}`,
    'DynamicUser=yes',
    'AmbientCapabilities=CAP_NET_BIND_SERVICE',
    'CapabilityBoundingSet=CAP_NET_BIND_SERVICE',
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    'ProtectHome=yes',
    'PrivateTmp=yes',
    'PrivateDevices=yes',
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes',
    'ProtectClock=yes',
    'ProtectHostname=yes',
    'RestrictNamespaces=yes',
    'RestrictRealtime=yes',
    'RestrictSUIDSGID=yes',
    'LockPersonality=yes',
    // AF_NETLINK: libuv lists interfaces through it (os.networkInterfaces).
    'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK',
    'SystemCallArchitectures=native',
    // The system calls of an ordinary service, no more (no mount, kexec, module loading, raw I/O, ...).
    // Refused with EPERM rather than killed: libuv and V8 try a few optional ones (io_uring, pkeys) and
    // fall back when refused.
    'SystemCallFilter=@system-service',
    'SystemCallErrorNumber=EPERM',
    // Other processes' /proc entries are hidden from the service (it reads only its own).
    'ProtectProc=invisible',
    'UMask=0077',
    // journald's default per-service limit (10,000 lines in 30 s) would drop LOG_CONNECTIONS access
    // lines past ~330 requests a second, silently.
    'LogRateLimitIntervalSec=0',
    // Node's JIT needs writable+executable memory, so no MemoryDenyWriteExecute.
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

const SAFE_VALUE = /^[A-Za-z0-9_.,:/@+=*%^~-]*$/;

/**
 * `KEY=value` lines in systemd's EnvironmentFile syntax. Plain values stay bare; others are
 * double-quoted with `\ " ` $` escaped. Values holding CDK tokens are left as they are: what
 * CloudFormation puts there (endpoints, ARNs, regions) is always plain.
 */
export function renderEnvFile(env: Readonly<Record<string, string>>): string {
  const lines = Object.keys(env)
    .sort()
    .map((key) => {
      const value = env[key];
      if (Token.isUnresolved(value) || SAFE_VALUE.test(value)) return `${key}=${value}`;
      return `${key}="${value.replace(/[\\"`$]/g, (c) => `\\${c}`)}"`;
    });
  return lines.join('\n') + '\n';
}

export interface BootstrapOptions {
  /** Stack name, logical ID of the Auto Scaling group and region, for cfn-signal. */
  readonly stackName: string;
  readonly signalResource: string;
  readonly region: string;
  /** s3://bucket/key of the bundle. */
  readonly bundleUrl: string;
  /** SHA-256 of the bundle (hex), checked after the download. */
  readonly bundleSha256: string;
  /** The tag that marks this fleet's Elastic IPs. */
  readonly addressTagKey: string;
  readonly addressTagValue: string;
  /**
   * The tag that numbers them, and how many slots the fleet has: an instance claims slots 1 to
   * `addressSlots` only, so that an address of a slot being removed (a lower maxCapacity) is never
   * claimed again, and a change of their number replaces the instances (it changes this script).
   */
  readonly slotTagKey: string;
  readonly addressSlots: number;
  /** The runtime's /healthz, polled before the instance claims an address and signals success. */
  readonly healthUrl: string;
  readonly healthWaitSeconds: number;
  /** How long to wait for a free address (a replaced instance frees its own as it terminates). */
  readonly addressWaitSeconds: number;
  /** The content of /etc/karma-proxy/env. */
  readonly envFile: string;
  /** The content of the systemd unit. */
  readonly unit: string;
}

const sq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

export interface LivenessOptions {
  /** The runtime's /healthz. */
  readonly healthUrl: string;
  /** Checks in a row that must fail before the service is restarted (and again after each restart). @default 4 (a minute at 15 s) */
  readonly failures?: number;
  /** Checks in a row, restarts between them, after which the instance powers off to be replaced. @default 20 (five minutes at 15 s) */
  readonly replaceAfter?: number;
  /** Where the count of failures in a row is kept. @default /run/karma-proxy-liveness */
  readonly stateFile?: string;
}

/**
 * The liveness check a timer runs every 15 s: when /healthz has not answered for `failures` checks in
 * a row (a primary that hangs: systemd restarts only a process that exits), the service is restarted,
 * only if it is running (`try-restart`: a service an operator stopped stays stopped, and is not
 * checked). When restarts do not help for `replaceAfter` checks, the instance powers off: it terminates
 * (instanceInitiatedShutdownBehavior), its address goes free and the group starts another, as an ALB
 * would stop sending to a target that stays unhealthy; the group itself sees EC2's health only. The
 * worker watchdog inside the runtime handles a stuck worker; this, the rest.
 */
export function renderLivenessScript(o: LivenessOptions): string {
  const failures = o.failures ?? 4;
  const replaceAfter = o.replaceAfter ?? 20;
  const state = o.stateFile ?? '/run/karma-proxy-liveness';
  return `#!/bin/bash
# Karma Proxy liveness check, run by ${INSTANCE_PATHS.livenessTimerName}.
set -uo pipefail
readonly STATE=${sq(state)}
if curl -fs --max-time 5 -o /dev/null ${sq(o.healthUrl)}; then
  rm -f "$STATE"
  exit 0
fi
# A proxy an operator stopped is not checked: "inactive", or "failed" when its stop ended in an error
# (a worker lost while draining, TimeoutStopSec's SIGKILL); with Restart=always and no start limit a
# crash loop is "activating", never "failed". Nor is one draining on its way to a stop or a restart.
# A stop or restart under way is neither counted nor a new start: it may be systemd's own, stopping what
# is left after the primary died, again and again in a crash loop, which must still come to a power-off.
case "$(systemctl is-active ${INSTANCE_PATHS.unitName})" in
  inactive|failed) rm -f "$STATE"; exit 0 ;;
  deactivating) exit 0 ;;
esac
n=$(( $(cat "$STATE" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$STATE"
if [ $(( n % ${replaceAfter} )) -eq 0 ]; then
  echo "karma-proxy-liveness: /healthz did not answer $n times in a row, restarts between: powering off; the group will replace this instance"
  shutdown -h now && exit 0
  echo "karma-proxy-liveness: shutdown failed: restarting again meanwhile"
fi
if [ $(( n % ${failures} )) -ne 0 ]; then
  echo "karma-proxy-liveness: /healthz did not answer ($n in a row)"
  exit 0
fi
echo "karma-proxy-liveness: /healthz did not answer $n times in a row: restarting ${INSTANCE_PATHS.unitName}"
systemctl try-restart ${INSTANCE_PATHS.unitName}
`;
}

/** The oneshot service that runs the liveness script, and its timer. */
export function renderLivenessUnits(): { service: string; timer: string } {
  return {
    service: [
      '[Unit]',
      'Description=Karma Proxy liveness check (restarts the proxy when /healthz stops answering, replaces the instance when that does not help)',
      `After=${INSTANCE_PATHS.unitName}`,
      '',
      '[Service]',
      'Type=oneshot',
      `ExecStart=${INSTANCE_PATHS.livenessScript}`,
      '',
    ].join('\n'),
    timer: [
      '[Unit]',
      'Description=Karma Proxy liveness check every 15 s',
      '',
      '[Timer]',
      'OnActiveSec=60s',
      'OnUnitActiveSec=15s',
      'AccuracySec=1s',
      '',
      '[Install]',
      'WantedBy=timers.target',
      '',
    ].join('\n'),
  };
}

/** A here-document whose delimiter cannot occur in its body. */
function heredoc(target: string, mode: string, body: string, delimiter: string): string {
  if (body.split('\n').includes(delimiter)) throw new Error(`the text for ${target} contains the line ${delimiter}`);
  const text = body.endsWith('\n') ? body : `${body}\n`;
  return `install -m ${mode} /dev/null ${target}\ncat > ${target} <<'${delimiter}'\n${text}${delimiter}`;
}

export interface SwapOptions {
  /** A swap file is made when MemTotal is below this (KiB) and there is no swap at all.
   * @default 1 GiB: the 512 MiB and 1 GiB types, whose MemTotal is a little under their size */
  readonly belowMemKib: number;
  /** Size of the swap file.
   * @default 1024 MiB: twice a t4g.nano's memory, an eighth of the smallest root volume allowed (8 GB) */
  readonly sizeMib: number;
  /** vm.swappiness while the swap is on.
   * @default 10: pages go out under memory pressure only */
  readonly swappiness: number;
  /** @default INSTANCE_PATHS.swapFile */
  readonly file: string;
  /** Where MemTotal and SwapTotal are read. @default /proc/meminfo */
  readonly meminfo: string;
  /** @default /etc/fstab */
  readonly fstab: string;
  /** @default INSTANCE_PATHS.swapSysctl */
  readonly sysctlFile: string;
}

export const SWAP_DEFAULTS: SwapOptions = {
  belowMemKib: 1024 * 1024,
  sizeMib: 1024,
  swappiness: 10,
  file: INSTANCE_PATHS.swapFile,
  meminfo: '/proc/meminfo',
  fstab: '/etc/fstab',
  sysctlFile: INSTANCE_PATHS.swapSysctl,
};

/**
 * The boot's first step on a small instance: a swap file, before dnf. On a 512 MiB t4g.nano, dnf
 * loading Amazon Linux 2023's repository metadata can be OOM-killed, and the boot with it. Safe to
 * run again: with the swap on (the fstab entry turns it on at every boot) it does nothing, and after
 * a run cut short it redoes only what is missing. Uses the bootstrap's `log`.
 */
export function renderSwapSetup(options: Partial<SwapOptions> = {}): string {
  const o = { ...SWAP_DEFAULTS, ...options };
  for (const p of [o.file, o.meminfo, o.fstab, o.sysctlFile]) {
    if (!/^\/[\w./-]+$/.test(p)) throw new Error(`swap path '${p}' must be a plain absolute path`);
  }
  const file = o.file;
  return `# Swap on a small instance, made before dnf, which can be OOM-killed on 512 MiB. It stays after the
# boot: on 512 MiB a burst (worker heaps growing under many connections, discoveries of many routes)
# would otherwise get the proxy OOM-killed, and with a low swappiness the kernel pages out only under
# pressure. ${o.sizeMib} MiB of the root volume: 8 GB at least, of which the image and Node.js use about 2.
mem_kib=$(awk '$1 == "MemTotal:" { print $2 }' ${o.meminfo})
swap_kib=$(awk '$1 == "SwapTotal:" { print $2 }' ${o.meminfo})
if [ "$mem_kib" -lt ${o.belowMemKib} ] && [ "$swap_kib" = 0 ]; then
  if [ "$(stat -c %s ${file} 2>/dev/null || echo 0)" != ${o.sizeMib * 1024 * 1024} ]; then
    # Written out with dd, not fallocate: swapon refuses a file with holes or unwritten extents.
    rm -f ${file}
    install -m 0600 /dev/null ${file}
    dd if=/dev/zero of=${file} bs=1M count=${o.sizeMib} status=none
  fi
  chmod 0600 ${file}
  mkswap ${file} >/dev/null
  swapon ${file}
  grep -qF '${file} none swap ' ${o.fstab} || echo '${file} none swap defaults 0 0' >> ${o.fstab}
  echo 'vm.swappiness = ${o.swappiness}' > ${o.sysctlFile}
  sysctl -q -w vm.swappiness=${o.swappiness}
  log "swap on: ${o.sizeMib} MiB in ${file}, for $((mem_kib / 1024)) MiB of memory"
fi`;
}

/**
 * The first-boot script: give a small instance swap, install Node.js 22 and the CloudFormation
 * helpers, fetch the bundle, write the settings and the unit, start the service, wait until it
 * answers /healthz, claim a free Elastic IP of this fleet, then signal CloudFormation. Any failure signals failure, so a broken bundle
 * stops a rolling update and CloudFormation rolls it back, and powers the instance off, so that a
 * replacement that fails outside a deploy is replaced in turn rather than left in service.
 */
export function renderBootstrap(o: BootstrapOptions): string {
  const liveness = renderLivenessUnits();
  return `#!/bin/bash
# Karma Proxy first boot, rendered by the KarmaProxy construct. Runs once, as root, through cloud-init;
# its output is in /var/log/cloud-init-output.log.
set -euo pipefail

readonly STACK_NAME=${sq(o.stackName)}
readonly SIGNAL_RESOURCE=${sq(o.signalResource)}
readonly REGION=${sq(o.region)}
readonly BUNDLE_URL=${sq(o.bundleUrl)}
readonly BUNDLE_SHA256=${sq(o.bundleSha256)}
readonly ADDRESS_TAG_KEY=${sq(o.addressTagKey)}
readonly ADDRESS_TAG_VALUE=${sq(o.addressTagValue)}
readonly SLOT_TAG_KEY=${sq(o.slotTagKey)}
readonly SLOTS=${sq(Array.from({ length: o.addressSlots }, (_, i) => i + 1).join(','))}
readonly HEALTH_URL=${sq(o.healthUrl)}
readonly HEALTH_WAIT_SECONDS=${o.healthWaitSeconds}
readonly ADDRESS_WAIT_SECONDS=${o.addressWaitSeconds}

log() { echo "karma-proxy-boot: $*" >&2; }

signalled=0
signal() {
  # Tells CloudFormation whether this instance came up; a failure stops the deploy or rolls the update back.
  [ "$signalled" = 1 ] && return 0
  signalled=1
  local bin status
  bin=$(command -v cfn-signal || echo /opt/aws/bin/cfn-signal)
  if [ -x "$bin" ] && "$bin" -e "$1" --stack "$STACK_NAME" --resource "$SIGNAL_RESOURCE" --region "$REGION"; then return 0; fi
  # No cfn-signal (its package may be what failed to install): the AWS CLI, which the image carries,
  # sends the same signal, so that a failed boot fails the deploy now rather than at its timeout.
  if [ "$1" = 0 ]; then status=SUCCESS; else status=FAILURE; fi
  aws cloudformation signal-resource --region "$REGION" --stack-name "$STACK_NAME" \\
    --logical-resource-id "$SIGNAL_RESOURCE" --unique-id "$(instance_id)" --status "$status" \\
    || log "cfn-signal and aws cloudformation signal-resource failed"
}
instance_id() {
  local token
  token=$(curl -fsS --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token) &&
    curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id
}
on_exit() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    log "failed with status $rc"
    signal 1
    # Outside a deploy (a replacement, a rebalance) nobody reads that signal, and the group checks EC2
    # health only: a half-booted instance would stay in service for good, holding its address slot.
    # Powering off terminates it (instanceInitiatedShutdownBehavior), and the group starts another;
    # the minute's delay leaves time to read this log from the console.
    log "powering off in a minute; the group will replace this instance"
    shutdown -h +1 || true
  fi
}
trap on_exit EXIT

${renderSwapSetup()}

# Node.js from the distribution (namespaced: /usr/bin/node-22), and cfn-signal, which not every
# Amazon Linux 2023 image carries.
for attempt in 1 2 3 4 5; do
  if dnf install -y nodejs22 aws-cfn-bootstrap; then break; fi
  if [ "$attempt" = 5 ]; then log "dnf install failed"; exit 1; fi
  sleep $((attempt * 5))
done
test -x ${INSTANCE_PATHS.node}

# The bundle: one file, every dependency inside.
install -d -m 0755 ${INSTANCE_PATHS.bundleDir} ${INSTANCE_PATHS.envDir}
aws s3 cp --only-show-errors --region "$REGION" "$BUNDLE_URL" ${INSTANCE_PATHS.bundle}
# Exactly the bundle synth saw (the asset key is a fingerprint, not the file's hash).
if ! echo "$BUNDLE_SHA256  ${INSTANCE_PATHS.bundle}" | sha256sum -c --quiet; then
  log "the bundle does not match its SHA-256 $BUNDLE_SHA256"
  exit 1
fi
chmod 0644 ${INSTANCE_PATHS.bundle}

# Settings from the construct. No secret here: the runtime reads the Redis AUTH token from Secrets Manager.
# Root's alone all the same (systemd reads it as root): a setting is no business of other local users.
${heredoc(INSTANCE_PATHS.envFile, '0600', o.envFile, 'KARMA_PROXY_ENV')}

${heredoc(INSTANCE_PATHS.unitFile, '0644', o.unit, 'KARMA_PROXY_UNIT')}
systemctl daemon-reload
systemctl enable --now ${INSTANCE_PATHS.unitName}

deadline=$((SECONDS + HEALTH_WAIT_SECONDS))
until curl -fs --max-time 2 -o /dev/null "$HEALTH_URL"; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "not healthy after $HEALTH_WAIT_SECONDS s"
    journalctl -u ${INSTANCE_PATHS.unitName} --no-pager -n 100 || true
    exit 1
  fi
  sleep 2
done
log "healthy"

# From now on a timer checks /healthz every 15 s and restarts a proxy that stopped answering.
${heredoc(INSTANCE_PATHS.livenessScript, '0755', renderLivenessScript({ healthUrl: o.healthUrl }), 'KARMA_PROXY_LIVENESS')}
${heredoc(INSTANCE_PATHS.livenessService, '0644', liveness.service, 'KARMA_PROXY_LIVENESS_UNIT')}
${heredoc(INSTANCE_PATHS.livenessTimer, '0644', liveness.timer, 'KARMA_PROXY_LIVENESS_TIMER')}
systemctl daemon-reload
systemctl enable --now ${INSTANCE_PATHS.livenessTimerName}

# Claim a free Elastic IP of this fleet, so that the wildcard record reaches this instance. Two
# instances may race for the same one: associate-address refuses the second (no reassociation),
# which then tries another.
INSTANCE_ID=$(instance_id)
readonly INSTANCE_ID

claim_address() {
  local held free alloc
  held=$(aws ec2 describe-addresses --region "$REGION" --output text \\
    --filters "Name=tag:$ADDRESS_TAG_KEY,Values=$ADDRESS_TAG_VALUE" "Name=instance-id,Values=$INSTANCE_ID" \\
    --query 'Addresses[0].PublicIp') || return 1
  if [ -n "$held" ] && [ "$held" != None ]; then
    log "holds $held"
    return 0
  fi
  free=$(aws ec2 describe-addresses --region "$REGION" --output text \\
    --filters "Name=tag:$ADDRESS_TAG_KEY,Values=$ADDRESS_TAG_VALUE" "Name=tag:$SLOT_TAG_KEY,Values=$SLOTS" \\
    --query 'Addresses[?AssociationId==null].AllocationId') || return 1
  alloc=$(printf '%s\\n' $free | grep '^eipalloc-' | shuf -n 1 || true)
  if [ -z "$alloc" ]; then
    log "no free address yet"
    return 1
  fi
  aws ec2 associate-address --region "$REGION" --instance-id "$INSTANCE_ID" --allocation-id "$alloc" \\
    --no-allow-reassociation --output text >/dev/null || return 1
  log "claimed $alloc"
}

deadline=$((SECONDS + ADDRESS_WAIT_SECONDS))
until claim_address; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "no free address after $ADDRESS_WAIT_SECONDS s"
    exit 1
  fi
  sleep $((3 + RANDOM % 5))
done

signal 0
`;
}
