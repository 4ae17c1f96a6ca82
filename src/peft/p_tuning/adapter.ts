/**
 * P-tuning (Liu et al. 2021), PEFT's P_TUNING with the MLP encoder: the virtual tokens are an
 * encoder's output, P = L4(relu(L2(relu(L0(E))))), E [n, hidden] an embedding, L0 [h, hidden],
 * L2 [h, h], L4 [hidden, h] with biases; the encoder trains. The virtual tokens then enter as in
 * prompt tuning. PEFT saves only P (adapter_model.safetensors: prompt_embeddings), which serves
 * inference but cannot continue training, so peftkit also writes the encoder beside it
 * (prompt_encoder.safetensors, names as PEFT's modules); a folder without it loads for generation.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../../errors';
import type { ModelConfig } from '../../model/config';
import { SafetensorsCheckpoint, writeSafetensors } from '../../model/safetensors';
import type { LinearSite, ModelAdapter, NormSite, WeightSite } from '../../model/sites';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';
import { relu, reluBackward } from '../host_activations';
import { SeededRng } from '../../util/rng';
import { checkFinite, MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, readAdapterTensors, TrainableParam, writeAdapterConfigJson } from '../method';
import { parsePTuningConfig, PTuningConfig } from './config';

export type { PTuningConfig } from './config';
export { defaultPTuningConfig, parsePTuningConfig } from './config';

const ENCODER_FILE = 'prompt_encoder.safetensors';
const LAYERS = ['0', '2', '4'] as const;

interface Encoder {
  E: Tensor; dE: Tensor;
  W: Tensor[]; dW: Tensor[]; b: Tensor[]; db: Tensor[];
  /** Forward activations: pre-activations and activations of the two hidden layers. */
  pre: Tensor[]; act: Tensor[];
}

export class PTuningAdapter extends ParamAdapter<PTuningConfig> implements PeftMethod, ModelAdapter {
  readonly config: PTuningConfig;
  readonly source: string | null;
  /** The virtual tokens P [n, hidden] (the encoder's output) and their gradient. */
  readonly site: WeightSite & { grad: Tensor };
  /** Null for an inference-only folder (PEFT's, which holds no encoder). */
  private readonly enc: Encoder | null;

  private constructor(config: PTuningConfig, device: Device, source: string | null, enc: Record<string, Float32Array> | null, prompt: Float32Array | null) {
    super();
    this.config = config;
    this.source = source;
    const n = config.num_virtual_tokens, C = config.token_dim, h = config.encoder_hidden_size;
    this.site = { weight: Tensor.zeros([n, C], { device }), grad: Tensor.zeros([n, C], { device }) };
    if (enc) {
      const shapes = { 0: [h, C], 2: [h, h], 4: [C, h] } as const;
      const t = (v: Float32Array, shape: readonly number[]) => Tensor.from(v, [...shape], { device });
      this.enc = {
        E: t(enc['prompt_encoder.embedding.weight'], [n, C]), dE: Tensor.zeros([n, C], { device }),
        W: LAYERS.map((l) => t(enc[`prompt_encoder.mlp_head.${l}.weight`], shapes[l])), dW: LAYERS.map((l) => Tensor.zeros([...shapes[l]], { device })),
        b: LAYERS.map((l) => t(enc[`prompt_encoder.mlp_head.${l}.bias`], [shapes[l][0]])), db: LAYERS.map((l) => Tensor.zeros([shapes[l][0]], { device })),
        pre: [0, 1].map(() => Tensor.zeros([n, h], { device })), act: [0, 1].map(() => Tensor.zeros([n, h], { device })),
      };
      this.refresh();
    } else {
      this.enc = null;
      this.site.weight.write(prompt!);
    }
  }

  /** A new encoder, initialised as PyTorch's nn.Embedding (N(0, 1)) and nn.Linear (U(±1/√fan_in)). */
  static create(c: ModelConfig, config: PTuningConfig, opts: { seed?: number; device?: Device } = {}): PTuningAdapter {
    const rng = new SeededRng(opts.seed ?? 0);
    const n = config.num_virtual_tokens, C = config.token_dim, h = config.encoder_hidden_size;
    const u = (len: number, fanIn: number) => Float32Array.from({ length: len }, () => rng.uniform(-1 / Math.sqrt(fanIn), 1 / Math.sqrt(fanIn)));
    const enc: Record<string, Float32Array> = {
      'prompt_encoder.embedding.weight': Float32Array.from({ length: n * C }, () => rng.normal()),
      'prompt_encoder.mlp_head.0.weight': u(h * C, C), 'prompt_encoder.mlp_head.0.bias': u(h, C),
      'prompt_encoder.mlp_head.2.weight': u(h * h, h), 'prompt_encoder.mlp_head.2.bias': u(h, h),
      'prompt_encoder.mlp_head.4.weight': u(C * h, h), 'prompt_encoder.mlp_head.4.bias': u(C, h),
    };
    return new PTuningAdapter(config, opts.device ?? 'cpu', null, enc, null);
  }

  static load(dir: string, c: ModelConfig, opts: { device?: Device } = {}): PTuningAdapter {
    const config = parsePTuningConfig(readAdapterConfigJson(dir), path.join(dir, 'adapter_config.json'), c);
    const n = config.num_virtual_tokens, C = config.token_dim, h = config.encoder_hidden_size;
    const source = path.join(dir, 'adapter_model.safetensors');
    if (!fs.existsSync(path.join(dir, ENCODER_FILE))) {
      const prompt = readAdapterTensors(dir, new Map([['prompt_embeddings', [n, C]]]), 'P_TUNING').get('prompt_embeddings')!;
      return new PTuningAdapter(config, opts.device ?? 'cpu', source, null, prompt);
    }
    const ck = new SafetensorsCheckpoint(dir, ENCODER_FILE);
    const shapes: Record<string, number[]> = {
      'prompt_encoder.embedding.weight': [n, C], 'prompt_encoder.mlp_head.0.weight': [h, C], 'prompt_encoder.mlp_head.0.bias': [h],
      'prompt_encoder.mlp_head.2.weight': [h, h], 'prompt_encoder.mlp_head.2.bias': [h], 'prompt_encoder.mlp_head.4.weight': [C, h],
      'prompt_encoder.mlp_head.4.bias': [C],
    };
    const enc: Record<string, Float32Array> = {};
    for (const [name, shape] of Object.entries(shapes)) {
      if (!ck.has(name)) throw new PeftkitError('E_MISSING', `${ck.source}: no tensor '${name}'`);
      enc[name] = checkFinite(ck.source, name, ck.readFloat32(name, shape));
    }
    return new PTuningAdapter(config, opts.device ?? 'cpu', source, enc, null);
  }

  /** P from the encoder (after an update or a load), keeping its activations for the backward. */
  private refresh(): void {
    const e = this.enc!;
    ops.linearForward(e.pre[0], e.E, e.W[0], { bias: e.b[0] });
    relu(e.act[0], e.pre[0]);
    ops.linearForward(e.pre[1], e.act[0], e.W[1], { bias: e.b[1] });
    relu(e.act[1], e.pre[1]);
    ops.linearForward(this.site.weight, e.act[1], e.W[2], { bias: e.b[2] });
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
    const e = this.enc;
    if (!e) return [];
    return [
      { name: 'prompt_encoder.embedding.weight', param: e.E, grad: e.dE },
      ...LAYERS.flatMap((l, i) => [
        { name: `prompt_encoder.mlp_head.${l}.weight`, param: e.W[i], grad: e.dW[i] },
        { name: `prompt_encoder.mlp_head.${l}.bias`, param: e.b[i], grad: e.db[i], decay: false },
      ]),
    ];
  }

  override zeroGrad(): void {
    super.zeroGrad();
    this.site.grad.zero();
  }

  /** The virtual tokens' gradient back through the encoder. */
  prepareGrads(): void {
    const e = this.enc;
    if (!e) throw new PeftkitError('E_UNSUPPORTED', `${this.source}: this P-tuning adapter holds no prompt encoder (PEFT saves only its output), so it can be used, not trained`);
    const n = this.config.num_virtual_tokens, h = this.config.encoder_hidden_size;
    const dP = this.site.grad;
    const dAct = Tensor.zeros([n, h], { device: dP.device }), dPre = Tensor.zeros([n, h], { device: dP.device });
    try {
      let dOut = dP;
      for (let i = 2; i >= 0; i--) {
        const input = i === 0 ? e.E : e.act[i - 1];
        ops.gemm(e.dW[i], dOut, input, { transA: true, beta: 1 });
        ops.biasBackward(e.db[i], dOut);
        if (i === 0) {
          ops.gemm(e.dE, dOut, e.W[0], { beta: 1 });
        } else {
          ops.gemm(dAct, dOut, e.W[i]);
          reluBackward(dPre, dAct, e.pre[i - 1]);
          dOut = dPre.view(0, [n, h]);
        }
      }
    } finally {
      dAct.dispose();
      dPre.dispose();
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
    if (this.enc) for (const t of [...this.enc.pre, ...this.enc.act]) t.dispose();
  }
}
