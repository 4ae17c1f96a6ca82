/**
 * The service of bench/service.ts: examples/service/server.js with the event loop's delay
 * sampled (perf_hooks monitorEventLoopDelay at 1 ms resolution: each sample is the
 * time between two 1 ms timer ticks, so an idle loop reads about 1 ms). On SIGUSR2 it prints the delay
 * since the last one (`LOOP {json}`, milliseconds) and starts over.
 */
import * as path from 'path';
import { monitorEventLoopDelay } from 'perf_hooks';

const h = monitorEventLoopDelay({ resolution: 1 });
h.enable();
process.on('SIGUSR2', () => {
  const ms = (ns: number) => ns / 1e6;
  console.log(`LOOP ${JSON.stringify({ p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max), samples: h.count })}`);
  h.reset();
});
require(path.join(__dirname, '..', '..', 'examples', 'service', 'server.js'));
