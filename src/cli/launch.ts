/**
 * `peftkit train --nproc-per-node N`: starts the N ranks of a data-parallel run on this machine
 * as child processes running the same command, torchrun's way (RANK, LOCAL_RANK, WORLD_SIZE,
 * MASTER_ADDR, MASTER_PORT in their environment), with the cores divided between them
 * (PEFTKIT_NUM_THREADS): N ranks each on all cores would oversubscribe the machine N times.
 * With --device cuda each rank sees one GPU (CUDA_VISIBLE_DEVICES). Rank 0's output is this
 * command's; the others' stderr is shown prefixed with their rank. When a rank fails, the others
 * stop too (they see it in their next all-reduce); a rank still running 30 s later is killed.
 */
import { ChildProcess, spawn } from 'child_process';
import { threadsPerRank } from '../distributed/env';
import { PeftkitError } from '../errors';
import { freePort } from '../distributed/store';



/** Strips `--nproc-per-node N` / `--nproc-per-node=N` from the arguments the ranks get. */
export function withoutNproc(args: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--nproc-per-node') i++;
    else if (!args[i].startsWith('--nproc-per-node=')) out.push(args[i]);
  }
  return out;
}

/**
 * The CUDA_VISIBLE_DEVICES a local rank of a `--device cuda` run gets: one GPU each, as NCCL
 * needs (a communicator refuses two ranks on one GPU), and every rank's GPU is its device 0 — the
 * engine uses the current device, so no per-thread device plumbing is needed. The rank-th entry
 * of the launcher's own CUDA_VISIBLE_DEVICES when set, else the rank's index.
 */
export function rankVisibleDevices(localRank: number, nproc: number, env: NodeJS.ProcessEnv = process.env): string {
  const listed = env.CUDA_VISIBLE_DEVICES?.trim();
  if (!listed) return String(localRank);
  const gpus = listed.split(',').map((g) => g.trim()).filter((g) => g !== '');
  if (gpus.length < nproc) {
    throw new PeftkitError('E_ARG', `--nproc-per-node ${nproc} with --device cuda: CUDA_VISIBLE_DEVICES=${listed} names ${gpus.length} GPU${gpus.length === 1 ? '' : 's'}; each rank needs its own (NCCL refuses two ranks on one GPU)`);
  }
  return gpus[localRank];
}

/** Starts the ranks; `gpus` (a --device cuda run): each rank's CUDA_VISIBLE_DEVICES, from rankVisibleDevices. */
export async function launchLocal(nproc: number, trainArgs: readonly string[], gpus: readonly string[] | null = null): Promise<number> {
  const port = process.env.MASTER_PORT ? Number(process.env.MASTER_PORT) : await freePort();
  const threads = threadsPerRank(nproc);
  const args = [process.argv[1], 'train', ...withoutNproc(trainArgs)];
  process.stderr.write(`peftkit: ${nproc} ranks on this machine, ${threads} thread${threads > 1 ? 's' : ''} each (store on 127.0.0.1:${port})\n`);
  const children: ChildProcess[] = [];
  for (let rank = 0; rank < nproc; rank++) {
    const c = spawn(process.execPath, args, {
      env: {
        ...process.env, RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: String(nproc), LOCAL_WORLD_SIZE: String(nproc),
        MASTER_ADDR: process.env.MASTER_ADDR ?? '127.0.0.1', MASTER_PORT: String(port), PEFTKIT_NUM_THREADS: String(threads),
        ...(gpus ? { CUDA_VISIBLE_DEVICES: gpus[rank] } : {}),
      },
      stdio: ['ignore', rank === 0 ? 'inherit' : 'ignore', rank === 0 ? 'inherit' : 'pipe'],
    });
    if (rank > 0) {
      let pending = '';
      c.stderr!.on('data', (d: Buffer) => {
        pending += d.toString();
        const lines = pending.split('\n');
        pending = lines.pop()!;
        for (const l of lines) process.stderr.write(`[rank ${rank}] ${l}\n`);
      });
    }
    children.push(c);
  }
  // Ctrl-C reaches every rank through the terminal; each stops after its step (they agree on the step).
  const ignoreSigint = () => {};
  process.on('SIGINT', ignoreSigint);
  let killer: NodeJS.Timeout | null = null;
  try {
    const codes = await Promise.all(
      children.map(
        (c) =>
          new Promise<number>((resolve) => {
            c.once('exit', (code, signal) => {
              const failed = code !== 0;
              if (failed && !killer) killer = setTimeout(() => children.forEach((x) => x.exitCode === null && x.signalCode === null && x.kill('SIGKILL')), 30000);
              resolve(code ?? (signal ? 1 : 0));
            });
          }),
      ),
    );
    return codes[0] !== 0 ? codes[0] : codes.find((c) => c !== 0) ?? 0;
  } finally {
    if (killer) clearTimeout(killer);
    process.off('SIGINT', ignoreSigint);
  }
}
