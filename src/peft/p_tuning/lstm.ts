/**
 * PyTorch's nn.LSTM as P-tuning's LSTM encoder uses it (PEFT's `lstm_head`): bidirectional,
 * batch_first, one sequence of `steps` rows, zero initial states, `layers` stacked (layer k > 0
 * reads layer k-1's [steps, 2·hidden] output), no dropout. Forward beside backward (BPTT over
 * the steps, both directions, every layer), on the host in float64: the sizes are
 * num_virtual_tokens × encoder_hidden_size, never the model's activations.
 *
 * Per layer and direction, with PyTorch's tensor names and gate rows in its order i, f, g, o:
 *
 *     z_t = W_ih·x_t + b_ih + W_hh·h_prev + b_hh
 *     i, f, o = σ(z_i), σ(z_f), σ(z_o);  g = tanh(z_g)
 *     c_t = f ⊙ c_prev + i ⊙ g;  h_t = o ⊙ tanh(c_t)
 *
 * where the forward direction runs t = 0..steps-1 (prev = t-1) and the reverse one (the `_reverse`
 * tensors) t = steps-1..0 (prev = t+1), both from h = c = 0; the layer's output row t is
 * [h_t forward, h_t reverse].
 */

export interface LstmSpec {
  /** Width of the first layer's input rows. */
  input: number;
  /** Each direction's hidden size h. */
  hidden: number;
  layers: number;
}

const DIRECTIONS = ['', '_reverse'] as const;

/** nn.LSTM's state dict (bias=True, bidirectional): names in its order, with their shapes. */
export function lstmShapes(s: LstmSpec): Map<string, number[]> {
  const G = 4 * s.hidden;
  const out = new Map<string, number[]>();
  for (let k = 0; k < s.layers; k++) {
    for (const d of DIRECTIONS) {
      out.set(`weight_ih_l${k}${d}`, [G, k === 0 ? s.input : 2 * s.hidden]);
      out.set(`weight_hh_l${k}${d}`, [G, s.hidden]);
      out.set(`bias_ih_l${k}${d}`, [G]);
      out.set(`bias_hh_l${k}${d}`, [G]);
    }
  }
  return out;
}

/** The LSTM's tensors by lstmShapes' names (row-major, as PyTorch stores them). */
export type LstmWeights = ReadonlyMap<string, ArrayLike<number>>;

/** What the backward needs from a forward. */
export interface LstmTape {
  steps: number;
  /** xs[k]: layer k's input [steps, width]; xs[layers] is the output [steps, 2·hidden]. */
  xs: Float64Array[];
  /** Per layer k and direction d (index 2k + d): the gates' activations [steps, 4·hidden] (i, f, g, o) and the cells [steps, hidden]. */
  gates: Float64Array[];
  cells: Float64Array[];
}

const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

/** The LSTM over x [steps, input]: the tape, whose `xs[layers]` is the output [steps, 2·hidden]. */
export function lstmForward(s: LstmSpec, w: LstmWeights, x: ArrayLike<number>, steps: number): LstmTape {
  const H = s.hidden, G = 4 * H, H2 = 2 * H;
  const tape: LstmTape = { steps, xs: [Float64Array.from(x)], gates: [], cells: [] };
  for (let k = 0; k < s.layers; k++) {
    const inp = tape.xs[k], nIn = inp.length / steps;
    const out = new Float64Array(steps * H2);
    for (let d = 0; d < 2; d++) {
      const Wih = w.get(`weight_ih_l${k}${DIRECTIONS[d]}`)!, Whh = w.get(`weight_hh_l${k}${DIRECTIONS[d]}`)!;
      const bih = w.get(`bias_ih_l${k}${DIRECTIONS[d]}`)!, bhh = w.get(`bias_hh_l${k}${DIRECTIONS[d]}`)!;
      const gates = new Float64Array(steps * G), cells = new Float64Array(steps * H);
      for (let n = 0; n < steps; n++) {
        const t = d === 0 ? n : steps - 1 - n;
        const prev = n === 0 ? -1 : d === 0 ? t - 1 : t + 1;
        for (let r = 0; r < G; r++) {
          let z = bih[r] + bhh[r];
          for (let j = 0; j < nIn; j++) z += Wih[r * nIn + j] * inp[t * nIn + j];
          if (prev >= 0) for (let j = 0; j < H; j++) z += Whh[r * H + j] * out[prev * H2 + d * H + j];
          gates[t * G + r] = r >= 2 * H && r < 3 * H ? Math.tanh(z) : sigmoid(z);
        }
        for (let j = 0; j < H; j++) {
          const i = gates[t * G + j], f = gates[t * G + H + j], g = gates[t * G + 2 * H + j], o = gates[t * G + 3 * H + j];
          const c = f * (prev >= 0 ? cells[prev * H + j] : 0) + i * g;
          cells[t * H + j] = c;
          out[t * H2 + d * H + j] = o * Math.tanh(c);
        }
      }
      tape.gates.push(gates);
      tape.cells.push(cells);
    }
    tape.xs.push(out);
  }
  return tape;
}

/**
 * The backward of `lstmForward` for the output's gradient dy [steps, 2·hidden] (the same weights):
 * the input's gradient dx [steps, input] and every tensor's, by lstmShapes' names.
 */
export function lstmBackward(s: LstmSpec, w: LstmWeights, tape: LstmTape, dy: ArrayLike<number>): { dx: Float64Array; grads: Map<string, Float64Array> } {
  const H = s.hidden, G = 4 * H, H2 = 2 * H, steps = tape.steps;
  const grads = new Map<string, Float64Array>();
  for (const [name, shape] of lstmShapes(s)) grads.set(name, new Float64Array(shape.reduce((a, b) => a * b, 1)));
  let dOut = Float64Array.from(dy);
  for (let k = s.layers - 1; k >= 0; k--) {
    const inp = tape.xs[k], out = tape.xs[k + 1], nIn = inp.length / steps;
    const dIn = new Float64Array(steps * nIn);
    for (let d = 0; d < 2; d++) {
      const sfx = DIRECTIONS[d];
      const Wih = w.get(`weight_ih_l${k}${sfx}`)!, Whh = w.get(`weight_hh_l${k}${sfx}`)!;
      const dWih = grads.get(`weight_ih_l${k}${sfx}`)!, dWhh = grads.get(`weight_hh_l${k}${sfx}`)!, db = grads.get(`bias_ih_l${k}${sfx}`)!;
      const gates = tape.gates[2 * k + d], cells = tape.cells[2 * k + d];
      const dhNext = new Float64Array(H), dcNext = new Float64Array(H), dz = new Float64Array(G);
      // Backwards through this direction's steps: the last one it ran comes first.
      for (let n = steps - 1; n >= 0; n--) {
        const t = d === 0 ? n : steps - 1 - n;
        const prev = n === 0 ? -1 : d === 0 ? t - 1 : t + 1;
        for (let j = 0; j < H; j++) {
          const i = gates[t * G + j], f = gates[t * G + H + j], g = gates[t * G + 2 * H + j], o = gates[t * G + 3 * H + j];
          const tc = Math.tanh(cells[t * H + j]);
          const dh = dOut[t * H2 + d * H + j] + dhNext[j];
          const dc = dcNext[j] + dh * o * (1 - tc * tc);
          dz[j] = dc * g * i * (1 - i);
          dz[H + j] = dc * (prev >= 0 ? cells[prev * H + j] : 0) * f * (1 - f);
          dz[2 * H + j] = dc * i * (1 - g * g);
          dz[3 * H + j] = dh * tc * o * (1 - o);
          dcNext[j] = dc * f;
        }
        dhNext.fill(0);
        for (let r = 0; r < G; r++) {
          const gr = dz[r];
          db[r] += gr;
          for (let j = 0; j < nIn; j++) {
            dWih[r * nIn + j] += gr * inp[t * nIn + j];
            dIn[t * nIn + j] += Wih[r * nIn + j] * gr;
          }
          if (prev < 0) continue;
          for (let j = 0; j < H; j++) {
            dWhh[r * H + j] += gr * out[prev * H2 + d * H + j];
            dhNext[j] += Whh[r * H + j] * gr;
          }
        }
      }
      // b_ih and b_hh enter z the same way.
      grads.get(`bias_hh_l${k}${sfx}`)!.set(db);
    }
    dOut = dIn;
  }
  return { dx: dOut, grads };
}
