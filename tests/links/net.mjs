// The link rig's network: one device namespace and one namespace per viewer, joined by veth pairs.
//
//   <prefix>-dev (device)                          <prefix>-vN (viewer N)
//   lo 127.0.0.1                                   lo 127.0.0.1
//   <prefix>dN 10.77.N.1/24  ==== veth pair ====   <prefix>vN 10.77.N.2/24
//     egress (device → viewer): tbf cap              INPUT: iptables statistic random DROP (UDP only)
//
// Nothing here can reach any other address: the device namespace has no default route; a viewer
// namespace has a default route via its veth (Chromium without a media permission only offers the
// address of its default-route interface as an ICE candidate — a real viewer on a LAN has one) and an
// iptables OUTPUT filter that drops everything that is not loopback or its own 10.77.N.0/24 link.
// IP forwarding is off in new namespaces, so nothing crosses the device namespace either.
import { execFileSync } from 'node:child_process';
import { addNetns } from '../lib/netns.mjs';

const run = (args, { quiet = false } = {}) => {
  try {
    return execFileSync(args[0], args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  } catch (e) {
    if (quiet) return '';
    throw new Error(`${args.join(' ')}: ${e.stderr?.toString().trim() || e.message}`);
  }
};

// tbf parameters for a cap of `kbit` kbit/s. burst = 3000 bytes (two full-size 1500-byte packets, or
// more when the kernel timer needs it: rate/250 bytes at HZ 250), so the bucket never lets more than
// two packets out at line rate: a 720p keyframe (20–80 kB) leaves at the cap, it is not let through
// in one go. latency 300 ms: tbf derives its queue limit (rate × 300 ms + burst) from it; packets
// that would wait longer are dropped, like a small home router's queue.
export function tbfArgs(kbit, latencyMs = 300) {
  const burst = Math.max(3000, Math.ceil((kbit * 1000) / 8 / 250));
  return ['rate', `${kbit}kbit`, 'burst', String(burst), 'latency', `${latencyMs}ms`];
}

export class Net {
  constructor(prefix, viewers) {
    if (!/^[a-z0-9]{2,8}$/.test(prefix)) throw new Error(`bad namespace prefix ${prefix}`);
    this.prefix = prefix;
    this.viewers = viewers;
    this.dev = `${prefix}-dev`;
    this.created = [];
    this.caps = {};
  }

  viewerNs(i) { return `${this.prefix}-v${i}`; }
  devIf(i) { return `${this.prefix}d${i}`; }
  viewerIf(i) { return `${this.prefix}v${i}`; }
  devAddr(i) { return `10.77.${i}.1`; }
  viewerAddr(i) { return `10.77.${i}.2`; }

  create() {
    const ns = (name) => { addNetns(name); this.created.push(name); };   // lo up, IPv6 off (tests/lib/netns.mjs)
    ns(this.dev);
    // the device's own egress filter: loopback and the test links only
    this.outputFilter(this.dev, '10.77.0.0/16');
    for (let i = 1; i <= this.viewers; i++) {
      const v = this.viewerNs(i);
      ns(v);
      run(['ip', 'link', 'add', this.devIf(i), 'type', 'veth', 'peer', 'name', this.viewerIf(i)]);
      run(['ip', 'link', 'set', this.devIf(i), 'netns', this.dev]);
      run(['ip', 'link', 'set', this.viewerIf(i), 'netns', v]);
      run(['ip', '-n', this.dev, 'addr', 'add', `${this.devAddr(i)}/24`, 'dev', this.devIf(i)]);
      run(['ip', '-n', v, 'addr', 'add', `${this.viewerAddr(i)}/24`, 'dev', this.viewerIf(i)]);
      run(['ip', '-n', this.dev, 'link', 'set', this.devIf(i), 'mtu', '1500', 'up']);
      run(['ip', '-n', v, 'link', 'set', this.viewerIf(i), 'mtu', '1500', 'up']);
      run(['ip', '-n', v, 'route', 'add', 'default', 'via', this.devAddr(i)]);
      this.outputFilter(v, `10.77.${i}.0/24`);
    }
    return this;
  }

  outputFilter(ns, allowed) {
    const ipt = (...a) => run(['ip', 'netns', 'exec', ns, 'iptables', '-w', ...a]);
    ipt('-A', 'OUTPUT', '-o', 'lo', '-j', 'ACCEPT');
    ipt('-A', 'OUTPUT', '-d', allowed, '-j', 'ACCEPT');
    ipt('-A', 'OUTPUT', '-j', 'DROP');
  }

  // Caps device → viewer i at `kbit` (null: uncapped). First call adds the qdisc, later ones
  // `tc qdisc change` it in place (the step test), so the queue is not flushed by the change.
  setCap(i, kbit) {
    const dev = ['ip', 'netns', 'exec', this.dev, 'tc', 'qdisc'];
    const had = this.caps[i] != null;
    if (kbit == null) {
      if (had) run([...dev, 'del', 'dev', this.devIf(i), 'root']);
    } else {
      run([...dev, had ? 'change' : 'add', 'dev', this.devIf(i), 'root', 'tbf', ...tbfArgs(kbit)]);
    }
    this.caps[i] = kbit;
  }

  // Random loss of `p` (0..1) on UDP arriving at viewer i (media and RTCP from the device; TCP
  // signalling and the page's HTTP are not touched).
  setLoss(i, p) {
    run(['ip', 'netns', 'exec', this.viewerNs(i), 'iptables', '-w', '-A', 'INPUT', '-p', 'udp',
      '-m', 'statistic', '--mode', 'random', '--probability', String(p), '-j', 'DROP']);
  }

  // Counters of the bottleneck (tbf: bytes/packets sent, dropped, overlimits) and of the loss rule.
  counters(i) {
    const out = {};
    const q = run(['ip', 'netns', 'exec', this.dev, 'tc', '-s', 'qdisc', 'show', 'dev', this.devIf(i)], { quiet: true });
    const m = /Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)/.exec(q);
    if (m) Object.assign(out, { qdisc: q.split('\n')[0].trim(), sentBytes: +m[1], sentPackets: +m[2], dropped: +m[3], overlimits: +m[4] });
    const l = run(['ip', 'netns', 'exec', this.viewerNs(i), 'iptables', '-w', '-L', 'INPUT', '-v', '-n', '-x'], { quiet: true });
    const d = /^\s*(\d+)\s+(\d+)\s+DROP\s+.*statistic/m.exec(l);
    if (d) out.lossDroppedPackets = +d[1];
    return out;
  }

  destroy() {
    for (const name of this.created.reverse()) run(['ip', 'netns', 'del', name], { quiet: true });
    this.created = [];
  }
}

// Namespaces left behind by an earlier run with this prefix (a crash, SIGKILL).
export function removeStale(prefix) {
  const list = run(['ip', 'netns', 'list'], { quiet: true }).split('\n').map((l) => l.split(' ')[0]).filter(Boolean);
  for (const name of list) if (name.startsWith(`${prefix}-`)) run(['ip', 'netns', 'del', name], { quiet: true });
}
