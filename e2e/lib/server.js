// `blindsight serve` for a test or a script: a free port, its own data directory, the page from
// web/, and a `ready` promise that settles once /api/health answers (the plan takes a while).

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts `bin serve` on a free port with `dataDir`; `stop()` kills it and waits. */
export async function startServer(bin, dataDir, extraArgs = [], { readySeconds = 300 } = {}) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const web = new URL('../../web', import.meta.url).pathname;
  const child = spawn(bin, ['serve', '--addr', `127.0.0.1:${port}`, '--data-dir', dataDir, '--web', web, ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const server = {
    url,
    child,
    log: () => log,
    ready: (async () => {
      for (let i = 0; i < readySeconds * 4; i++) {
        if (child.exitCode !== null || child.signalCode) throw new Error(`the server exited:\n${log}`);
        try {
          const r = await fetch(`${url}/api/health`);
          if (r.ok) return;
        } catch {
          // not listening yet
        }
        await new Promise((r) => setTimeout(r, 250));
      }
      throw new Error(`the server did not answer in ${readySeconds} s:\n${log}`);
    })(),
    async stop(signal = 'SIGKILL') {
      if (child.exitCode === null && !child.signalCode) child.kill(signal);
      await exited;
    },
  };
  server.ready.catch(() => {}); // reported where awaited
  return server;
}
