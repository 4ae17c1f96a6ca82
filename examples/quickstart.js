// The README's quick start: run with `node examples/quickstart.js` after `npm install`.
const os = require('os');
const path = require('path');
const { train, loadModelSync, mergeAdapterSync, writeRandomModel } = require('peftkit');

async function main() {
  const work = path.join(os.tmpdir(), 'peftkit-quickstart');
  const modelDir = path.join(work, 'tiny-llama');
  // A real HF-layout checkpoint (random init) so the example needs no download; point
  // `model` at any Llama / Mistral / Qwen2 folder instead.
  writeRandomModel(modelDir, { hiddenSize: 64, intermediateSize: 176, numLayers: 2, numHeads: 4, numKvHeads: 2, seed: 1 });

  const run = train({
    model: modelDir,
    data: path.join(__dirname, '..', 'demo', 'data.jsonl'),
    out: path.join(work, 'adapter'),
    steps: 150, r: 16, alpha: 32, dropout: 0, targets: 'all-linear',
    lr: 1e-2, batchSize: 8, schedule: 'cosine', warmupSteps: 10,
  });
  run.on('step', (e) => { if (e.step % 50 === 0) console.log(`step ${e.step}: loss ${e.loss.toFixed(3)}`); });
  const result = await run; // the work runs in a worker thread; this thread stays free
  console.log(`adapter: ${result.adapterDir}, final loss ${result.finalLoss.toFixed(3)}`);

  const model = loadModelSync(modelDir);
  const { text } = model.generate('What does Ada keep?', { adapter: result.adapterDir, temperature: 0, maxNewTokens: 24 });
  console.log(`generated: ${JSON.stringify(text)}`);
  model.dispose();

  mergeAdapterSync({ model: modelDir, adapter: result.adapterDir, out: path.join(work, 'merged') });
}

main().catch((e) => { console.error(e); process.exit(1); });
