// A fine-tuning and generation service on plain node:http: run `npm run build`, then
// `node examples/service/server.js` (see README.md beside it for the routes and settings).
// Training runs in JobManager workers and generation in AsyncModel workers, so this thread only
// parses requests and writes responses: /health answers while a job trains on every core.
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');
const { pipeline } = require('stream');
const { JobManager, loadModel, PeftkitError } = require('peftkit');

const PORT = Number(process.env.PORT ?? 8080);
const HOST = process.env.HOST ?? '127.0.0.1';
const DIR = path.resolve(process.env.PEFTKIT_SERVICE_DIR ?? 'peftkit-service');
/** Ended events: the SSE stream of a job closes after one of these. */
const ENDED = ['done', 'failed', 'cancelled', 'interrupted'];
/** The largest request body accepted (train options and prompts are small). */
const MAX_BODY = 1 << 20;

// The jobs of the previous run of this service (stopped by SIGTERM, or killed) resume from their checkpoints.
const jobs = new JobManager({ stateDir: path.join(DIR, 'state'), resume: true, ...(process.env.CONCURRENCY ? { concurrency: Number(process.env.CONCURRENCY) } : {}) });
/** AsyncModels by model folder: each is loaded once, in its own worker, and kept. */
const models = new Map();

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) reject(new HttpError(413, 'E_ARG', `request body over ${MAX_BODY} bytes`));
      else chunks.push(c);
    });
    req.on('end', () => {
      try {
        const value = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
        if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('not an object');
        resolve(value);
      } catch (e) {
        reject(new HttpError(400, 'E_ARG', `request body: expected a JSON object (${e.message})`));
      }
    });
    req.on('error', reject);
  });
}

/** Starts a Server-Sent Events response; returns a function that sends one event. */
function openSse(res) {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  return (event, data) => res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

/** A job event as JSON: an error keeps its code and message. */
const plain = (e) => (e.error ? { ...e, error: { code: e.error.code, message: e.error.message } } : e);

function jobOf(id) {
  const job = jobs.job(id);
  if (!job) throw new HttpError(404, 'E_ARG', `no job '${id}'`);
  return job;
}

/** The adapter's files: the regular files at the top of the job's output folder (not its checkpoints). */
function adapterFiles(job) {
  const dir = job.info().options.out;
  return fs.readdirSync(dir, { withFileTypes: true }).filter((d) => d.isFile() && !d.name.startsWith('.')).map((d) => d.name).sort();
}

async function postJob(req, res) {
  const options = await readJson(req);
  // The service decides where jobs write: a client names no server paths to write to.
  for (const field of ['out', 'resume', 'pagedDir']) if (field in options) throw new HttpError(400, 'E_ARG', `${field}: set by the service, not the request`);
  const id = typeof options.id === 'string' ? options.id : undefined;
  delete options.id;
  // A leading letter, digit or _: '.' and '..' would name the jobs folder or the service's own.
  if (id !== undefined && !/^\w[\w.-]{0,63}$/.test(id)) throw new HttpError(400, 'E_ARG', 'id: expected 1-64 letters, digits, _ . - starting with a letter, digit or _');
  const job = jobs.submit({ ...options, out: path.join(DIR, 'jobs', id ?? `job-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`) }, { id });
  sendJson(res, 201, { id: job.id, status: job.status });
}

function streamJob(req, res, job) {
  const send = openSse(res);
  send('status', job.info());
  if (ENDED.includes(job.status)) return res.end();
  const types = ['started', 'step', 'eval', 'checkpoint', 'warning', ...ENDED];
  const listeners = types.map((type) => {
    const listener = (e) => {
      send(type, plain(e));
      if (ENDED.includes(type)) close();
    };
    job.on(type, listener);
    return [type, listener];
  });
  const close = () => {
    for (const [type, listener] of listeners) job.off(type, listener);
    res.end();
  };
  req.on('close', close);
}

function getAdapter(res, job, file) {
  if (job.status !== 'done') throw new HttpError(409, 'E_ARG', `job '${job.id}' is ${job.status}: its adapter is ready once it is done`);
  const files = adapterFiles(job);
  if (file === undefined) {
    const dir = job.info().options.out;
    return sendJson(res, 200, { id: job.id, files: files.map((name) => ({ name, bytes: fs.statSync(path.join(dir, name)).size, url: `/jobs/${job.id}/adapter/${name}` })) });
  }
  if (!files.includes(file)) throw new HttpError(404, 'E_ARG', `job '${job.id}' has no adapter file '${file}'`);
  const full = path.join(job.info().options.out, file);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': fs.statSync(full).size });
  // A read error (the file removed meanwhile) ends this response, not the service.
  pipeline(fs.createReadStream(full), res, (e) => e && res.destroy(e));
}

function modelFor(dir) {
  const key = path.resolve(dir);
  if (!models.has(key)) {
    const loading = loadModel(key);
    loading.catch(() => models.delete(key)); // a failed load is tried again by the next request
    models.set(key, loading);
  }
  return models.get(key);
}

async function postGenerate(req, res) {
  const body = await readJson(req);
  const { prompt, adapter: name, model: modelDir, ...options } = body;
  // An adapter is named by the id of the job that trained it; its base is that job's model unless given.
  const job = name == null ? null : jobOf(String(name));
  if (job && job.status !== 'done') throw new HttpError(409, 'E_ARG', `adapter '${job.id}': its job is ${job.status}`);
  const base = modelDir ?? job?.info().options.model;
  if (typeof base !== 'string') throw new HttpError(400, 'E_ARG', 'model: expected a model folder (or an adapter whose job names one)');
  if (typeof prompt !== 'string' && !Array.isArray(prompt)) throw new HttpError(400, 'E_ARG', 'prompt: expected a string or an array of token ids');
  const ctrl = new AbortController();
  res.on('close', () => ctrl.abort()); // the client left (also while the model loads): stop generating for it
  const model = await modelFor(base);
  const pieces = model.stream(prompt, { ...options, adapter: job ? job.info().options.out : null, signal: ctrl.signal });
  let send = null;
  const ids = [];
  let text = '';
  try {
    for await (const piece of pieces) {
      send ??= openSse(res);
      ids.push(piece.id);
      text += piece.text;
      send('token', piece);
    }
    (send ??= openSse(res))('done', { ids, text });
    res.end();
  } catch (e) {
    if (ctrl.signal.aborted) return;
    if (!send) throw e; // nothing sent yet: an ordinary error response
    send('error', { code: e.code ?? 'E_INTERNAL', message: e.message });
    res.end();
  }
}

async function route(req, res) {
  const url = new URL(req.url, 'http://x');
  const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
  const [top, id, sub, file] = parts;
  const m = req.method;
  if (m === 'GET' && url.pathname === '/health') {
    const all = jobs.status();
    return sendJson(res, 200, { ok: true, running: all.filter((j) => j.status === 'running').length, queued: all.filter((j) => j.status === 'queued').length });
  }
  if (top === 'jobs' && parts.length === 1 && m === 'POST') return postJob(req, res);
  if (top === 'jobs' && parts.length === 1 && m === 'GET') return sendJson(res, 200, jobs.status());
  if (top === 'jobs' && parts.length === 2 && m === 'GET') return sendJson(res, 200, jobOf(id).info());
  if (top === 'jobs' && parts.length === 2 && m === 'DELETE') {
    const job = jobOf(id);
    job.cancel();
    return sendJson(res, 202, { id: job.id, status: job.status });
  }
  if (top === 'jobs' && sub === 'events' && parts.length === 3 && m === 'GET') return streamJob(req, res, jobOf(id));
  if (top === 'jobs' && sub === 'adapter' && parts.length <= 4 && m === 'GET') return getAdapter(res, jobOf(id), file);
  if (top === 'generate' && parts.length === 1 && m === 'POST') return postGenerate(req, res);
  throw new HttpError(404, 'E_ARG', `no route ${m} ${url.pathname}`);
}

const server = http.createServer((req, res) => {
  route(req, res).catch((e) => {
    const status = e instanceof HttpError ? e.status : e instanceof PeftkitError ? (e.code === 'E_MISSING' || e.code === 'E_IO' ? 404 : 400) : 500;
    if (res.headersSent) return res.end();
    sendJson(res, status, { error: { code: e.code ?? 'E_INTERNAL', message: e.message } });
  });
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  console.log(`peftkit service listening on http://${HOST}:${port} (state in ${DIR})`);
});

// A graceful stop: running jobs write a checkpoint and are resumed by the next start.
let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: checkpointing running jobs`);
  server.close();
  server.closeAllConnections?.();
  await jobs.shutdown();
  await Promise.all([...models.values()].map((p) => p.then((m) => m.dispose(), () => {})));
  process.exit(0);
}
process.on('SIGTERM', () => void stop('SIGTERM'));
process.on('SIGINT', () => void stop('SIGINT'));
