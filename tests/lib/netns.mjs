// Processes in network namespaces the test made (`ip netns`), for the multi-namespace stages
// (tests/remote, tests/whip): make a namespace (addNetns, also used by tests/links), run a command,
// start a long-lived process with its log in the artifacts and wait for its ready line, wait for a
// line in a log, and a Chromium that runs inside one namespace (driven by playwright through a pipe,
// so the test itself needs no network).
import { spawn, execFileSync } from 'node:child_process';
import { chmodSync, createWriteStream, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// `run(['ip', …])`: stdout, or throws with stderr (`quiet`: '' instead).
export const run = (args, { quiet = false, input } = {}) => {
  try {
    return execFileSync(args[0], args.slice(1), { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'], input }).toString();
  } catch (e) {
    if (quiet) return '';
    throw new Error(`${args.join(' ')}: ${e.stderr?.toString().trim() || e.message}`);
  }
};
export const nsx = (ns, ...a) => run(['ip', 'netns', 'exec', ns, ...a]);

// A new network namespace with lo up and IPv6 off. The rigs are IPv4, and a veth's IPv6 link-local
// address that finishes DAD a second or two after the link comes up is an address change to Chromium,
// which fails the requests in flight with net::ERR_NETWORK_CHANGED (the link rig lost a page's app.js
// to it). Off before any link exists, so no IPv6 address ever appears.
export function addNetns(name) {
  run(['ip', 'netns', 'add', name]);
  for (const k of ['all', 'default']) nsx(name, 'sysctl', '-q', '-w', `net.ipv6.conf.${k}.disable_ipv6=1`);
  run(['ip', '-n', name, 'link', 'set', 'lo', 'up']);
}

// `artifacts`: where logs go; `tmp`: scratch (the Chromium wrappers); `cleanups`: an array the
// caller empties at the end (stop functions are pushed onto it); `env`: extra environment of
// every started process. Children still alive when the test process exits are SIGKILLed.
export function netns({ artifacts, tmp, cleanups, env = {} }) {
  const children = new Set();
  process.on('exit', () => { for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } } });

  // Starts `cmd args` in `ns`; `h.ready` resolves when `readyRe` matches its output (stdout + stderr,
  // also written to <artifacts>/<name>.log; the last 2–4 MB kept in `h.text`). `h.stop(signal)`
  // stops it (SIGKILL after 5 s).
  function startInNs(ns, name, cmd, args, readyRe, { timeoutMs = 30000, extraEnv = {} } = {}) {
    const logPath = join(artifacts, `${name}.log`);
    const logf = createWriteStream(logPath, { flags: 'a' });
    const proc = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env, ...extraEnv } });
    children.add(proc);
    const h = { proc, logPath, text: '' };
    const exited = new Promise((r) => proc.on('exit', (code, signal) => { children.delete(proc); r({ code, signal }); }));
    const ready = new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`${name}: not ready after ${timeoutMs} ms; log ${logPath}`)), timeoutMs);
      const onData = (c) => {
        logf.write(c);
        h.text += c.toString();
        if (h.text.length > 4e6) h.text = h.text.slice(-2e6);
        if (readyRe.test(h.text)) { clearTimeout(timer); res(); }
      };
      proc.stdout.on('data', onData); proc.stderr.on('data', onData);
      exited.then((e) => { clearTimeout(timer); rej(new Error(`${name} exited ${JSON.stringify(e)} before ready; log ${logPath}\n${h.text.slice(-2000)}`)); });
    });
    h.exited = exited;
    h.stop = async (signal = 'SIGTERM') => {
      if (!children.has(proc)) return;
      proc.kill(signal);
      if (!(await Promise.race([exited, sleep(5000).then(() => null)]))) { proc.kill('SIGKILL'); await exited; }
    };
    h.ready = ready;
    cleanups.push(() => h.stop());
    return h;
  }

  // Waits until `re` matches the log after position `from`; resolves the time it took (ms).
  async function logWait(h, re, from, timeoutMs, what) {
    const t0 = Date.now();
    for (;;) {
      if (re.test(h.text.slice(from))) return Date.now() - t0;
      if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await sleep(50);
    }
  }

  // An executable that runs Chromium inside `ns` (playwright's executablePath). Playwright passes
  // its own --disable-features; the wrapper merges all of them into one flag (Chromium reads only
  // the last).
  function chromiumWrapper(ns, chromium = process.env.CHROMIUM || '/usr/bin/chromium') {
    const path = join(tmp, `chromium-${ns}.sh`);
    writeFileSync(path, `#!/bin/bash
feats=(); args=()
for a in "$@"; do case $a in --disable-features=*) feats+=("\${a#--disable-features=}") ;; *) args+=("$a") ;; esac; done
IFS=,
exec ip netns exec ${ns} ${chromium} "\${args[@]}" \${feats:+"--disable-features=\${feats[*]}"}
`);
    chmodSync(path, 0o755);
    return path;
  }

  return { startInNs, logWait, chromiumWrapper, children };
}
