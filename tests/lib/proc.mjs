// CPU time of a process and of each of its threads, from /proc (for the benchmarks: bench/bench.mjs
// and the link rig, tests/links). Threads are keyed "name#tid" (peercam names its media threads:
// capture-video, encode-video, audio; the tokio runtime's are tokio-rt-worker).
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

export const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

// utime + stime of one /proc/<pid>[/task/<tid>]/stat, and its command name.
export function statTicks(path) {
  const s = readFileSync(path, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return { comm: s.slice(s.indexOf('(') + 1, s.lastIndexOf(')')), ticks: Number(f[11]) + Number(f[12]) };
}

export function threadTicks(pid) {
  const out = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try { const { comm, ticks } = statTicks(`/proc/${pid}/task/${tid}/stat`); out[`${comm}#${tid}`] = ticks; } catch { /* gone */ }
  }
  return out;
}

// A snapshot to measure from: cpuSince(snap) gives % of one core for the process and per thread
// name (threads of one name summed, e.g. all tokio workers) over the time since.
export function cpuSnapshot(pid) {
  return { pid, t: process.hrtime.bigint(), total: statTicks(`/proc/${pid}/stat`).ticks, threads: threadTicks(pid) };
}

export function cpuSince(snap) {
  const wall = Number(process.hrtime.bigint() - snap.t) / 1e9;
  const pct = (ticks) => Math.round((1000 * ticks) / CLK_TCK / wall) / 10;
  const now = threadTicks(snap.pid);
  const byName = {};
  for (const [k, v] of Object.entries(now)) {
    const name = k.replace(/#\d+$/, '');
    byName[name] = (byName[name] ?? 0) + v - (snap.threads[k] ?? 0);
  }
  const threads = Object.fromEntries(Object.entries(byName).filter(([, d]) => d > 0).map(([k, d]) => [k, pct(d)]));
  return { cpuPct: pct(statTicks(`/proc/${snap.pid}/stat`).ticks - snap.total), seconds: Math.round(wall * 10) / 10, threads };
}
