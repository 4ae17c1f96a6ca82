// The README's non-blocking inference: run with `node examples/streaming.js` after `npm install`.
// The model lives in a worker thread; this thread's timers keep firing while it loads and generates.
const os = require('os');
const path = require('path');
const { loadModel, PeftkitError, writeRandomModel } = require('peftkit');

async function main() {
  const modelDir = path.join(os.tmpdir(), 'peftkit-streaming', 'tiny-llama');
  // A random-init HF-layout checkpoint so the example needs no download: point at any
  // Llama / Mistral / Qwen2 folder instead.
  writeRandomModel(modelDir, { hiddenSize: 256, numLayers: 4, numHeads: 4, seed: 1 });

  let ticks = 0;
  const ticker = setInterval(() => ticks++, 10); // stands in for a server's other work

  const model = await loadModel(modelDir); // loading happens in the worker
  try {
    // The whole result at once:
    const { ids } = await model.generate('Hello', { maxNewTokens: 16, temperature: 0 });
    console.log(`generate: ${ids.length} tokens; the 10 ms timer fired ${ticks} times meanwhile`);

    // Token by token, stopped after 300 ms by an AbortController (e.g. a client that went away).
    const ctrl = new AbortController();
    setTimeout(() => ctrl.abort(), 300);
    let n = 0;
    try {
      for await (const piece of model.stream('Once upon a time', { maxNewTokens: 1000, temperature: 0.8, signal: ctrl.signal })) {
        n++; // piece.id: the token; piece.text: the text it adds (send it to the client)
      }
    } catch (e) {
      if (!(e instanceof PeftkitError && e.code === 'E_ABORTED')) throw e;
      console.log(`stream: aborted after ${n} tokens`);
    }
  } finally {
    await model.dispose(); // ends the worker and frees the model
    clearInterval(ticker);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
