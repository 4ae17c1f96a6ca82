import test from 'ava';
import { spawn } from 'child_process';
import * as path from 'path';
import { PeftkitError } from '../src/errors';
import { StoreClient, StoreServer } from '../src/distributed/store';

async function withStore(fn: (server: StoreServer, client: () => Promise<StoreClient>) => Promise<void>): Promise<void> {
  const server = new StoreServer();
  const port = await server.listen(0, '127.0.0.1');
  const clients: StoreClient[] = [];
  try {
    await fn(server, async () => {
      const c = await StoreClient.connect({ host: '127.0.0.1', port });
      clients.push(c);
      return c;
    });
  } finally {
    for (const c of clients) c.close();
    await server.close();
  }
}

test('set / get / add across several clients; get waits for a key set later', async (t) => {
  await withStore(async (_s, client) => {
    const [a, b, c] = await Promise.all([client(), client(), client()]);
    const late = b.get('addr/2', 5000); // asked before it exists
    await a.set('addr/0', Buffer.from([0, 1, 2, 255]));
    t.deepEqual([...(await c.get('addr/0', 1000))], [0, 1, 2, 255]);
    await c.set('addr/2', 'two');
    t.is((await late).toString(), 'two');
    const adds = await Promise.all([a.add('n', 1), b.add('n', 1), c.add('n', 5)]);
    t.is(Math.max(...adds), 7); // atomic: whatever the order, the last add sees the others
    t.is(await a.add('n', 0), 7);
    await a.set('empty', '');
    t.is((await b.get('empty', 10)).length, 0);
  });
});

test('wait resolves when every key exists and times out naming the missing ones', async (t) => {
  await withStore(async (_s, client) => {
    const [a, b] = await Promise.all([client(), client()]);
    const w = a.wait(['k1', 'k2'], 5000);
    await b.set('k1', 'x');
    await b.set('k2', 'y');
    await t.notThrowsAsync(w);
    const t0 = Date.now();
    const e = await t.throwsAsync(a.wait(['k1', 'k3'], 200), { instanceOf: PeftkitError });
    t.is(e!.code, 'E_DIST');
    t.regex(e!.message, /'k3' not set within 200 ms/);
    t.notRegex(e!.message, /'k1'/);
    t.true(Date.now() - t0 >= 190 && Date.now() - t0 < 3000);
    const g = await t.throwsAsync(b.get('never', 100), { instanceOf: PeftkitError });
    t.regex(g!.message, /key 'never' was not set within 100 ms/);
    // the connection still serves after a timeout
    t.is((await a.get('k2', 10)).toString(), 'y');
  });
});

test('a rank whose process dies is reported lost; one that says bye is not', async (t) => {
  await withStore(async (server, client) => {
    const child = spawn(process.execPath, [path.join(__dirname, 'helpers', 'store_child.js'), String(server.port), '1'], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      child.once('exit', (code) => reject(new Error(`child exited ${code}`)));
    });
    const a = await client();
    await a.hello(0);
    const b = await client();
    await b.hello(2);
    t.is((await a.get('child/1', 100)).toString(), `pid ${child.pid}`);
    t.deepEqual(await a.rankStates(), { connected: [0, 1, 2], left: [], lost: [], failed: {} });
    await a.failed('E_DATA: a bad row');
    await b.bye();
    b.close();
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const deadline = Date.now() + 5000;
    while (server.rankStates().lost.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    t.deepEqual(await a.rankStates(), { connected: [0], left: [2], lost: [1], failed: { 0: 'E_DATA: a bad row' } });
    const anon = await client();
    await t.throwsAsync(anon.failed('x'), { message: /refused 'F': op 'F' before hello/ });
  });
});

test('a client finds no store: E_DIST naming the address; a store that goes away fails pending requests', async (t) => {
  const probe = new StoreServer();
  const port = await probe.listen(0, '127.0.0.1');
  await probe.close(); // the port is now (most likely) free
  const e = await t.throwsAsync(StoreClient.connect({ host: '127.0.0.1', port, connectTimeoutMs: 300 }), { instanceOf: PeftkitError });
  t.is(e!.code, 'E_DIST');
  t.regex(e!.message, new RegExp(`no rendezvous store answers at 127\\.0\\.0\\.1:${port} \\(MASTER_ADDR:MASTER_PORT\\)`));

  const server = new StoreServer();
  const p2 = await server.listen(0, '127.0.0.1');
  const c = await StoreClient.connect({ host: '127.0.0.1', port: p2 });
  const pending = c.get('never', 60000);
  await new Promise((r) => setTimeout(r, 50));
  await server.close();
  const e2 = await t.throwsAsync(pending, { instanceOf: PeftkitError });
  t.regex(e2!.message, /closed the connection \(rank 0 ended or died\)/);
  c.close();
});

test('the server refuses a malformed frame and stays up for others', async (t) => {
  await withStore(async (server, client) => {
    const net = await import('net');
    const raw = net.connect(server.port, '127.0.0.1');
    await new Promise((r) => raw.once('connect', r));
    const got = new Promise<Buffer>((r) => raw.once('data', r));
    raw.write(Buffer.from([3, 0, 0, 0, 'S'.charCodeAt(0), 9, 0])); // a field length that runs past the frame
    const reply = await got;
    t.is(reply[4], 2);
    t.regex(reply.subarray(9).toString(), /bad request: truncated field length|field runs past/);
    raw.destroy();
    const a = await client();
    await a.set('ok', '1');
    t.is((await a.get('ok', 10)).toString(), '1');
  });
});
