/**
 * Where a rank stands in a data-parallel run, read the torchrun way (RANK, WORLD_SIZE,
 * LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so torchrun-style scripts, Slurm and Kubernetes
 * launch peftkit unchanged; every field can be given in the API instead (it wins).
 */
import * as os from 'os';
import { PeftkitError } from '../errors';

export interface DistributedOptions {
  /** This process's rank, 0..worldSize-1. Defaults to `RANK`. */
  rank?: number;
  /** Number of ranks. Defaults to `WORLD_SIZE`, else 1 (no distribution). */
  worldSize?: number;
  /** The rank on this machine (threads and devices are divided by it). Defaults to `LOCAL_RANK`, else Slurm's `SLURM_LOCALID`, else `rank`. */
  localRank?: number;
  /** Host of rank 0, which serves the rendezvous store. Defaults to `MASTER_ADDR`, else `127.0.0.1`. */
  masterAddr?: string;
  /** Port of the store on rank 0. Defaults to `MASTER_PORT`, else `29500` (torchrun's). */
  masterPort?: number;
  /** The address this rank listens on for the others. Defaults to `PEFTKIT_DIST_ADDR`, else the local address that routes to masterAddr. */
  localAddr?: string;
  /**
   * How long a rank waits for the others (rendezvous, each collective) before failing with
   * E_DIST instead of hanging. Defaults to `PEFTKIT_DIST_TIMEOUT_MS`, else `300000` (5 min).
   */
  timeoutMs?: number;
  /**
   * Sum each gradient bucket while the backward goes on (as PyTorch DDP does), as soon as the
   * layers it holds are done, instead of all of them after the backward. Results are the same
   * bits either way. Defaults to `PEFTKIT_DDP_OVERLAP` (0 or 1), else `true`.
   */
  overlap?: boolean;
  /** Largest gradient bucket in MiB (DDP's bucket_cap_mb). Defaults to `PEFTKIT_DDP_BUCKET_MB`, else `25`. */
  bucketCapMb?: number;
}

export interface DistributedSetup {
  rank: number;
  worldSize: number;
  localRank: number;
  masterAddr: string;
  masterPort: number;
  localAddr: string;
  timeoutMs: number;
  overlap: boolean;
  bucketCapMb: number;
}

type Env = Record<string, string | undefined>;

function intFrom(option: string, optionValue: number | undefined, envName: string, env: Env, min: number, max: number, fallback: number | undefined): number | undefined {
  if (optionValue !== undefined) {
    if (!Number.isInteger(optionValue) || optionValue < min || optionValue > max) {
      throw new PeftkitError('E_ARG', `${option}: expected an integer in [${min}, ${max}], got ${JSON.stringify(optionValue)}`);
    }
    return optionValue;
  }
  const raw = env[envName];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!/^\s*\d+\s*$/.test(raw) || v < min || v > max) throw new PeftkitError('E_ARG', `${envName} (environment): expected an integer in [${min}, ${max}], got '${raw}'`);
  return v;
}

/**
 * The run's setup from options and the environment, or null when it is not distributed
 * (world size 1). A rank without its world, or a rank outside it, is an E_ARG naming the variable.
 */
export function resolveDistributed(o: DistributedOptions = {}, env: Env = process.env): DistributedSetup | null {
  const worldSize = intFrom('distributed.worldSize', o.worldSize, 'WORLD_SIZE', env, 1, 1 << 20, 1)!;
  if (worldSize === 1) return null;
  const rankSrc = o.rank !== undefined ? 'distributed.rank' : 'RANK';
  const rank = intFrom('distributed.rank', o.rank, 'RANK', env, 0, 1 << 20, undefined);
  if (rank === undefined) throw new PeftkitError('E_ARG', `RANK: WORLD_SIZE is ${worldSize} but this process has no rank: set RANK (0..${worldSize - 1}) or distributed.rank`);
  if (rank >= worldSize) throw new PeftkitError('E_ARG', `${rankSrc}: expected a rank in [0, ${worldSize - 1}] (WORLD_SIZE ${worldSize}), got ${rank}`);
  const masterAddr = o.masterAddr ?? (env.MASTER_ADDR || '127.0.0.1');
  if (typeof masterAddr !== 'string' || !masterAddr) throw new PeftkitError('E_ARG', `distributed.masterAddr: expected a host name or address, got ${JSON.stringify(masterAddr)}`);
  return {
    rank,
    worldSize,
    // Slurm's srun names the task's place on its node SLURM_LOCALID (torchrun: LOCAL_RANK).
    localRank: intFrom('distributed.localRank', o.localRank, 'LOCAL_RANK', env, 0, 1 << 20, intFrom('distributed.localRank', undefined, 'SLURM_LOCALID', env, 0, 1 << 20, rank))!,
    masterAddr,
    masterPort: intFrom('distributed.masterPort', o.masterPort, 'MASTER_PORT', env, 1, 65535, 29500)!,
    localAddr: o.localAddr ?? env.PEFTKIT_DIST_ADDR ?? '',
    timeoutMs: intFrom('distributed.timeoutMs', o.timeoutMs, 'PEFTKIT_DIST_TIMEOUT_MS', env, 1, 2 ** 31 - 1, 300000)!,
    overlap: boolFrom('distributed.overlap', o.overlap, 'PEFTKIT_DDP_OVERLAP', env, true),
    bucketCapMb: positiveFrom('distributed.bucketCapMb', o.bucketCapMb, 'PEFTKIT_DDP_BUCKET_MB', env, 25),
  };
}

function boolFrom(option: string, optionValue: boolean | undefined, envName: string, env: Env, fallback: boolean): boolean {
  if (optionValue !== undefined) {
    if (typeof optionValue !== 'boolean') throw new PeftkitError('E_ARG', `${option}: expected true or false, got ${JSON.stringify(optionValue)}`);
    return optionValue;
  }
  const raw = env[envName];
  if (raw === undefined || raw === '') return fallback;
  if (raw !== '0' && raw !== '1') throw new PeftkitError('E_ARG', `${envName} (environment): expected 0 or 1, got '${raw}'`);
  return raw === '1';
}

function positiveFrom(option: string, optionValue: number | undefined, envName: string, env: Env, fallback: number): number {
  const raw = env[envName];
  const v = optionValue ?? (raw === undefined || raw === '' ? fallback : Number(raw));
  if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) {
    const where = optionValue !== undefined ? option : `${envName} (environment)`;
    throw new PeftkitError('E_ARG', `${where}: expected a number of MiB > 0, got ${JSON.stringify(optionValue ?? raw)}`);
  }
  return v;
}

/** Threads per rank when `ranks` share this machine: PEFTKIT_NUM_THREADS (else the cores) divided by them, at least 1. */
export function threadsPerRank(ranks: number, env: Env = process.env): number {
  const total = Number(env.PEFTKIT_NUM_THREADS) > 0 ? Math.floor(Number(env.PEFTKIT_NUM_THREADS)) : os.availableParallelism();
  return Math.max(1, Math.floor(total / ranks));
}

/**
 * The thread count a rank launched by another tool should use, or null to keep the default:
 * torchrun (LOCAL_WORLD_SIZE) and Slurm (SLURM_NTASKS_PER_NODE) start several ranks per
 * machine, each of which would otherwise take every core. PEFTKIT_NUM_THREADS, when set, is the
 * user's choice and is kept.
 */
export function launchedRankThreads(env: Env = process.env): number | null {
  if (Number(env.PEFTKIT_NUM_THREADS) > 0) return null;
  const perNode = ranksPerNode(env);
  return perNode > 1 ? threadsPerRank(perNode, env) : null;
}

/** The ranks torchrun (LOCAL_WORLD_SIZE) or Slurm (SLURM_NTASKS_PER_NODE) started on this machine; 1 when neither says. */
export function ranksPerNode(env: Env = process.env): number {
  const perNode = Number(env.LOCAL_WORLD_SIZE ?? env.SLURM_NTASKS_PER_NODE);
  return Number.isInteger(perNode) && perNode > 1 ? perNode : 1;
}
