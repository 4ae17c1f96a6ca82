// The README's training jobs: run with `node examples/jobs.js` after `npm run build` (or `npm install peftkit`).
const fs = require('fs');
const { JobManager, writeRandomModel } = require('peftkit');

async function main() {
  writeRandomModel('/tmp/jobs-demo/model', { hiddenSize: 64, numLayers: 2, numHeads: 4, seed: 1 }); // or any HF model folder
  fs.writeFileSync('/tmp/jobs-demo/a.jsonl', Array.from({ length: 32 }, (_, i) => JSON.stringify({ text: `row ${i}` })).join('\n'));

  // With stateDir the job list is kept on disk; resume: true continues what a previous process left.
  const jobs = new JobManager({ concurrency: 2, stateDir: '/tmp/jobs-demo/state', resume: true });
  jobs.on('checkpoint', (e) => console.log(e.id, 'checkpoint at step', e.step));
  jobs.on('failed', (e) => console.log(e.id, 'failed:', e.error.code, e.error.message));

  const base = { model: '/tmp/jobs-demo/model', data: '/tmp/jobs-demo/a.jsonl', steps: 200, saveEvery: 50 };
  // Ids are kept in stateDir: a second run of this script finds its jobs there instead of submitting them again.
  const a = jobs.job('customer-a') ?? jobs.submit({ ...base, out: '/tmp/jobs-demo/a', seed: 1 }, { id: 'customer-a' });
  const b = jobs.job('customer-b') ?? jobs.submit({ ...base, out: '/tmp/jobs-demo/b', method: 'dora' }, { id: 'customer-b' });
  const ctrl = new AbortController();
  const c = jobs.submit({ ...base, out: `/tmp/jobs-demo/c-${Date.now()}` }, { signal: ctrl.signal });  // id: a random UUID
  ctrl.abort();                                   // c was queued: cancelled at once
  // Ctrl-C: the running jobs write a checkpoint and stop; the next run of this script resumes them.
  process.once('SIGINT', () => jobs.shutdown().then(() => process.exit(130)));

  console.log('a:', (await a).finalLoss, 'b:', (await b).finalLoss, 'c:', c.status);  // a Job is awaitable for its TrainResult
  console.log(jobs.status().map((j) => `${j.id}: ${j.status}`));
  await jobs.shutdown();
}
main();
