/**
 * A rank that joins the store and then dies: `node store_child.js <port> <rank>` says hello,
 * sets `child/<rank>`, prints "ready" and waits for ever, until the test kills it.
 */
import { StoreClient } from '../../src/distributed/store';

async function main(): Promise<void> {
  const [port, rank] = process.argv.slice(2).map(Number);
  const c = await StoreClient.connect({ host: '127.0.0.1', port });
  await c.hello(rank);
  await c.set(`child/${rank}`, `pid ${process.pid}`);
  process.stdout.write('ready\n');
  setInterval(() => {}, 1 << 30);
}
void main();
