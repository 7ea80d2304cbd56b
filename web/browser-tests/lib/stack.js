// The real service for the browser tests: `backless-dev` (emulator + worker + web in one process)
// on free ports, with SQLite and file storage in a temporary folder.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** The dev binary: $BACKLESS_DEV_BIN, else $CARGO_TARGET_DIR (or target)/debug/backless-dev. */
export function devBinary() {
  if (process.env.BACKLESS_DEV_BIN) return process.env.BACKLESS_DEV_BIN;
  const target = process.env.CARGO_TARGET_DIR || path.join(REPO, 'target');
  return path.join(target, 'debug', 'backless-dev');
}

export async function waitFor(what, fn, timeoutMs = 20000, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Start `backless-dev`. `env` overrides BACKLESS_* settings.
 * Resolves to { url, emulator, dir, objects, stop(), pauseQueue(), resumeQueue(), storedFiles(id) }.
 */
export async function startStack(env = {}) {
  const bin = devBinary();
  if (!fs.existsSync(bin)) {
    throw new Error(`${bin} not found: build it with cargo build -p backless-dev`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'backless-browser-'));
  const objects = path.join(dir, 'objects');
  const settings = {
    BACKLESS_DATABASE_URL: `sqlite://${dir}/backless.db?mode=rwc`,
    BACKLESS_STORAGE_URL: `file://${objects}`,
    BACKLESS_WEB_ADDR: '127.0.0.1:0',
    BACKLESS_WORKER_ADDR: '127.0.0.1:0',
    BACKLESS_EMULATOR_PORT: '0',
    BACKLESS_MODELS_DIR: process.env.BACKLESS_MODELS_DIR || path.join(REPO, 'models'),
    BACKLESS_MODELS: 'u2netp',
    BACKLESS_SSE_KEEP_ALIVE: '1s',
    BACKLESS_SSE_POLL: '500ms',
    RUST_LOG: process.env.RUST_LOG || 'info',
    ...env,
  };
  const log = fs.openSync(path.join(dir, 'dev.log'), 'w');
  const child = spawn(bin, [], {
    cwd: dir,
    env: { ...process.env, ...settings },
    stdio: ['ignore', log, 'pipe'],
  });
  let stderr = '';
  const urls = new Promise((resolve, reject) => {
    child.stderr.on('data', (chunk) => {
      fs.writeSync(log, chunk);
      stderr += chunk.toString();
      const web = /open (http:\/\/[\d.:]+)/.exec(stderr);
      const worker = /\(worker ([\d.:]+), Cloud Tasks emulator (http:\/\/[\d.:]+)\)/.exec(stderr);
      if (web && worker) resolve({ url: web[1], worker: `http://${worker[1]}`, emulator: worker[2] });
    });
    child.once('exit', (code) => reject(new Error(`backless-dev exited (${code}); log in ${dir}/dev.log:\n${stderr.slice(-3000)}`)));
  });
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`backless-dev did not start; log:\n${stderr.slice(-3000)}`)), 60000));
  const { url, worker, emulator } = await Promise.race([urls, timeout]);
  // The worker answers 503 until its models are loaded; wait, so no test waits on queue backoff.
  await waitFor('the worker to load its models', async () => (await fetch(`${worker}/readyz`)).ok, 60000, 200);
  const queue = `${emulator}/v2/projects/${settings.BACKLESS_TASKS_PROJECT || 'dev'}/locations/` +
    `${settings.BACKLESS_TASKS_LOCATION || 'local'}/queues/${settings.BACKLESS_TASKS_QUEUE || 'backless'}`;
  const queueVerb = async (verb) => {
    const res = await fetch(`${queue}:${verb}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    if (!res.ok) throw new Error(`${verb} queue: HTTP ${res.status} ${await res.text()}`);
  };
  return {
    url,
    emulator,
    dir,
    objects,
    pauseQueue: () => queueVerb('pause'),
    resumeQueue: () => queueVerb('resume'),
    /** Stored object files whose path names the job. */
    storedFiles(jobId) {
      const out = [];
      const walk = (p) => {
        if (!fs.existsSync(p)) return;
        for (const e of fs.readdirSync(p, { withFileTypes: true })) {
          const full = path.join(p, e.name);
          if (e.isDirectory()) walk(full); else if (full.includes(jobId)) out.push(full);
        }
      };
      walk(objects);
      return out;
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 15000);
        await exited;
        clearTimeout(t);
      }
      if (!process.env.KEEP_TEST_DATA) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP proxy in front of web that can cut every connection and refuse new ones for a while: a
 * network drop as the browser sees it.
 */
export async function startProxy(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  let up = true;
  const server = net.createServer((client) => {
    if (!up) { client.destroy(); return; }
    const upstream = net.connect(Number(port), hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => { client.destroy(); upstream.destroy(); });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    drop() {
      up = false;
      for (const s of sockets) s.destroy();
    },
    restore() { up = true; },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}
