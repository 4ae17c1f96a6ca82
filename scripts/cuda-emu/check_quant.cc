// The CUDA kernels of the bitsandbytes formats, checked under the emulation: quantization must
// give the SAME bytes as the CPU kernels (pk::cpu, linked in by run.sh; they are tested against
// the published algorithm by test/quant*.test.ts), and the GEMMs and the 8-bit optimizer over
// quantized operands must equal the float64 math on the dequantized values.
#include <cstring>

#include "check.h"
#include "gemm_quant.cuh"

namespace {

// Inputs with what the formats must get right: a zero block, exact zeros, NaN, a negative
// maximum, values on the code table's midpoints after scaling.
Vec awkward_input(int64_t n, int64_t blocksize) {
  Vec x = randn(size_t(n));
  if (n > blocksize)
    for (int64_t i = blocksize; i < 2 * blocksize && i < n; i++) x[size_t(i)] = 0.f;  // zero block
  if (n > 3) x[3] = NAN;
  if (n > 5) x[5] = -8.f;  // the block's absmax is negative
  if (n > 9) x[9] = 0.f;
  if (n > 12) x[12] = 8.f * 0.5f;  // 0.5 of the absmax 8: a value near NF4's midpoints
  return x;
}

template <typename T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

void check_quant() {
  for (int64_t blocksize : {32, 64, 256, 4096})
    for (int64_t n : {1, 7, 64, 1001, 9000}) {
      const Vec x = awkward_input(n, blocksize);
      const int64_t blocks = (n + blocksize - 1) / blocksize;
      for (auto type : {pk::Quant4Type::NF4, pk::Quant4Type::FP4}) {
        const std::string tag = std::string(type == pk::Quant4Type::NF4 ? "nf4" : "fp4") + " n=" + std::to_string(n) +
                                " blocksize=" + std::to_string(blocksize);
        std::vector<uint8_t> gp(size_t((n + 1) / 2), 0xAA), cp(gp.size());
        Vec ga = poison(size_t(blocks)), ca(ga.size());
        pk::cuda::quantize_4bit(gp.data(), ga.data(), x.data(), n, blocksize, type);
        pk::cpu::quantize_4bit(cp.data(), ca.data(), x.data(), n, blocksize, type);
        expect_true(tag + " codes equal the CPU's", same_bytes(gp, cp));
        expect_true(tag + " absmax equals the CPU's", same_bytes(ga, ca));
        Vec gd = poison(size_t(n)), cd = Vec(size_t(n));
        pk::cuda::dequantize_4bit(gd.data(), pk::DType::F32, cp.data(), ca.data(), n, blocksize, type);
        pk::cpu::dequantize_4bit(cd.data(), pk::DType::F32, cp.data(), ca.data(), n, blocksize, type);
        expect_true(tag + " dequantize f32 equals the CPU's", same_bytes(gd, cd));
        std::vector<pk::bf16> gb(size_t(n), 0x7fc0), cb = std::vector<pk::bf16>(size_t(n));
        pk::cuda::dequantize_4bit(gb.data(), pk::DType::BF16, cp.data(), ca.data(), n, blocksize, type);
        pk::cpu::dequantize_4bit(cb.data(), pk::DType::BF16, cp.data(), ca.data(), n, blocksize, type);
        expect_true(tag + " dequantize bf16 equals the CPU's", same_bytes(gb, cb));
      }
    }

  // Double quantization: the mean of the block scales, then the scales in 8 bits around it.
  for (int64_t n : {1, 255, 256, 1000}) {
    Vec absmax = randn(size_t(n));
    for (float& v : absmax) v = std::abs(v) + 0.01f;
    const float gm = pk::cuda::absmax_mean(absmax.data(), n), cm = pk::cpu::absmax_mean(absmax.data(), n);
    expect_true("absmax_mean n=" + std::to_string(n) + " equals the CPU's", gm == cm);
    for (int64_t blocksize : {256, 64}) {
      const int64_t blocks = (n + blocksize - 1) / blocksize;
      const std::string tag = "8-bit dynamic n=" + std::to_string(n) + " blocksize=" + std::to_string(blocksize);
      Vec x = absmax;
      if (n > 4) x[4] = NAN;
      std::vector<uint8_t> gq(size_t(n), 0xAA), cq = std::vector<uint8_t>(size_t(n));
      Vec ga = poison(size_t(blocks)), ca(ga.size());
      pk::cuda::quantize_8bit_dynamic(gq.data(), ga.data(), x.data(), cm, n, blocksize);
      pk::cpu::quantize_8bit_dynamic(cq.data(), ca.data(), x.data(), cm, n, blocksize);
      expect_true(tag + " codes equal the CPU's", same_bytes(gq, cq));
      expect_true(tag + " absmax equals the CPU's", same_bytes(ga, ca));
      Vec gd = poison(size_t(n)), cd = Vec(size_t(n));
      pk::cuda::dequantize_8bit_dynamic(gd.data(), cq.data(), ca.data(), cm, n, blocksize);
      pk::cpu::dequantize_8bit_dynamic(cd.data(), cq.data(), ca.data(), cm, n, blocksize);
      expect_true(tag + " dequantize equals the CPU's", same_bytes(gd, cd));
    }
  }
  // A block of equal values: absmax 0, every code 0 (kernels.inc).
  {
    Vec x(300, 2.5f);
    std::vector<uint8_t> gq(300, 0xAA), cq(300);
    Vec ga(2), ca(2);
    pk::cuda::quantize_8bit_dynamic(gq.data(), ga.data(), x.data(), 2.5f, 300, 256);
    pk::cpu::quantize_8bit_dynamic(cq.data(), ca.data(), x.data(), 2.5f, 300, 256);
    expect_true("8-bit dynamic constant block equals the CPU's", same_bytes(gq, cq) && same_bytes(ga, ca));
  }

  // LLM.int8 rows: a zero row, a NaN, rows longer than a thread block.
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {17, 300}, {5, 1100}}) {
    Vec w = randn(size_t(rows * cols));
    if (rows > 1)
      for (int64_t c = 0; c < cols; c++) w[size_t(cols + c)] = 0.f;
    if (rows * cols > 10) w[10] = NAN;
    const std::string tag = "int8 rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
    std::vector<int8_t> gc(size_t(rows * cols), 77), cc(gc.size());
    Vec gs = poison(size_t(rows)), cs = Vec(size_t(rows));
    pk::cuda::quantize_int8_rowwise(gc.data(), gs.data(), w.data(), rows, cols);
    pk::cpu::quantize_int8_rowwise(cc.data(), cs.data(), w.data(), rows, cols);
    expect_true(tag + " codes equal the CPU's", same_bytes(gc, cc));
    expect_true(tag + " scales equal the CPU's", same_bytes(gs, cs));
    Vec gd = poison(size_t(rows * cols)), cd(gd.size());
    pk::cuda::dequantize_int8_rowwise(gd.data(), pk::DType::F32, cc.data(), cs.data(), rows, cols);
    pk::cpu::dequantize_int8_rowwise(cd.data(), pk::DType::F32, cc.data(), cs.data(), rows, cols);
    expect_true(tag + " dequantize equals the CPU's", same_bytes(gd, cd));
  }
}

namespace {

// A quantized W[rows, cols] in each format, with its dequantized values (by the CPU kernels).
struct QuantFixture {
  pk::QuantWeight q;
  std::vector<uint8_t> codes;
  Vec scales, w;
  QuantFixture(pk::QuantFormat format, int64_t rows, int64_t cols, int64_t blocksize = 64) {
    const int64_t n = rows * cols;
    const Vec x = randn(size_t(n), 0.1);
    w.resize(size_t(n));
    if (format == pk::QuantFormat::INT8) {
      codes.resize(size_t(n));
      scales.resize(size_t(rows));
      pk::cpu::quantize_int8_rowwise(reinterpret_cast<int8_t*>(codes.data()), scales.data(), x.data(), rows, cols);
      pk::cpu::dequantize_int8_rowwise(w.data(), pk::DType::F32, reinterpret_cast<int8_t*>(codes.data()), scales.data(),
                                       rows, cols);
    } else {
      const auto type = format == pk::QuantFormat::NF4 ? pk::Quant4Type::NF4 : pk::Quant4Type::FP4;
      codes.resize(size_t((n + 1) / 2));
      scales.resize(size_t((n + blocksize - 1) / blocksize));
      pk::cpu::quantize_4bit(codes.data(), scales.data(), x.data(), n, blocksize, type);
      pk::cpu::dequantize_4bit(w.data(), pk::DType::F32, codes.data(), scales.data(), n, blocksize, type);
    }
    q = {format, codes.data(), scales.data(), blocksize, rows, cols};
  }
};

struct Shape {
  int64_t M, N, K;
};

const char* format_name(pk::QuantFormat f) {
  return f == pk::QuantFormat::NF4 ? "nf4" : f == pk::QuantFormat::FP4 ? "fp4" : "int8";
}

}  // namespace

void check_gemm_quant() {
  for (auto format : {pk::QuantFormat::NF4, pk::QuantFormat::FP4, pk::QuantFormat::INT8})
    for (const auto& [M, N, K] : {Shape{1, 29, 37}, Shape{19, 33, 65}, Shape{40, 7, 129}}) {
      for (bool w_trans : {true, false}) {
        // w_trans: C[M,N] = A[M,K]·W[N,K]ᵀ; else C[M,N] = A[M,K]·W[K,N] (W stored [K,N]).
        const QuantFixture f(format, w_trans ? N : K, w_trans ? K : N);
        const Vec a = randn(size_t(M * K)), c0 = randn(size_t(M * N));
        Ref ref(size_t(M * N));
        for (int64_t i = 0; i < M; i++)
          for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
              acc += double(a[size_t(i * K + k)]) * f.w[size_t(w_trans ? j * K + k : k * N + j)];
            ref[size_t(i * N + j)] = 0.5 * acc + 2.0 * c0[size_t(i * N + j)];
          }
        const std::string tag = std::string("gemm_quant ") + format_name(format) + " M=" + std::to_string(M) +
                                " N=" + std::to_string(N) + " K=" + std::to_string(K) + (w_trans ? " X·Wᵀ" : " dY·W");
        Vec C = c0;
        pk::cuda::gemm_quant(M, N, K, 0.5f, {a.data(), pk::DType::F32, K, false}, f.q, w_trans, 2.f, C.data(), N);
        expect(tag, C, ref);
        // Decoded a few rows at a time (one row, or one 4-bit block's worth): the same result.
        for (int64_t chunk : {int64_t(1), int64_t(150)}) {
          C = c0;
          pk::cuda::gemm_quant_chunked(M, N, K, 0.5f, {a.data(), pk::DType::F32, K, false}, f.q, w_trans, 2.f, C.data(), N,
                                       chunk);
          expect(tag + " chunk " + std::to_string(chunk), C, ref);
        }
        // A transposed bf16 A (stored [K,M]), so the chunks skip rows of A rather than columns.
        std::vector<pk::bf16> at(size_t(K * M));
        Vec ar(size_t(M * K));
        for (int64_t i = 0; i < M; i++)
          for (int64_t k = 0; k < K; k++) {
            at[size_t(k * M + i)] = pk::f32_to_bf16(a[size_t(i * K + k)]);
            ar[size_t(i * K + k)] = pk::bf16_to_f32(at[size_t(k * M + i)]);
          }
        Ref ref16(size_t(M * N));
        for (int64_t i = 0; i < M; i++)
          for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
              acc += double(ar[size_t(i * K + k)]) * f.w[size_t(w_trans ? j * K + k : k * N + j)];
            ref16[size_t(i * N + j)] = acc;
          }
        C = poison(size_t(M * N));
        pk::cuda::gemm_quant_chunked(M, N, K, 1.f, {at.data(), pk::DType::BF16, M, true}, f.q, w_trans, 0.f, C.data(), N, 100);
        expect(tag + " bf16 Aᵀ chunked", C, ref16);
      }
    }
}

void check_lora_quant() {
  const int64_t M = 23, N = 31, K = 45, r = 4;
  const float s = 1.5f;
  for (auto format : {pk::QuantFormat::NF4, pk::QuantFormat::INT8})
  for (auto compute : {pk::Compute::F32, pk::Compute::BF16}) {
    const QuantFixture f(format, N, K, 32);
    const Vec X = randn(size_t(M * K)), A = randn(size_t(r * K)), B = randn(size_t(N * r)), bias = randn(size_t(N));
    // The quantized op must equal the f32 op on the dequantized W (itself checked in check_lora).
    Vec Yq = poison(size_t(M * N)), XAq = poison(size_t(M * r)), Y = poison(size_t(M * N)), XA = poison(size_t(M * r));
    pk::cuda::lora_forward_quant(Yq.data(), XAq.data(), X.data(), X.data(), f.q, A.data(), B.data(), bias.data(), s, M, N,
                                 K, r, compute);
    pk::cuda::lora_forward(Y.data(), XA.data(), X.data(), X.data(), f.w.data(), pk::DType::F32, A.data(), B.data(),
                           bias.data(), s, M, N, K, r, compute);
    const std::string tag = std::string("lora_quant ") + format_name(format) + (compute == pk::Compute::BF16 ? " bf16" : "");
    expect(tag + " Y", Yq, Ref(Y.begin(), Y.end()), 1e-6);
    expect(tag + " XA", XAq, Ref(XA.begin(), XA.end()), 1e-6);
    const Vec dY = randn(size_t(M * N)), dA0 = randn(size_t(r * K)), dB0 = randn(size_t(N * r));
    Vec dXq = poison(size_t(M * K)), dX = poison(size_t(M * K)), sq = poison(size_t(M * r)), sf = poison(size_t(M * r));
    Vec dAq = dA0, dBq = dB0, dA = dA0, dB = dB0;
    pk::cuda::lora_backward_quant(dXq.data(), nullptr, dAq.data(), dBq.data(), dY.data(), X.data(), XA.data(), f.q,
                                  A.data(), B.data(), s, M, N, K, r, sq.data(), compute);
    pk::cuda::lora_backward(dX.data(), nullptr, dA.data(), dB.data(), dY.data(), X.data(), XA.data(), f.w.data(),
                            pk::DType::F32, A.data(), B.data(), s, M, N, K, r, sf.data(), compute);
    expect(tag + " dX", dXq, Ref(dX.begin(), dX.end()), 1e-6);
    expect(tag + " dA", dAq, Ref(dA.begin(), dA.end()), 1e-6);
    expect(tag + " dB", dBq, Ref(dB.begin(), dB.end()), 1e-6);
  }
}

void check_adamw8bit() {
  // Tensors: 8-bit states over several blocks (the last one short), f32 states (small tensor),
  // an empty one, and one whose gradient holds a NaN (skipped whole: nothing may move).
  const int64_t sizes[] = {1000, 40, 0, 600};
  const pk::AdamWHyper h{1e-3, 0.9, 0.999, 1e-8, 5};
  struct State {
    Vec p, g, m, v, ma, va;
    std::vector<uint8_t> mc, vc;
  };
  std::vector<State> gpu(4), cpu(4);
  for (int t = 0; t < 4; t++) {
    const int64_t n = sizes[t], blocks = (n + pk::kAdamW8bitBlock - 1) / pk::kAdamW8bitBlock;
    State s;
    s.p = randn(size_t(n));
    s.g = randn(size_t(n));
    if (t == 3) s.g[size_t(n / 2)] = NAN;
    s.m = randn(size_t(n), 0.1);
    s.v = randn(size_t(n), 0.01);
    for (float& x : s.v) x = x * x;
    // Codes from a quantization of those moments by the CPU (m signed map, v unsigned).
    s.mc.assign(size_t(n), 0);
    s.vc.assign(size_t(n), 0);
    s.ma.assign(size_t(blocks), 0.f);
    s.va.assign(size_t(blocks), 0.f);
    for (int64_t i = 0; i < n; i++) {
      s.mc[size_t(i)] = uint8_t(std::uniform_int_distribution<int>(0, 255)(rng));
      s.vc[size_t(i)] = uint8_t(std::uniform_int_distribution<int>(0, 255)(rng));
    }
    for (auto& a : s.ma) a = 0.05f;
    for (auto& a : s.va) a = 0.002f;
    gpu[size_t(t)] = s;
    cpu[size_t(t)] = s;
  }
  auto refs = [&](std::vector<State>& st) {
    std::vector<pk::AdamW8bitRef> r;
    for (int t = 0; t < 4; t++) {
      State& s = st[size_t(t)];
      const bool f32 = t == 1;
      r.push_back({s.p.data(), s.g.data(), sizes[t], 0.01f, f32 ? nullptr : s.mc.data(), f32 ? nullptr : s.vc.data(),
                   f32 ? nullptr : s.ma.data(), f32 ? nullptr : s.va.data(), f32 ? s.m.data() : nullptr,
                   f32 ? s.v.data() : nullptr});
    }
    return r;
  };
  std::vector<State> quiet = gpu;  // the same update, its skip count not brought back
  auto rg = refs(gpu), rc = refs(cpu), rq = refs(quiet);
  const int64_t uncounted = pk::cuda::adamw8bit(rq.data(), 4, h, false);
  const int64_t skipped_g = pk::cuda::adamw8bit(rg.data(), 4, h, true), skipped_c = pk::cpu::adamw8bit(rc.data(), 4, h, true);
  expect_true("adamw8bit skips the NaN-gradient tensor (cuda " + std::to_string(skipped_g) + ", cpu " +
                  std::to_string(skipped_c) + ")",
              skipped_g == 1 && skipped_c == 1);
  for (int t = 0; t < 4; t++) {
    const State &g = gpu[size_t(t)], &c = cpu[size_t(t)];
    const std::string tag = "adamw8bit tensor " + std::to_string(t);
    expect(tag + " param", g.p, Ref(c.p.begin(), c.p.end()), 1e-6);
    if (t == 1) {
      expect(tag + " m (f32 state)", g.m, Ref(c.m.begin(), c.m.end()), 1e-6);
      expect(tag + " v (f32 state)", g.v, Ref(c.v.begin(), c.v.end()), 1e-6);
      continue;
    }
    expect(tag + " m absmax", g.ma, Ref(c.ma.begin(), c.ma.end()), 1e-6);
    expect(tag + " v absmax", g.va, Ref(c.va.begin(), c.va.end()), 1e-6);
    // A value within an f32 rounding of a midpoint may take the neighbouring code; anything
    // more than one code away, or more than a handful of neighbours, is a bug.
    int64_t near = 0;
    bool far = false;
    for (size_t i = 0; i < g.mc.size(); i++) {
      const int dm = std::abs(int(g.mc[i]) - int(c.mc[i])), dv = std::abs(int(g.vc[i]) - int(c.vc[i]));
      near += (dm == 1) + (dv == 1);
      far = far || dm > 1 || dv > 1;
    }
    expect_true(tag + " codes equal the CPU's (" + std::to_string(near) + " off by one)", !far && near <= 2);
    if (t == 3) expect_true(tag + " skipped: param unchanged", same_bytes(g.p, c.p));
  }
  bool same = uncounted == -1;
  for (int t = 0; t < 4; t++) same = same && same_bytes(quiet[size_t(t)].p, gpu[size_t(t)].p);
  expect_true("adamw8bit without the skip count: -1 back, the same update", same);
}

void check_bias() {
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {300, 5}, {64, 1025}}) {
    const Vec y0 = randn(size_t(N * C)), b = randn(size_t(C)), dy = randn(size_t(N * C)), db0 = randn(size_t(C));
    Vec y = y0, db = db0;
    pk::cuda::bias_add(y.data(), b.data(), N, C);
    pk::cuda::bias_backward(db.data(), dy.data(), N, C);
    Ref ry(size_t(N * C)), rdb(db0.begin(), db0.end());
    for (int64_t i = 0; i < N; i++)
      for (int64_t j = 0; j < C; j++) {
        ry[size_t(i * C + j)] = double(y0[size_t(i * C + j)]) + b[size_t(j)];
        rdb[size_t(j)] += dy[size_t(i * C + j)];
      }
    const std::string tag = "bias N=" + std::to_string(N) + " C=" + std::to_string(C);
    expect(tag + " add", y, ry);
    expect(tag + " backward", db, rdb);
  }
}
