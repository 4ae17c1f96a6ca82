/** Reading a Server-Sent Events response (examples/service) as a list of events, and starting the service. */
import { ChildProcess, spawn } from 'child_process';
import * as path from 'path';

export interface SseEvent {
  event: string;
  data: unknown;
}

/** Reads the `text/event-stream` at `url` (fetched with `init`) until the server ends it, or `until` says stop. */
export async function readSse(url: string, init: RequestInit = {}, until: (e: SseEvent) => boolean = () => false): Promise<{ status: number; events: SseEvent[] }> {
  const res = await fetch(url, init);
  if (!res.ok || !res.body) return { status: res.status, events: [{ event: 'response', data: await res.json() }] };
  const events: SseEvent[] = [];
  const decoder = new TextDecoder();
  let buffered = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const block = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const field = (name: string) => block.split('\n').find((l) => l.startsWith(`${name}: `))?.slice(name.length + 2);
      const e = { event: field('event') ?? 'message', data: JSON.parse(field('data') ?? 'null') };
      events.push(e);
      if (until(e)) return { status: res.status, events };
    }
  }
  return { status: res.status, events };
}

/** Starts examples/service/server.js on a free port of 127.0.0.1; resolves with its base URL once it listens. */
export function startService(env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; base: string; output: () => string }> {
  const server = path.join(__dirname, '..', '..', '..', 'examples', 'service', 'server.js');
  const child = spawn(process.execPath, [server], { env: { ...process.env, PORT: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) resolve({ child, base: m[1], output: () => out });
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`the service exited with ${code} before listening:\n${out}`)));
  });
}
