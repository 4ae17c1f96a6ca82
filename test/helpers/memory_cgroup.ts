/**
 * A memory-limited cgroup for one child process, made inside this process's own memory cgroup
 * (cgroup v1 `memory.limit_in_bytes`, or v2 `memory.max`), with swap shut off so that memory
 * over the limit cannot hide there. Needs write access to the cgroup tree (root in a container
 * or VM); when that is missing, `makeMemoryCgroup` says why instead.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

export interface MemoryCgroup {
  dir: string;
  limitBytes: number;
  /** Runs `command` inside the cgroup; resolves with its exit code or signal and its stdout. */
  run(command: string, args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
  /** The most memory the cgroup was charged (v1 memory.max_usage_in_bytes, v2 memory.peak). */
  peakBytes(): number | null;
  remove(): void;
}

function ownCgroup(): { version: 1 | 2; dir: string } | string {
  let lines: string[];
  try {
    lines = fs.readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n');
  } catch {
    return 'no /proc/self/cgroup (not Linux?)';
  }
  for (const l of lines) {
    const [, controllers, rel] = l.split(':');
    if (controllers?.split(',').includes('memory')) {
      const dir = path.join('/sys/fs/cgroup/memory', rel);
      if (fs.existsSync(path.join(dir, 'memory.limit_in_bytes'))) return { version: 1, dir };
    }
  }
  const v2 = lines.find((l) => l.startsWith('0::'));
  if (v2) {
    const dir = path.join('/sys/fs/cgroup', v2.slice(3));
    if (fs.existsSync(path.join(dir, 'cgroup.controllers')) && fs.readFileSync(path.join(dir, 'cgroup.controllers'), 'utf8').includes('memory')) {
      return { version: 2, dir };
    }
  }
  return 'no memory cgroup controller found for this process';
}

export function makeMemoryCgroup(limitBytes: number): MemoryCgroup | string {
  const own = ownCgroup();
  if (typeof own === 'string') return own;
  const dir = path.join(own.dir, `peftkit-test-${process.pid}-${Math.floor(Math.random() * 1e9)}`);
  const write = (file: string, value: string) => fs.writeFileSync(path.join(dir, file), value);
  try {
    if (own.version === 2) fs.writeFileSync(path.join(own.dir, 'cgroup.subtree_control'), '+memory');
    fs.mkdirSync(dir);
  } catch (e) {
    return `cannot create a memory cgroup under ${own.dir}: ${(e as Error).message}`;
  }
  const remove = () => {
    try {
      fs.rmdirSync(dir);
    } catch {
      // A child still exiting keeps it busy for a moment; the kernel frees it once empty.
    }
  };
  try {
    if (own.version === 1) {
      write('memory.limit_in_bytes', String(limitBytes));
      if (fs.existsSync(path.join(dir, 'memory.memsw.limit_in_bytes'))) write('memory.memsw.limit_in_bytes', String(limitBytes));
      try {
        write('memory.swappiness', '0');
      } catch {
        // not settable on every kernel; memsw (when present) already forbids swap
      }
    } else {
      write('memory.max', String(limitBytes));
      if (fs.existsSync(path.join(dir, 'memory.swap.max'))) write('memory.swap.max', '0');
    }
  } catch (e) {
    remove();
    return `cannot set a memory limit in ${dir}: ${(e as Error).message}`;
  }
  return {
    dir,
    limitBytes,
    run(command, args) {
      return new Promise((resolve, reject) => {
        // The shell joins the cgroup, then becomes the command: nothing runs outside the limit.
        const child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', dir, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d) => (stdout += d));
        child.stderr.on('data', (d) => (stderr += d));
        child.on('error', reject);
        child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
      });
    },
    peakBytes() {
      for (const f of ['memory.max_usage_in_bytes', 'memory.peak']) {
        try {
          return Number(fs.readFileSync(path.join(dir, f), 'utf8'));
        } catch {
          // try the other version's name
        }
      }
      return null;
    },
    remove,
  };
}
