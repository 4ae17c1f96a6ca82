/**
 * Launches the ranks of a distributed test as local processes, torchrun-style: each gets RANK,
 * WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (a free port) in its environment. Resolves
 * to each rank's exit code and last stdout line (parsed as JSON when it is); a rank still
 * running after `timeoutMs` is killed, so a hang fails the test instead of stalling the suite.
 */
import { ChildProcess, spawn } from 'child_process';
import { freePort } from '../../src/distributed/store';

export interface RankResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  json: Record<string, unknown> | null;
  stdout: string;
  stderr: string;
}


export interface LaunchOptions {
  worldSize: number;
  args: string[];
  env?: Record<string, string>;
  /** Variables for one rank only (its listening address, say). */
  perRankEnv?: (rank: number) => Record<string, string>;
  timeoutMs?: number;
  /** Called with each rank's process once all are started (to kill one on purpose). */
  onStart?: (children: ChildProcess[]) => void;
  /** Kill every rank still running once this rank has exited (a hanging victim, say). */
  killAfterRank?: number;
}

export async function launchRanks(o: LaunchOptions): Promise<RankResult[]> {
  const port = await freePort();
  const children = Array.from({ length: o.worldSize }, (_, rank) =>
    spawn(process.execPath, o.args, {
      env: { ...process.env, RANK: String(rank), LOCAL_RANK: String(rank), WORLD_SIZE: String(o.worldSize), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), ...o.env, ...o.perRankEnv?.(rank) },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  o.onStart?.(children);
  const timer = setTimeout(() => children.forEach((c) => c.kill('SIGKILL')), o.timeoutMs ?? 120000);
  try {
    return await Promise.all(
      children.map(
        (c, rank) =>
          new Promise<RankResult>((resolve) => {
            let stdout = '';
            let stderr = '';
            c.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
            c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
            c.once('close', (code, signal) => {
              if (rank === o.killAfterRank) children.forEach((x) => x.exitCode === null && x.kill('SIGKILL'));
              const last = stdout.trim().split('\n').pop() ?? '';
              let json: Record<string, unknown> | null = null;
              try {
                json = JSON.parse(last) as Record<string, unknown>;
              } catch {
                json = null;
              }
              resolve({ code, signal, json, stdout, stderr });
            });
          }),
      ),
    );
  } finally {
    clearTimeout(timer);
  }
}
