/**
 * P-tuning (Liu et al. 2021), PEFT's P_TUNING: the virtual tokens are an encoder's output, which
 * trains, from an embedding E [n, hidden]. With the MLP encoder (PEFT's default)
 * P = L4(relu(L2(relu(L0(E))))), L0 [h, hidden], L2 [h, h], L4 [hidden, h] with biases; with the
 * LSTM one P = L2(relu(L0(lstm(E)))), lstm a bidirectional nn.LSTM of encoder_num_layers layers
 * and hidden size h per direction (lstm.ts), L0 [2h, 2h], L2 [hidden, 2h]. The virtual tokens then
 * enter as in prompt tuning. PEFT saves only P (adapter_model.safetensors: prompt_embeddings),
 * which serves inference but cannot continue training, so peftkit also writes the encoder beside
 * it (prompt_encoder.safetensors, names as PEFT's modules); a folder without it loads for generation.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../../errors';
import type { ModelConfig } from '../../model/config';
import { SafetensorsCheckpoint, writeSafetensors } from '../../model/safetensors';
import type { LinearSite, ModelAdapter, NormSite, WeightSite } from '../../model/sites';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';
import { SeededRng } from '../../util/rng';
import { checkFinite, decays, MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, readAdapterTensors, TrainableParam, writeAdapterConfigJson } from '../method';
import { parsePTuningConfig, PTuningConfig } from './config';
import { lstmBackward, lstmForward, lstmShapes, LstmSpec, LstmTape } from './lstm';

export type { PTuningConfig } from './config';
export { defaultPTuningConfig, parsePTuningConfig } from './config';

const ENCODER_FILE = 'prompt_encoder.safetensors';
const EMBEDDING = 'prompt_encoder.embedding.weight';
const LSTM = 'prompt_encoder.lstm_head.';

const lstmSpec = (c: PTuningConfig): LstmSpec | null =>
  c.encoder_reparameterization_type === 'LSTM' ? { input: c.token_dim, hidden: c.encoder_hidden_size, layers: c.encoder_num_layers } : null;

/** The widths along mlp_head: its input, each hidden layer, its output (token_dim). */
export function headWidths(c: PTuningConfig): number[] {
  const C = c.token_dim, h = c.encoder_hidden_size;
  return c.encoder_reparameterization_type === 'LSTM' ? [2 * h, 2 * h, C] : [C, h, h, C];
}

/** The encoder's tensors in PEFT's module order (embedding, lstm_head, mlp_head), with their shapes. */
export function encoderShapes(c: PTuningConfig): Map<string, number[]> {
  const out = new Map<string, number[]>([[EMBEDDING, [c.num_virtual_tokens, c.token_dim]]]);
  const spec = lstmSpec(c);
  if (spec) for (const [name, shape] of lstmShapes(spec)) out.set(LSTM + name, shape);
  const w = headWidths(c);
  for (let i = 0; i + 1 < w.length; i++) {
    out.set(`prompt_encoder.mlp_head.${2 * i}.weight`, [w[i + 1], w[i]]);
    out.set(`prompt_encoder.mlp_head.${2 * i}.bias`, [w[i + 1]]);
  }
  return out;
}

interface Encoder {
  /** Every tensor of encoderShapes with its gradient, in that order. */
  params: TrainableParam[];
  E: TrainableParam;
  /** mlp_head's Linears. */
  head: TrainableParam[][];
  /** The hidden layers' pre-activations and activations (forward, for the backward). */
  pre: Tensor[]; act: Tensor[];
  lstm: {
    spec: LstmSpec; params: TrainableParam[];
    /** Its output (mlp_head's input) and that output's gradient, [n, 2h]. */
    out: Tensor; dOut: Tensor;
    /** The weights and tape of the last forward. */
    weights: Map<string, Float32Array>; tape: LstmTape | null;
  } | null;
}

export class PTuningAdapter extends ParamAdapter<PTuningConfig> implements PeftMethod, ModelAdapter {
  readonly config: PTuningConfig;
  readonly source: string | null;
  /** The virtual tokens P [n, hidden] (the encoder's output) and their gradient. */
  readonly site: WeightSite & { grad: Tensor };
  /** Null for an inference-only folder (PEFT's, which holds no encoder). */
  private readonly enc: Encoder | null;

  private constructor(config: PTuningConfig, device: Device, source: string | null, enc: ReadonlyMap<string, Float32Array> | null, prompt: Float32Array | null) {
    super();
    this.config = config;
    this.source = source;
    const n = config.num_virtual_tokens, C = config.token_dim;
    this.site = { weight: Tensor.zeros([n, C], { device }), grad: Tensor.zeros([n, C], { device }) };
    if (enc) {
      const params = [...encoderShapes(config)].map(([name, shape]): TrainableParam => ({
        name, param: Tensor.from(enc.get(name)!, shape, { device }), grad: Tensor.zeros(shape, { device }), ...(decays(name) ? {} : { decay: false }),
      }));
      const spec = lstmSpec(config);
      const nLstm = spec ? lstmShapes(spec).size : 0;
      const head = params.slice(1 + nLstm);
      const hw = headWidths(config).slice(1, -1);
      this.enc = {
        params, E: params[0], head: hw.map((_, i) => head.slice(2 * i, 2 * i + 2)).concat([head.slice(-2)]),
        pre: hw.map((w) => Tensor.zeros([n, w], { device })), act: hw.map((w) => Tensor.zeros([n, w], { device })),
        lstm: spec && {
          spec, params: params.slice(1, 1 + nLstm), out: Tensor.zeros([n, 2 * spec.hidden], { device }), dOut: Tensor.zeros([n, 2 * spec.hidden], { device }),
          weights: new Map(), tape: null,
        },
      };
      this.refresh();
    } else {
      this.enc = null;
      this.site.weight.write(prompt!);
    }
  }

  /**
   * A new encoder, initialised as PyTorch's modules are: nn.Embedding N(0, 1), nn.LSTM U(±1/√h)
   * (every tensor), nn.Linear U(±1/√fan_in) (weight and bias).
   */
  static create(c: ModelConfig, config: PTuningConfig, opts: { seed?: number; device?: Device } = {}): PTuningAdapter {
    const rng = new SeededRng(opts.seed ?? 0);
    const enc = new Map<string, Float32Array>();
    let fanIn = 0;
    for (const [name, shape] of encoderShapes(config)) {
      const len = shape.reduce((a, b) => a * b, 1);
      if (name === EMBEDDING) {
        enc.set(name, Float32Array.from({ length: len }, () => rng.normal()));
        continue;
      }
      if (name.startsWith(LSTM)) fanIn = config.encoder_hidden_size;
      else if (name.endsWith('.weight')) fanIn = shape[1];
      const bound = 1 / Math.sqrt(fanIn);
      enc.set(name, Float32Array.from({ length: len }, () => rng.uniform(-bound, bound)));
    }
    return new PTuningAdapter(config, opts.device ?? 'cpu', null, enc, null);
  }

  static load(dir: string, c: ModelConfig, opts: { device?: Device } = {}): PTuningAdapter {
    const config = parsePTuningConfig(readAdapterConfigJson(dir), path.join(dir, 'adapter_config.json'), c);
    const n = config.num_virtual_tokens, C = config.token_dim;
    const source = path.join(dir, 'adapter_model.safetensors');
    if (!fs.existsSync(path.join(dir, ENCODER_FILE))) {
      const prompt = readAdapterTensors(dir, new Map([['prompt_embeddings', [n, C]]]), 'P_TUNING').get('prompt_embeddings')!;
      return new PTuningAdapter(config, opts.device ?? 'cpu', source, null, prompt);
    }
    const ck = new SafetensorsCheckpoint(dir, ENCODER_FILE);
    const enc = new Map<string, Float32Array>();
    for (const [name, shape] of encoderShapes(config)) {
      if (!ck.has(name)) throw new PeftkitError('E_MISSING', `${ck.source}: no tensor '${name}' (adapter_config.json's ${config.encoder_reparameterization_type} encoder needs it)`);
      enc.set(name, checkFinite(ck.source, name, ck.readFloat32(name, shape)));
    }
    return new PTuningAdapter(config, opts.device ?? 'cpu', source, enc, null);
  }

  /** P from the encoder (after an update or a load), keeping its activations for the backward. */
  private refresh(): void {
    const e = this.enc!;
    let x = e.E.param;
    if (e.lstm) {
      const l = e.lstm;
      l.weights = new Map(l.params.map((p) => [p.name.slice(LSTM.length), p.param.toFloat32Array()]));
      l.tape = lstmForward(l.spec, l.weights, e.E.param.toFloat32Array(), this.config.num_virtual_tokens);
      l.out.write(Float32Array.from(l.tape.xs[l.spec.layers]));
      x = l.out;
    }
    e.head.forEach(([W, b], i) => {
      const last = i === e.head.length - 1;
      ops.linearForward(last ? this.site.weight : e.pre[i], x, W.param, { bias: b.param });
      if (last) return;
      ops.reluForward(e.act[i], e.pre[i]);
      x = e.act[i];
    });
  }
  linear(): LinearSite | undefined {
    return undefined;
  }

  norm(): NormSite | undefined {
    return undefined;
  }

  virtualTokens(): WeightSite {
    return this.site;
  }

  parameters(): TrainableParam[] {
    return this.enc ? this.enc.params : [];
  }

  override zeroGrad(): void {
    super.zeroGrad();
    this.site.grad.zero();
  }

  /** The virtual tokens' gradient back through the encoder. */
  prepareGrads(): void {
    const e = this.enc;
    if (!e) throw new PeftkitError('E_UNSUPPORTED', `${this.source}: this P-tuning adapter holds no prompt encoder (PEFT saves only its output), so it can be used, not trained`);
    const dP = this.site.grad;
    const scratch = e.pre.map((t) => [Tensor.zeros(t.shape, { device: dP.device }), Tensor.zeros(t.shape, { device: dP.device })]);
    try {
      let dOut = dP;
      for (let i = e.head.length - 1; i >= 0; i--) {
        const [W, b] = e.head[i];
        const input = i > 0 ? e.act[i - 1] : e.lstm ? e.lstm.out : e.E.param;
        ops.gemm(W.grad, dOut, input, { transA: true, beta: 1 });
        ops.biasBackward(b.grad, dOut);
        if (i === 0) {
          if (e.lstm) ops.gemm(e.lstm.dOut, dOut, W.param);
          else ops.gemm(e.E.grad, dOut, W.param, { beta: 1 });
        } else {
          const [dAct, dPre] = scratch[i - 1];
          ops.gemm(dAct, dOut, W.param);
          ops.reluBackward(dPre, dAct, e.pre[i - 1]);
          dOut = dPre;
        }
      }
      if (e.lstm) {
        const l = e.lstm;
        const { dx, grads } = lstmBackward(l.spec, l.weights, l.tape!, l.dOut.toFloat32Array());
        addInto(e.E.grad, dx);
        for (const p of l.params) addInto(p.grad, grads.get(p.name.slice(LSTM.length))!);
      }
    } finally {
      for (const t of scratch.flat()) t.dispose();
    }
  }

  afterUpdate(): void {
    this.refresh();
  }

  /** PEFT's file (the virtual tokens), and the encoder beside it so that training can go on. */
  override writeFiles(dir: string): void {
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), { prompt_embeddings: { dtype: 'F32', shape: this.site.weight.shape, data: this.site.weight.toFloat32Array() } });
    if (this.enc) {
      const enc: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
      for (const p of this.parameters()) enc[p.name] = { dtype: 'F32', shape: p.param.shape, data: p.param.toFloat32Array() };
      writeSafetensors(path.join(dir, ENCODER_FILE), enc);
    }
    writeAdapterConfigJson(dir, this.config);
  }

  override loadWeightsFrom(dir: string): void {
    const ck = new SafetensorsCheckpoint(dir, ENCODER_FILE);
    for (const p of this.parameters()) p.param.write(checkFinite(ck.source, p.name, ck.readFloat32(p.name, p.param.shape)));
    this.refresh();
  }

  mergeEdits(): MergeEdit[] {
    throw new PeftkitError('E_UNSUPPORTED', 'P-tuning cannot be merged: its virtual tokens are extra positions of every sequence, which no weight of the model holds; keep the adapter unmerged');
  }

  override dispose(): void {
    super.dispose();
    this.site.weight.dispose();
    this.site.grad.dispose();
    if (this.enc) for (const t of [...this.enc.pre, ...this.enc.act, ...(this.enc.lstm ? [this.enc.lstm.out, this.enc.lstm.dOut] : [])]) t.dispose();
  }
}

/** t += v (a gradient computed on the host). */
function addInto(t: Tensor, v: Float64Array): void {
  const a = t.toFloat32Array();
  t.write(a.map((x, i) => x + v[i]));
}
