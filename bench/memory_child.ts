/**
 * One training run for bench/memory.ts and test/memory.test.ts, alone in its process so that its
 * peak RSS is the run's: estimates it, runs train() (its worker thread, as an application would),
 * and prints {"estimate": {"total", "parts"}, "maxRSS": bytes, "seconds"}.
 *   node memory_child.js '<TrainOptions as JSON>'
 */
import { estimateMemory, train } from '../src';

async function main(): Promise<void> {
  const o = JSON.parse(process.argv[2]);
  const e = estimateMemory(o);
  const t0 = Date.now();
  await train(o);
  const estimate = { total: e.total, parts: Object.fromEntries(e.parts.map((p) => [p.part, p.bytes])) };
  console.log(JSON.stringify({ estimate, maxRSS: process.resourceUsage().maxRSS * 1024, seconds: (Date.now() - t0) / 1000 }));
}

main().catch((e: Error & { code?: string }) => {
  console.log(JSON.stringify({ error: e.code ?? 'E_INTERNAL', message: e.message }));
  process.exitCode = 1;
});
