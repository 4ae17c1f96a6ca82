// Checks every pk::cuda kernel, run under the CPU emulation (run.sh), against float64
// references written here: awkward shapes, poisoned outputs, aliasing, accumulation. The
// emulation uses host math, so tolerances are the tests' f32 ones; fast-math precision is
// for the GPU run (npm test on a CUDA machine) to confirm.
#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>

#include "check.h"
#include "cublaslt.cuh"
#include "peftkit/dropout_rng.h"
#include "peftkit/rope_freq.h"

// ---- GEMM ---------------------------------------------------------------------------------
static void check_gemm() {
  const int shapes[][3] = {{1, 1, 1}, {1, 37, 19}, {7, 1, 33}, {17, 23, 1}, {33, 65, 129}, {130, 257, 67}, {129, 3, 40},
                            {64, 48, 96}, {256, 136, 64}};
  for (auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    for (int combo = 0; combo < 16; combo++) {
      const bool ta = combo & 1, tb = combo & 2, a16 = combo & 4, b16 = combo & 8;
      // Operands stored with padded leading dimensions and (for bf16) an odd base offset now
      // and then, so the unaligned and partial-chunk load paths run too.
      const bool mult8 = M % 8 == 0 && N % 8 == 0 && K % 8 == 0;  // vector-load path
      const int64_t pad = mult8 ? 8 * (combo % 2) : (M + N + K + combo) % 3, off = a16 && b16 && combo % 5 == 0 ? 1 : 0;
      const int64_t arows = ta ? K : M, acols = ta ? M : K, lda = acols + pad;
      const int64_t brows = tb ? N : K, bcols = tb ? K : N, ldb = bcols + pad;
      Vec a = randn(size_t(off + arows * lda)), b = randn(size_t(off + brows * ldb));
      if (a16) a = round_bf16(a);
      if (b16) b = round_bf16(b);
      auto av = to_bf16(a), bv = to_bf16(b);
      pk::MatRef A{a16 ? static_cast<const void*>(av.data() + off) : a.data() + off, a16 ? pk::DType::BF16 : pk::DType::F32, lda, ta};
      pk::MatRef B{b16 ? static_cast<const void*>(bv.data() + off) : b.data() + off, b16 ? pk::DType::BF16 : pk::DType::F32, ldb, tb};
      auto opa = [&](int64_t i, int64_t k) { return double(a[size_t(off + (ta ? k * lda + i : i * lda + k))]); };
      auto opb = [&](int64_t k, int64_t j) { return double(b[size_t(off + (tb ? j * ldb + k : k * ldb + j))]); };
      Ref prod(size_t(M * N));
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
          double acc = 0;
          for (int64_t k = 0; k < K; k++) acc += opa(i, k) * opb(k, j);
          prod[size_t(i * N + j)] = acc;
        }
      const std::string tag = "gemm M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                              " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " a16=" + std::to_string(a16) +
                              " b16=" + std::to_string(b16);
      // f32 C, beta = 0 over NaN (must not be read), then alpha/beta accumulate.
      Vec C = poison(size_t(M * N));
      pk::cuda::gemm(M, N, K, 1.f, A, B, 0.f, C.data(), pk::DType::F32, N);
      expect(tag + " f32", C, prod);
      Vec c0 = randn(size_t(M * N));
      C = c0;
      pk::cuda::gemm(M, N, K, 0.7f, A, B, 0.5f, C.data(), pk::DType::F32, N);
      Ref r2(prod.size());
      for (size_t i = 0; i < r2.size(); i++) r2[i] = 0.7 * prod[i] + 0.5 * c0[i];
      expect(tag + " f32 alpha/beta", C, r2);
      if (combo % 4 == 0) {  // bf16 C
        std::vector<pk::bf16> Cb(size_t(M * N), 0x7fc0);
        pk::cuda::gemm(M, N, K, 1.f, A, B, 0.f, Cb.data(), pk::DType::BF16, N);
        Vec cf(Cb.size());
        for (size_t i = 0; i < cf.size(); i++) cf[i] = pk::bf16_to_f32(Cb[i]);
        expect(tag + " bf16 C", cf, prod, 1e-2);
      }
    }
  }
  // bf16 compute: f32 operands marked round_bf16 are read as their bf16 roundings (either side
  // may be stored bf16 instead); the reference multiplies the rounded values. From sm_80 these
  // take the tensor cores, f32 sides rounded as they are loaded: padded leading dimensions and
  // an offset base now and then run their scalar-load paths.
  for (auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    for (int combo = 0; combo < 16; combo++) {
      const bool ta = combo & 1, tb = combo & 2, a16 = combo & 4, b16 = combo & 8;
      const int64_t pad = combo % 3 == 0 ? 4 : 0, off = combo % 5 == 1 ? 1 : 0;
      const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad;
      Vec a = randn(size_t(off + (ta ? K : M) * lda)), b = randn(size_t(off + (tb ? N : K) * ldb));
      if (a16) a = round_bf16(a);
      if (b16) b = round_bf16(b);
      auto av = to_bf16(a), bv = to_bf16(b);
      pk::MatRef A{a16 ? static_cast<const void*>(av.data() + off) : a.data() + off,
                   a16 ? pk::DType::BF16 : pk::DType::F32, lda, ta, !a16};
      pk::MatRef B{b16 ? static_cast<const void*>(bv.data() + off) : b.data() + off,
                   b16 ? pk::DType::BF16 : pk::DType::F32, ldb, tb, !b16};
      const Vec ar = round_bf16(a), br = round_bf16(b);
      Ref prod(size_t(M * N));
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
          double acc = 0;
          for (int64_t k = 0; k < K; k++)
            acc += double(ar[size_t(off + (ta ? k * lda + i : i * lda + k))]) *
                   br[size_t(off + (tb ? j * ldb + k : k * ldb + j))];
          prod[size_t(i * N + j)] = acc;
        }
      Vec C = poison(size_t(M * N));
      pk::cuda::gemm(M, N, K, 1.f, A, B, 0.f, C.data(), pk::DType::F32, N);
      expect("gemm bf16 compute M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                 " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " a16=" + std::to_string(a16) +
                 " b16=" + std::to_string(b16),
             C, prod);
    }
  }
  // K = 0: C = beta·C.
  Vec a(4), b(4), C = {1, 2, 3, 4};
  pk::cuda::gemm(2, 2, 0, 1.f, {a.data(), pk::DType::F32, 1, false}, {b.data(), pk::DType::F32, 2, false}, 2.f, C.data(),
                 pk::DType::F32, 2);
  expect("gemm K=0", C, Ref{2, 4, 6, 8});
}

// ---- GEMM through cuBLASLt -----------------------------------------------------------------
// A CPU stand-in for libcublasLt that does what NVIDIA documents cublasLtMatmul to do:
// column-major D = alpha·op(A)·op(B) + beta·C (C not read when beta = 0), op per the TRANSA/
// TRANSB attributes, layouts of (type, rows, cols, ld), f32 or bf16 elements. It refuses
// layouts that do not fit the product, so a wrong row/column-major mapping in cublaslt.cu shows
// as a refusal or as wrong numbers in the GEMM checks run again through it.
namespace mock_lt {
using namespace pk::cuda::lt;
struct Desc {
  int32_t compute, scale, ta = kOpN, tb = kOpN;
};
struct Lay {
  int32_t type;
  int64_t rows, cols, ld;
};
int matmuls = 0, refusals = 0;
// The descriptors live as long as the process, as cublaslt.cu keeps its plans.
std::deque<Desc> descs;
std::deque<Lay> lays;
int preferences = 0;
Status refuse() {
  refusals++;
  return 7;  // CUBLAS_STATUS_INVALID_VALUE
}
Status create(Handle* h) {
  *h = reinterpret_cast<Handle>(1);
  return kSuccess;
}
Status desc_create(MatmulDesc* d, int32_t compute, int32_t scale) {
  *d = &descs.emplace_back(Desc{compute, scale});
  return kSuccess;
}
Status desc_set(MatmulDesc d, int32_t attr, const void* buf, size_t bytes) {
  auto* x = static_cast<Desc*>(d);
  if (bytes != sizeof(int32_t) || (attr != kDescTransA && attr != kDescTransB)) return refuse();
  std::memcpy(attr == kDescTransA ? &x->ta : &x->tb, buf, bytes);
  return kSuccess;
}
Status layout_create(Layout* l, int32_t type, uint64_t rows, uint64_t cols, int64_t ld) {
  if (ld < int64_t(rows) || (type != kR32F && type != kR16BF)) return refuse();
  *l = &lays.emplace_back(Lay{type, int64_t(rows), int64_t(cols), ld});
  return kSuccess;
}
Status pref_create(Preference* p) {
  preferences++;
  *p = &preferences;
  return kSuccess;
}
Status pref_set(Preference, int32_t, const void*, size_t) { return kSuccess; }
Status pref_destroy(Preference) {
  preferences--;
  return kSuccess;
}
// op(A) m×k, op(B) k×n, C m×n, A and B of one type, f32 accumulation.
bool fits(const Desc& d, const Lay& a, const Lay& b, const Lay& c) {
  const int64_t am = d.ta == kOpN ? a.rows : a.cols, ak = d.ta == kOpN ? a.cols : a.rows;
  const int64_t bk = d.tb == kOpN ? b.rows : b.cols, bn = d.tb == kOpN ? b.cols : b.rows;
  return d.compute == kCompute32F && d.scale == kR32F && a.type == b.type && am == c.rows && bn == c.cols && ak == bk &&
         (a.type == kR16BF || c.type == kR32F);
}
Status heuristic(Handle, MatmulDesc d, Layout a, Layout b, Layout c, Layout dd, Preference, int requested,
                 HeuristicResult* r, int* returned) {
  if (requested < 1 || c != dd || !fits(*static_cast<Desc*>(d), *static_cast<Lay*>(a), *static_cast<Lay*>(b), *static_cast<Lay*>(c)))
    return refuse();
  *r = HeuristicResult{};
  r->state = kSuccess;
  *returned = 1;
  return kSuccess;
}
double at(const Lay& l, const void* p, int64_t i, int64_t j) {
  const int64_t e = i + j * l.ld;
  return l.type == kR32F ? static_cast<const float*>(p)[e] : pk::bf16_to_f32(static_cast<const pk::bf16*>(p)[e]);
}
Status matmul(Handle, MatmulDesc desc, const void* alpha, const void* A, Layout la, const void* B, Layout lb,
              const void* beta, const void* C, Layout lc, void* D, Layout ld, const Algo*, void*, size_t, cudaStream_t) {
  const Desc& d = *static_cast<Desc*>(desc);
  const Lay &a = *static_cast<Lay*>(la), &b = *static_cast<Lay*>(lb), &c = *static_cast<Lay*>(lc);
  if (lc != ld || !fits(d, a, b, c)) return refuse();
  matmuls++;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const int64_t K = d.ta == kOpN ? a.cols : a.rows;
  std::vector<double> out(size_t(c.rows * c.cols));
  for (int64_t i = 0; i < c.rows; i++)
    for (int64_t j = 0; j < c.cols; j++) {
      double acc = 0;
      for (int64_t k = 0; k < K; k++)
        acc += (d.ta == kOpN ? at(a, A, i, k) : at(a, A, k, i)) * (d.tb == kOpN ? at(b, B, k, j) : at(b, B, j, k));
      out[size_t(i + j * c.rows)] = al * acc + (be != 0.f ? be * at(c, C, i, j) : 0.0);
    }
  for (int64_t i = 0; i < c.rows; i++)
    for (int64_t j = 0; j < c.cols; j++) {
      const float v = float(out[size_t(i + j * c.rows)]);
      if (c.type == kR32F) static_cast<float*>(D)[i + j * c.ld] = v;
      else static_cast<pk::bf16*>(D)[i + j * c.ld] = pk::f32_to_bf16(v);
    }
  return kSuccess;
}
const Api api{create, desc_create, desc_set, layout_create, pref_create, pref_set, pref_destroy, heuristic, matmul};
}  // namespace mock_lt

// Every GEMM check again with the stand-in installed: the products cuBLASLt takes (bf16 × bf16,
// f32 × f32 into f32) go through it, the rest through our kernels, all against the same
// references.
static void check_gemm_cublaslt() {
  pk::cuda::lt::install_for_test(&mock_lt::api, "cuBLASLt stand-in");
  check_gemm();
  pk::cuda::lt::install_for_test(nullptr, "");
  expect_true("cuBLASLt stand-in ran products (" + std::to_string(mock_lt::matmuls) + ")", mock_lt::matmuls > 250);
  expect_true("cuBLASLt stand-in refused nothing", mock_lt::refusals == 0);
  expect_true("every heuristic preference destroyed", mock_lt::preferences == 0);
}

// ---- LoRA ---------------------------------------------------------------------------------
static void check_lora() {
  const int64_t M = 37, N = 29, K = 53, r = 5;
  const float s = 0.75f;
  for (int variant = 0; variant < 4; variant++) {
    const bool wbf = variant & 1, dropout = variant & 2;
    Vec X = randn(size_t(M * K)), Xa = dropout ? randn(size_t(M * K)) : X, W = randn(size_t(N * K));
    if (wbf) W = round_bf16(W);
    auto Wb = to_bf16(W);
    const void* Wp = wbf ? static_cast<const void*>(Wb.data()) : W.data();
    const pk::DType wdt = wbf ? pk::DType::BF16 : pk::DType::F32;
    Vec A = randn(size_t(r * K)), B = randn(size_t(N * r)), bias = randn(static_cast<size_t>(N));
    Vec Y = poison(size_t(M * N)), XA = poison(size_t(M * r));
    pk::cuda::lora_forward(Y.data(), XA.data(), X.data(), Xa.data(), Wp, wdt, A.data(), B.data(),
                           variant == 1 ? nullptr : bias.data(), s, M, N, K, r, pk::Compute::F32);
    const Ref xa = ref_xa(Xa, A, M, K, r);
    Ref y(size_t(M * N));
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double acc = variant == 1 ? 0 : bias[size_t(j)];
        for (int64_t k = 0; k < K; k++) acc += double(X[size_t(i * K + k)]) * W[size_t(j * K + k)];
        for (int64_t q = 0; q < r; q++) acc += s * xa[size_t(i * r + q)] * B[size_t(j * r + q)];
        y[size_t(i * N + j)] = acc;
      }
    const std::string tag = "lora variant " + std::to_string(variant);
    expect(tag + " XA", XA, xa);
    expect(tag + " Y", Y, y);

    Vec dY = randn(size_t(M * N)), dX = poison(size_t(M * K)), dXa = poison(size_t(M * K)), scratch = poison(size_t(M * r));
    Vec dA0 = randn(size_t(r * K)), dB0 = randn(size_t(N * r)), dA = dA0, dB = dB0;
    pk::cuda::lora_backward(dX.data(), dropout ? dXa.data() : nullptr, dA.data(), dB.data(), dY.data(), Xa.data(), XA.data(), Wp,
                            wdt, A.data(), B.data(), s, M, N, K, r, scratch.data(), pk::Compute::F32);
    Ref dyb(size_t(M * r)), dx(size_t(M * K)), dxa(size_t(M * K)), da(size_t(r * K)), db(size_t(N * r));
    for (int64_t i = 0; i < M; i++)
      for (int64_t q = 0; q < r; q++) {
        double acc = 0;
        for (int64_t j = 0; j < N; j++) acc += double(dY[size_t(i * N + j)]) * B[size_t(j * r + q)];
        dyb[size_t(i * r + q)] = acc;
      }
    for (int64_t i = 0; i < M; i++)
      for (int64_t k = 0; k < K; k++) {
        double base = 0, low = 0;
        for (int64_t j = 0; j < N; j++) base += double(dY[size_t(i * N + j)]) * W[size_t(j * K + k)];
        for (int64_t q = 0; q < r; q++) low += s * dyb[size_t(i * r + q)] * A[size_t(q * K + k)];
        dx[size_t(i * K + k)] = dropout ? base : base + low;
        dxa[size_t(i * K + k)] = low;
      }
    for (int64_t q = 0; q < r; q++)
      for (int64_t k = 0; k < K; k++) {
        double acc = dA0[size_t(q * K + k)];
        for (int64_t i = 0; i < M; i++) acc += s * dyb[size_t(i * r + q)] * Xa[size_t(i * K + k)];
        da[size_t(q * K + k)] = acc;
      }
    for (int64_t j = 0; j < N; j++)
      for (int64_t q = 0; q < r; q++) {
        double acc = dB0[size_t(j * r + q)];
        for (int64_t i = 0; i < M; i++) acc += s * double(dY[size_t(i * N + j)]) * XA[size_t(i * r + q)];
        db[size_t(j * r + q)] = acc;
      }
    expect(tag + " dX", dX, dx);
    if (dropout) expect(tag + " dXa", dXa, dxa);
    expect(tag + " dA", dA, da);
    expect(tag + " dB", dB, db);
  }
}

// ---- embedding, norms, rope ---------------------------------------------------------------
static void check_embedding() {
  for (int64_t C : {35, 300}) {
    const int64_t N = 13, V = 7;
    std::vector<int32_t> ids(N);
    for (auto& i : ids) i = int32_t(rng() % V);
    Vec table = randn(size_t(V * C)), out = poison(size_t(N * C));
    pk::cuda::embedding_forward(out.data(), ids.data(), table.data(), pk::DType::F32, N, C, V, nullptr);
    Ref ref(size_t(N * C));
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = 0; c < C; c++) ref[size_t(n * C + c)] = table[size_t(ids[size_t(n)] * C + c)];
    expect("embedding forward", out, ref, 0);
    // A bf16 table widens exactly: the reference is the f32 gather of the rounded table.
    const std::vector<pk::bf16> table16 = to_bf16(table);
    const Vec rounded = round_bf16(table);
    out = poison(size_t(N * C));
    pk::cuda::embedding_forward(out.data(), ids.data(), table16.data(), pk::DType::BF16, N, C, V, nullptr);
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = 0; c < C; c++) ref[size_t(n * C + c)] = rounded[size_t(ids[size_t(n)] * C + c)];
    expect("embedding forward bf16", out, ref, 0);
    Vec dout = randn(size_t(N * C)), d0 = randn(size_t(V * C)), dt = d0;
    pk::cuda::embedding_backward(dt.data(), dout.data(), ids.data(), N, C, V, nullptr);
    Ref dref(d0.begin(), d0.end());
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = 0; c < C; c++) dref[size_t(ids[size_t(n)] * C + c)] += dout[size_t(n * C + c)];
    expect("embedding backward", dt, dref);

    // Ids out of range with a fault record (a training step on a GPU): recorded, never read
    // or written out of the table; the other rows as before.
    std::vector<int32_t> bad = ids;
    bad[3] = int32_t(V + 2);
    bad[9] = -1;
    const auto is_bad = [&](int64_t n) { return n == 3 || n == 9; };
    const auto fault_names_one = [&](const std::vector<double>& f, pk::IndexFaultOp op) {
      const bool at3 = f[2] == 3 && f[3] == double(V + 2), at9 = f[2] == 9 && f[3] == -1;
      return f[0] == 1 && f[1] == double(int(op)) && (at3 || at9) && f[4] == double(V);
    };
    std::vector<double> fault(pk::kIndexFaultDoubles, 0.0);
    out = poison(size_t(N * C));
    pk::cuda::embedding_forward(out.data(), bad.data(), table.data(), pk::DType::F32, N, C, V, fault.data());
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = 0; c < C; c++) ref[size_t(n * C + c)] = is_bad(n) ? 0.0 : table[size_t(bad[size_t(n)] * C + c)];
    expect("embedding forward, bad ids left zero", out, ref, 0);
    expect_true("embedding forward records a bad id", fault_names_one(fault, pk::IndexFaultOp::EmbeddingForward));
    std::fill(fault.begin(), fault.end(), 0.0);
    dt = d0;
    pk::cuda::embedding_backward(dt.data(), dout.data(), bad.data(), N, C, V, fault.data());
    dref.assign(d0.begin(), d0.end());
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = 0; c < C; c++)
        if (!is_bad(n)) dref[size_t(bad[size_t(n)] * C + c)] += dout[size_t(n * C + c)];
    expect("embedding backward, bad ids add nothing", dt, dref);
    expect_true("embedding backward records a bad id", fault_names_one(fault, pk::IndexFaultOp::EmbeddingBackward));
  }
}

static void check_norms() {
  for (int64_t C : {1, 7, 300, 1000}) {
    const int64_t N = 9;
    const float eps = 1e-5f;
    const std::string tag = " C=" + std::to_string(C);
    Vec x = randn(size_t(N * C)), w = randn(static_cast<size_t>(C)), b = randn(static_cast<size_t>(C)), g = randn(size_t(N * C));
    // RMSNorm
    Vec out = poison(size_t(N * C)), rstd = poison(static_cast<size_t>(N));
    pk::cuda::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    Ref ro(size_t(N * C)), rr(static_cast<size_t>(N)), rdx(size_t(N * C)), rdw(static_cast<size_t>(C));
    Vec dw0 = randn(static_cast<size_t>(C));
    for (int64_t j = 0; j < C; j++) rdw[size_t(j)] = dw0[size_t(j)];
    for (int64_t n = 0; n < N; n++) {
      double ss = 0, dot = 0;
      for (int64_t j = 0; j < C; j++) ss += double(x[size_t(n * C + j)]) * x[size_t(n * C + j)];
      const double r = 1.0 / std::sqrt(ss / double(C) + eps);
      rr[size_t(n)] = r;
      for (int64_t j = 0; j < C; j++) {
        const size_t e = size_t(n * C + j);
        ro[e] = x[e] * r * w[size_t(j)];
        dot += double(g[e]) * w[size_t(j)] * x[e];
        rdw[size_t(j)] += double(g[e]) * x[e] * r;
      }
      for (int64_t j = 0; j < C; j++) {
        const size_t e = size_t(n * C + j);
        rdx[e] = r * (double(w[size_t(j)]) * g[e] - x[e] * r * r * dot / double(C));
      }
    }
    expect("rmsnorm out" + tag, out, ro);
    expect("rmsnorm rstd" + tag, rstd, rr);
    Vec dx = poison(size_t(N * C)), dw = dw0;
    pk::cuda::rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), N, C);
    // C = 1 makes dx = r·w·g·(1 - x²r²) a cancellation: with r rounded to f32 on the way in,
    // about 1e-7 absolute of 1 - x²r² ≈ eps/x² is lost, so that shape gets a looser bound.
    const double dx_tol = C == 1 ? 1e-3 : 1e-5;
    expect("rmsnorm dx" + tag, dx, rdx, dx_tol);
    expect("rmsnorm dw" + tag, dw, rdw);
    dx = poison(size_t(N * C));
    pk::cuda::rmsnorm_backward(dx.data(), nullptr, g.data(), x.data(), w.data(), rstd.data(), N, C);
    expect("rmsnorm dx (frozen w)" + tag, dx, rdx, dx_tol);

    // LayerNorm
    Vec mean = poison(static_cast<size_t>(N));
    out = poison(size_t(N * C));
    rstd = poison(static_cast<size_t>(N));
    pk::cuda::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, eps);
    const size_t nN = size_t(N), nC = size_t(C);
    Ref lo(nN * nC), lm(nN), lr(nN), ldx(nN * nC), ldw(nC), ldb(nC);
    Vec db0 = randn(static_cast<size_t>(C));
    for (int64_t j = 0; j < C; j++) {
      ldw[size_t(j)] = dw0[size_t(j)];
      ldb[size_t(j)] = db0[size_t(j)];
    }
    for (int64_t n = 0; n < N; n++) {
      double mu = 0, var = 0;
      for (int64_t j = 0; j < C; j++) mu += x[size_t(n * C + j)];
      mu /= double(C);
      for (int64_t j = 0; j < C; j++) var += (x[size_t(n * C + j)] - mu) * (x[size_t(n * C + j)] - mu);
      const double r = 1.0 / std::sqrt(var / double(C) + eps);
      lm[size_t(n)] = mu;
      lr[size_t(n)] = r;
      double mg = 0, mgx = 0;
      for (int64_t j = 0; j < C; j++) {
        const size_t e = size_t(n * C + j);
        const double xh = (x[e] - mu) * r;
        lo[e] = xh * w[size_t(j)] + b[size_t(j)];
        mg += double(g[e]) * w[size_t(j)];
        mgx += double(g[e]) * w[size_t(j)] * xh;
        ldw[size_t(j)] += g[e] * xh;
        ldb[size_t(j)] += g[e];
      }
      mg /= double(C);
      mgx /= double(C);
      for (int64_t j = 0; j < C; j++) {
        const size_t e = size_t(n * C + j);
        ldx[e] = r * (double(g[e]) * w[size_t(j)] - mg - (x[e] - mu) * r * mgx);
      }
    }
    expect("layernorm out" + tag, out, lo);
    expect("layernorm mean" + tag, mean, lm);
    expect("layernorm rstd" + tag, rstd, lr);
    dx = poison(size_t(N * C));
    dw = dw0;
    Vec db = db0;
    pk::cuda::layernorm_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
    expect("layernorm dx" + tag, dx, ldx);
    expect("layernorm dw" + tag, dw, ldw);
    expect("layernorm db" + tag, db, ldb);
  }
}

static void check_rope() {
  const int64_t T = 11, D = 64, half = D / 2;
  std::vector<int32_t> pos(T);
  for (auto& p : pos) p = int32_t(rng() % 100000);
  pos[0] = 0;
  for (int scaled = 0; scaled < 2; scaled++) {
    pk::RopeScaling sc;
    if (scaled) sc = {8.f, 1.f, 4.f, 8192.f};
    const float theta = 500000.f;
    Vec cs = poison(size_t(T * half)), sn = poison(size_t(T * half));
    pk::cuda::rope_table(cs.data(), sn.data(), pos.data(), T, D, theta, sc);
    Ref rc(cs.size()), rs(sn.size());
    // The table's contract (kernels.inc): the f32 inverse frequencies transformers forms (the
    // CPU's own rope_inv_freq, itself checked against HF's formula by the ava tests), the angle
    // as one f32 product, its cos and sin in double.
    std::vector<float> inv(static_cast<size_t>(half));
    pk::rope_inv_freq(inv.data(), D, theta, sc);
    for (int64_t i = 0; i < half; i++) {
      for (int64_t t = 0; t < T; t++) {
        const double angle = double(float(pos[size_t(t)]) * inv[size_t(i)]);
        rc[size_t(t * half + i)] = std::cos(angle);
        rs[size_t(t * half + i)] = std::sin(angle);
      }
    }
    expect("rope_table cos scaled=" + std::to_string(scaled), cs, rc, 1e-6);
    expect("rope_table sin scaled=" + std::to_string(scaled), sn, rs, 1e-6);
  }
  const int64_t rope_shapes[][4] = {{2, 5, 3, 8}, {1, 3, 5, 128}};  // B, T, H, D (H·D/2 > one block)
  for (auto& rs : rope_shapes) {
    const int64_t B = rs[0], Tr = rs[1], H = rs[2], Dr = rs[3], hr = Dr / 2;
    Vec cs = randn(size_t(Tr * hr)), sn = randn(size_t(Tr * hr)), x = randn(size_t(B * Tr * H * Dr));
    Ref fwd(x.size()), bwd(x.size());
    for (int64_t row = 0; row < B * Tr * H; row++) {
      const int64_t t = row / H % Tr;
      for (int64_t i = 0; i < hr; i++) {
        const double c = cs[size_t(t * hr + i)], s = sn[size_t(t * hr + i)];
        const double x0 = x[size_t(row * Dr + i)], x1 = x[size_t(row * Dr + i + hr)];
        fwd[size_t(row * Dr + i)] = x0 * c - x1 * s;
        fwd[size_t(row * Dr + i + hr)] = x1 * c + x0 * s;
        bwd[size_t(row * Dr + i)] = x0 * c + x1 * s;
        bwd[size_t(row * Dr + i + hr)] = x1 * c - x0 * s;
      }
    }
    Vec out = poison(x.size());
    pk::cuda::rope_forward(out.data(), x.data(), cs.data(), sn.data(), B, Tr, H, Dr);
    expect("rope forward H=" + std::to_string(H) + " D=" + std::to_string(Dr), out, fwd);
    Vec inplace = x;
    pk::cuda::rope_backward(inplace.data(), inplace.data(), cs.data(), sn.data(), B, Tr, H, Dr);
    expect("rope backward (in place) H=" + std::to_string(H) + " D=" + std::to_string(Dr), inplace, bwd);
  }
}

// ---- elementwise --------------------------------------------------------------------------
static void check_elementwise() {
  const int64_t n = 1000;
  Vec x = randn(size_t(n), 3.0), y = randn(size_t(n), 3.0), d = randn(static_cast<size_t>(n));
  x[0] = -200.f;  // saturation
  x[1] = 200.f;
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  auto run1 = [&](const std::string& what, std::function<void(float*)> k, std::function<double(size_t)> f, double tol = 1e-5) {
    Vec o = poison(static_cast<size_t>(n));
    k(o.data());
    Ref r(static_cast<size_t>(n));
    for (size_t i = 0; i < r.size(); i++) r[i] = f(i);
    expect(what, o, r, tol);
  };
  run1("silu forward", [&](float* o) { pk::cuda::silu_forward(o, x.data(), n); }, [&](size_t i) { return x[i] * sig(x[i]); });
  run1("silu backward", [&](float* o) { pk::cuda::silu_backward(o, d.data(), x.data(), n); },
       [&](size_t i) { const double s = sig(x[i]); return d[i] * s * (1 + x[i] * (1 - s)); });
  const double k0 = std::sqrt(2 / M_PI), c = 0.044715;
  run1("gelu tanh forward", [&](float* o) { pk::cuda::gelu_forward(o, x.data(), n, true); },
       [&](size_t i) { const double v = x[i]; return 0.5 * v * (1 + std::tanh(k0 * (v + c * v * v * v))); });
  run1("gelu erf forward", [&](float* o) { pk::cuda::gelu_forward(o, x.data(), n, false); },
       [&](size_t i) { const double v = x[i]; return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); });
  run1("gelu tanh backward", [&](float* o) { pk::cuda::gelu_backward(o, d.data(), x.data(), n, true); }, [&](size_t i) {
    const double v = x[i], t = std::tanh(k0 * (v + c * v * v * v));
    return d[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k0 * (1 + 3 * c * v * v));
  });
  run1("gelu erf backward", [&](float* o) { pk::cuda::gelu_backward(o, d.data(), x.data(), n, false); }, [&](size_t i) {
    const double v = x[i];
    return d[i] * (0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI));
  });
  run1("relu forward", [&](float* o) { pk::cuda::relu_forward(o, x.data(), n); },
       [&](size_t i) { return x[i] > 0 ? double(x[i]) : 0.0; });
  run1("tanh forward", [&](float* o) { pk::cuda::tanh_forward(o, x.data(), n); },
       [&](size_t i) { return double(float(std::tanh(double(x[i])))); }, 0);
  {
    Vec th(static_cast<size_t>(n));
    pk::cuda::tanh_forward(th.data(), x.data(), n);
    run1("tanh backward", [&](float* o) { pk::cuda::tanh_backward(o, d.data(), th.data(), n); },
         [&](size_t i) { return double(float(double(d[i]) * (1.0 - double(th[i]) * th[i]))); }, 0);
    // Columns [3, 11) of rows of 20 into columns [1, 9) of rows of 12.
    const int64_t rows = 7;
    Vec src = randn(size_t(rows * 20)), dst = randn(size_t(rows * 12));
    Ref want(dst.begin(), dst.end());
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < 8; c++) want[size_t(r * 12 + 1 + c)] = src[size_t(r * 20 + 3 + c)];
    pk::cuda::copy_cols(dst.data(), 12, 1, src.data(), 20, 3, rows, 8);
    expect("copy_cols", dst, want, 0);
  }
  run1("relu backward", [&](float* o) { pk::cuda::relu_backward(o, d.data(), x.data(), n); },
       [&](size_t i) { return x[i] > 0 ? double(d[i]) : 0.0; });
  run1("swiglu forward", [&](float* o) { pk::cuda::swiglu_forward(o, x.data(), y.data(), n); },
       [&](size_t i) { return x[i] * sig(x[i]) * y[i]; });
  Vec dg = poison(static_cast<size_t>(n)), du = poison(static_cast<size_t>(n));
  pk::cuda::swiglu_backward(dg.data(), du.data(), d.data(), x.data(), y.data(), n);
  Ref rg(static_cast<size_t>(n)), ru(static_cast<size_t>(n));
  for (size_t i = 0; i < size_t(n); i++) {
    const double s = sig(x[i]);
    rg[i] = d[i] * y[i] * s * (1 + x[i] * (1 - s));
    ru[i] = d[i] * x[i] * s;
  }
  expect("swiglu backward dgate", dg, rg);
  expect("swiglu backward dup", du, ru);
  run1("add", [&](float* o) { pk::cuda::add(o, x.data(), y.data(), n); }, [&](size_t i) { return double(x[i]) + y[i]; });
  Vec a = x;
  pk::cuda::add(a.data(), a.data(), y.data(), n);
  Ref ra(static_cast<size_t>(n));
  for (size_t i = 0; i < ra.size(); i++) ra[i] = double(x[i]) + y[i];
  expect("add (out aliases a)", a, ra);
  Vec yy = y;
  pk::cuda::axpy(yy.data(), x.data(), 0.3f, n);
  for (size_t i = 0; i < ra.size(); i++) ra[i] = 0.3 * x[i] + y[i];
  expect("axpy", yy, ra);
  {
    Vec km = x;
    km[0] = INFINITY;
    std::vector<uint8_t> keep(static_cast<size_t>(n));
    for (size_t i = 0; i < keep.size(); i++) keep[i] = uint8_t(rng() % 2);
    keep[0] = 0;
    pk::cuda::keep_masked(km.data(), keep.data(), n);
    bool ok = true;
    for (size_t i = 0; i < keep.size(); i++) ok = ok && (keep[i] ? km[i] == x[i] || i == 0 : km[i] == 0.f);
    expect_true("keep_masked: zeros where not kept, the rest unchanged", ok && km[0] == 0.f);
  }
  // Casts: bit-exact with dtype.h, ties and NaN included.
  Vec special = x;
  special[2] = NAN;
  special[3] = INFINITY;
  special[4] = 1.00390625f;  // exactly halfway between two bf16 values: rounds to even
  special[5] = 1.01171875f;
  special[6] = 1e-40f;  // subnormal
  std::vector<pk::bf16> hb(size_t(n), 0);
  pk::cuda::cast_f32_to_bf16(hb.data(), special.data(), n);
  bool same = true;
  for (size_t i = 0; i < size_t(n); i++) same = same && hb[i] == pk::f32_to_bf16(special[i]);
  expect_true("cast f32 -> bf16 bit-exact", same);
  Vec back = poison(static_cast<size_t>(n));
  pk::cuda::cast_bf16_to_f32(back.data(), hb.data(), n);
  same = true;
  for (size_t i = 0; i < size_t(n); i++) {
    const float want = pk::bf16_to_f32(hb[i]);
    same = same && (std::memcmp(&want, &back[i], 4) == 0);
  }
  expect_true("cast bf16 -> f32 bit-exact", same);
}

static void check_dropout() {
  const int64_t n = 1001;
  const uint64_t seed = 0xdeadbeef12345ull, offset = 777;
  Vec x = randn(static_cast<size_t>(n));
  for (float p : {0.f, 0.3f, 1.f}) {
    Vec out = poison(static_cast<size_t>(n)), dx = poison(static_cast<size_t>(n));
    pk::cuda::dropout_forward(out.data(), x.data(), n, p, seed, offset);
    pk::cuda::dropout_backward(dx.data(), x.data(), n, p, seed, offset);
    bool same = true;
    int kept = 0;
    for (size_t i = 0; i < size_t(n); i++) {
      const bool keep = pk::dropout_keep(pk::dropout_key(seed), offset + i, p);
      kept += keep;
      const float want = keep ? x[i] * pk::dropout_scale(p) : 0.f;
      same = same && out[i] == want && dx[i] == want;
    }
    expect_true("dropout p=" + std::to_string(p) + " matches the host mask bit for bit", same);
    if (p == 0.3f) expect_true("dropout keeps about 70%", kept > 600 && kept < 800);
  }
}

// ---- attention ----------------------------------------------------------------------------
static void check_attention() {
  struct Cfg {
    int64_t B, Tq, Tk, Hq, Hkv, D;
  };
  // Lengths off the 16-row and 32-key tiles; the model head sizes 48/64/80/128 (1, 2, 3 and 4
  // features per lane, so the last lane slot is partial for 48 and 80); GQA groups of 1, 2, 3
  // and 4; Tk > Tq as a prefix or a KV cache, down to one query (a generation step).
  const Cfg cfgs[] = {{2, 37, 37, 4, 2, 16}, {1, 5, 40, 3, 1, 33},  {1, 20, 9, 2, 2, 64},  {1, 33, 33, 2, 1, 256},
                      {1, 3, 7, 1, 1, 1},    {2, 17, 50, 2, 1, 100}, {1, 45, 45, 8, 2, 128}, {1, 50, 50, 3, 1, 48},
                      {2, 19, 19, 2, 2, 80}, {1, 1, 77, 4, 1, 64},   {1, 1, 33, 6, 2, 128}, {1, 7, 40, 2, 1, 80}};
  for (const Cfg& c : cfgs) {
    const std::string tag = " B=" + std::to_string(c.B) + " Tq=" + std::to_string(c.Tq) + " Tk=" + std::to_string(c.Tk) +
                            " Hq=" + std::to_string(c.Hq) + " Hkv=" + std::to_string(c.Hkv) + " D=" + std::to_string(c.D);
    const float scale = float(1.0 / std::sqrt(double(c.D)));
    const size_t nq = size_t(c.B * c.Tq * c.Hq * c.D), nk = size_t(c.B * c.Tk * c.Hkv * c.D);
    Vec q = randn(nq), k = randn(nk), v = randn(nk), dout = randn(nq);
    Vec out = poison(nq), lse = poison(size_t(c.B * c.Hq * c.Tq));
    pk::cuda::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.D, scale);
    Ref ro(nq, 0.0), rl(lse.size()), rdq(nq, 0.0), rdk(nk, 0.0), rdv(nk, 0.0);
    const int64_t group = c.Hq / c.Hkv, off = c.Tk - c.Tq;
    auto qi = [&](int64_t b, int64_t i, int64_t h) { return size_t(((b * c.Tq + i) * c.Hq + h) * c.D); };
    auto ki = [&](int64_t b, int64_t j, int64_t h) { return size_t(((b * c.Tk + j) * c.Hkv + h) * c.D); };
    for (int64_t b = 0; b < c.B; b++)
      for (int64_t h = 0; h < c.Hq; h++) {
        const int64_t hk = h / group;
        for (int64_t i = 0; i < c.Tq; i++) {
          const int64_t jmax = std::min(c.Tk, i + off + 1);
          std::vector<double> s(size_t(std::max<int64_t>(jmax, 0)));
          double m = -INFINITY;
          for (int64_t j = 0; j < jmax; j++) {
            double dot = 0;
            for (int64_t d = 0; d < c.D; d++) dot += double(q[qi(b, i, h) + size_t(d)]) * k[ki(b, j, hk) + size_t(d)];
            s[size_t(j)] = dot * scale;
            m = std::max(m, s[size_t(j)]);
          }
          double l = 0;
          for (int64_t j = 0; j < jmax; j++) l += std::exp(s[size_t(j)] - m);
          const size_t li = size_t((b * c.Hq + h) * c.Tq + i);
          rl[li] = jmax > 0 ? m + std::log(l) : -INFINITY;
          if (jmax <= 0) continue;
          std::vector<double> p(static_cast<size_t>(jmax)), dp(static_cast<size_t>(jmax));
          for (int64_t j = 0; j < jmax; j++) p[size_t(j)] = std::exp(s[size_t(j)] - rl[li]);
          double delta = 0;
          for (int64_t d = 0; d < c.D; d++) {
            double o = 0;
            for (int64_t j = 0; j < jmax; j++) o += p[size_t(j)] * v[ki(b, j, hk) + size_t(d)];
            ro[qi(b, i, h) + size_t(d)] = o;
            delta += o * dout[qi(b, i, h) + size_t(d)];
          }
          for (int64_t j = 0; j < jmax; j++) {
            double acc = 0;
            for (int64_t d = 0; d < c.D; d++) acc += double(dout[qi(b, i, h) + size_t(d)]) * v[ki(b, j, hk) + size_t(d)];
            const double ds = p[size_t(j)] * (acc - delta);
            for (int64_t d = 0; d < c.D; d++) {
              rdv[ki(b, j, hk) + size_t(d)] += p[size_t(j)] * dout[qi(b, i, h) + size_t(d)];
              rdk[ki(b, j, hk) + size_t(d)] += scale * ds * q[qi(b, i, h) + size_t(d)];
              rdq[qi(b, i, h) + size_t(d)] += scale * ds * k[ki(b, j, hk) + size_t(d)];
            }
          }
        }
      }
    expect("attention out" + tag, out, ro);
    bool lse_ok = true;  // -inf where a query sees no key; compare the finite ones
    Ref rl_f(rl.size()), l_f(rl.size());
    for (size_t i = 0; i < rl.size(); i++) {
      if (std::isinf(rl[i])) lse_ok = lse_ok && std::isinf(lse[i]) && lse[i] < 0;
      rl_f[i] = std::isinf(rl[i]) ? 0 : rl[i];
      l_f[i] = std::isinf(rl[i]) ? 0 : lse[i];
    }
    expect_true("attention lse -inf for queries without keys" + tag, lse_ok);
    expect("attention lse" + tag, l_f, rl_f);
    Vec dq = poison(nq), dk = poison(nk), dv = poison(nk);
    pk::cuda::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(),
                                 lse.data(), c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.D, scale);
    expect("attention dq" + tag, dq, rdq);
    expect("attention dk" + tag, dk, rdk);
    expect("attention dv" + tag, dv, rdv);
  }
}

// ---- loss ---------------------------------------------------------------------------------
static void ce_reference(const Vec& logits, const std::vector<int32_t>& t, int64_t N, int64_t V, int32_t ignore, double gs,
                         Ref& loss, Ref& grad) {
  loss.assign(size_t(N), 0.0);
  grad.assign(size_t(N * V), 0.0);
  for (int64_t n = 0; n < N; n++) {
    if (t[size_t(n)] == ignore) continue;
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; j++) m = std::max(m, double(logits[size_t(n * V + j)]));
    for (int64_t j = 0; j < V; j++) s += std::exp(logits[size_t(n * V + j)] - m);
    const double lse = m + std::log(s);
    loss[size_t(n)] = lse - logits[size_t(n * V + t[size_t(n)])];
    for (int64_t j = 0; j < V; j++)
      grad[size_t(n * V + j)] = gs * (std::exp(logits[size_t(n * V + j)] - lse) - (j == t[size_t(n)] ? 1.0 : 0.0));
  }
}

static void check_loss() {
  const int32_t ignore = -100;
  for (int64_t V : {1, 5, 1000, 3000}) {
    const int64_t N = 7;
    Vec logits = randn(size_t(N * V), 4.0);
    std::vector<int32_t> t(N);
    for (auto& x : t) x = int32_t(rng() % V);
    t[2] = ignore;
    Ref rloss, rgrad;
    ce_reference(logits, t, N, V, ignore, 0.25, rloss, rgrad);
    Vec loss = poison(static_cast<size_t>(N)), grad = poison(size_t(N * V));
    pk::cuda::cross_entropy(loss.data(), grad.data(), logits.data(), t.data(), N, V, ignore, 0.25f);
    const std::string tag = " V=" + std::to_string(V);
    expect("cross_entropy loss" + tag, loss, rloss);
    expect("cross_entropy grad" + tag, grad, rgrad);
    Vec inplace = logits;
    loss = poison(static_cast<size_t>(N));
    pk::cuda::cross_entropy(loss.data(), inplace.data(), inplace.data(), t.data(), N, V, ignore, 0.25f);
    expect("cross_entropy loss (in place)" + tag, loss, rloss);
    expect("cross_entropy grad (in place)" + tag, inplace, rgrad);
  }
  for (int wbf = 0; wbf < 2; wbf++) {
    const int64_t N = 10, C = 17, V = 50, chunk = 3;
    Vec H = randn(size_t(N * C)), W = randn(size_t(V * C));
    if (wbf) W = round_bf16(W);
    auto Wb = to_bf16(W);
    std::vector<int32_t> t(N);
    for (auto& x : t) x = int32_t(rng() % V);
    t[4] = ignore;
    // With the bf16 W, a target out of range and a fault record: recorded, the row ignored.
    std::vector<int32_t> given = t;
    if (wbf) t[7] = ignore, given[7] = int32_t(V + 3);
    std::vector<double> fault(pk::kIndexFaultDoubles, 0.0);
    Vec logits(size_t(N * V));
    Ref logits_d(size_t(N * V));
    for (int64_t n = 0; n < N; n++)
      for (int64_t v = 0; v < V; v++) {
        double acc = 0;
        for (int64_t c = 0; c < C; c++) acc += double(H[size_t(n * C + c)]) * W[size_t(v * C + c)];
        logits[size_t(n * V + v)] = float(acc);
      }
    Ref rloss, rgrad;
    ce_reference(logits, t, N, V, ignore, 0.5, rloss, rgrad);
    Ref rdH(size_t(N * C), 0.0), rdW(size_t(V * C));
    Vec dW0 = randn(size_t(V * C));
    for (size_t i = 0; i < rdW.size(); i++) rdW[i] = dW0[i];
    for (int64_t n = 0; n < N; n++)
      for (int64_t v = 0; v < V; v++)
        for (int64_t c = 0; c < C; c++) {
          rdH[size_t(n * C + c)] += rgrad[size_t(n * V + v)] * W[size_t(v * C + c)];
          rdW[size_t(v * C + c)] += rgrad[size_t(n * V + v)] * H[size_t(n * C + c)];
        }
    Vec loss = poison(static_cast<size_t>(N)), dH = poison(size_t(N * C)), dW = dW0, scratch = poison(size_t(chunk * V));
    pk::cuda::linear_cross_entropy(loss.data(), dH.data(), dW.data(), H.data(), wbf ? static_cast<const void*>(Wb.data()) : W.data(),
                                   wbf ? pk::DType::BF16 : pk::DType::F32, given.data(), N, C, V, ignore, 0.5f, chunk, scratch.data(),
                                   pk::Compute::F32, wbf ? fault.data() : nullptr);
    const std::string tag = wbf ? " (bf16 W, a bad target)" : " (f32 W)";
    if (wbf)
      expect_true("linear_cross_entropy records the bad target",
                  fault == std::vector<double>{1, double(int(pk::IndexFaultOp::Targets)), 7, double(V + 3), double(V), ignore});
    expect("linear_cross_entropy loss" + tag, loss, rloss);
    expect("linear_cross_entropy dH" + tag, dH, rdH);
    expect("linear_cross_entropy dW" + tag, dW, rdW);
  }
}

// ---- optimizer ----------------------------------------------------------------------------
static void check_optim() {
  const int64_t n1 = 1000, n2 = 3;
  Vec p1 = randn(static_cast<size_t>(n1)), g1 = randn(static_cast<size_t>(n1)), m1 = randn(size_t(n1), 0.1), v1 = Vec(size_t(n1));
  Vec p2 = randn(static_cast<size_t>(n2)), g2 = randn(static_cast<size_t>(n2)), m2 = randn(size_t(n2), 0.1), v2 = Vec(size_t(n2));
  for (float& x : v1) x = float(std::abs(randn(1)[0]) * 0.01);
  for (float& x : v2) x = float(std::abs(randn(1)[0]) * 0.01);
  pk::ParamRef refs[3] = {{p1.data(), g1.data(), m1.data(), v1.data(), n1, 0.01f},
                          {nullptr, nullptr, nullptr, nullptr, 0, 0.f},
                          {p2.data(), g2.data(), m2.data(), v2.data(), n2, 0.f}};
  double want = 0;
  for (float g : g1) want += double(g) * g;
  for (float g : g2) want += double(g) * g;
  const double got = pk::cuda::grad_sumsq(refs, 3);
  expect_true("grad_sumsq", std::abs(got - want) <= 1e-12 * want);
  double into = -1.0;  // overwritten, not added to
  pk::cuda::grad_sumsq_into(&into, refs, 3);
  expect_true("grad_sumsq_into", std::abs(into - want) <= 1e-12 * want);
  for (int64_t n : {int64_t(1), int64_t(255), int64_t(1000)}) {
    double acc = 0.5, ref_sum = 0.5;  // added to
    for (int64_t i = 0; i < n; i++) ref_sum += double(g1[size_t(i)]);
    pk::cuda::sum_into(&acc, g1.data(), n);
    expect_true("sum_into n=" + std::to_string(n), std::abs(acc - ref_sum) <= 1e-12 * (1 + std::abs(ref_sum)));
  }
  const pk::AdamWHyper h{1e-3f, 0.9f, 0.999f, 1e-8f, 3};
  auto reference = [&](const Vec& p, const Vec& g, const Vec& m, const Vec& v, double wd, Ref& rp, Ref& rm, Ref& rv) {
    const double bc1 = 1 - std::pow(0.9, 3), bc2 = 1 - std::pow(0.999, 3);
    for (size_t i = 0; i < p.size(); i++) {
      double pi = p[i] * (1 - 1e-3 * wd);
      rm.push_back(0.9 * m[i] + 0.1 * g[i]);
      rv.push_back(0.999 * v[i] + 0.001 * double(g[i]) * g[i]);
      pi -= 1e-3 * (rm.back() / bc1) / (std::sqrt(rv.back() / bc2) + 1e-8);
      rp.push_back(pi);
    }
  };
  Ref rp1, rm1, rv1, rp2, rm2, rv2;
  reference(p1, g1, m1, v1, 0.01, rp1, rm1, rv1);
  reference(p2, g2, m2, v2, 0.0, rp2, rm2, rv2);
  // The CPU's AdamW on copies: the two take the same f32 operations, so the same bits.
  Vec cp1 = p1, cm1 = m1, cv1 = v1;
  const pk::ParamRef cpu_ref{cp1.data(), g1.data(), cm1.data(), cv1.data(), n1, 0.01f};
  pk::cpu::adamw(&cpu_ref, 1, h);
  pk::cuda::adamw(refs, 3, h);
  expect("adamw param == CPU", p1, Ref(cp1.begin(), cp1.end()), 0);
  expect("adamw m == CPU", m1, Ref(cm1.begin(), cm1.end()), 0);
  expect("adamw v == CPU", v1, Ref(cv1.begin(), cv1.end()), 0);
  expect("adamw param", p1, rp1);
  expect("adamw m", m1, rm1);
  expect("adamw v", v1, rv1);
  expect("adamw param (no decay)", p2, rp2);
  Vec g1c = g1;
  pk::cuda::grad_scale(refs, 3, 0.5f);
  Ref half(g1c.begin(), g1c.end());
  for (double& x : half) x *= 0.5;
  expect("grad_scale", g1, half, 0);
}

// ---- LLM.int8 -----------------------------------------------------------------------------
// bitsandbytes' int8_vectorwise_quant on the host (the same f32 roundings), and its product.
static void check_llm_int8() {
  const int64_t M = 19, N = 21, K = 37, r = 3;
  const float s = 0.5f;
  for (float threshold : {0.f, 6.f}) {
    Vec X = randn(size_t(M * K)), Wf = randn(size_t(N * K), 0.05);
    X[3 * K + 5] = 40.f;   // an outlier: column 5 is an outlier column
    X[7 * K + 5] = 5.5f;   // just under: still counts in row 7's absmax
    X[11 * K + 20] = -6.f;  // exactly on the threshold: an outlier
    std::vector<int8_t> cb(size_t(N * K));
    Vec scb(static_cast<size_t>(N));
    for (int64_t j = 0; j < N; j++) {
      float m = 0.f;
      for (int64_t k = 0; k < K; k++) m = std::max(m, std::fabs(Wf[size_t(j * K + k)]));
      scb[size_t(j)] = m;
      for (int64_t k = 0; k < K; k++) cb[size_t(j * K + k)] = int8_t(std::nearbyint(Wf[size_t(j * K + k)] * (127.f / m)));
    }
    std::vector<uint8_t> out_ref(size_t(K), 0);
    if (threshold > 0)
      for (int64_t i = 0; i < M; i++)
        for (int64_t k = 0; k < K; k++)
          if (!(std::fabs(X[size_t(i * K + k)]) < threshold)) out_ref[size_t(k)] = 1;
    std::vector<int8_t> ca_ref(size_t(M * K));
    Vec sca_ref(static_cast<size_t>(M));
    for (int64_t i = 0; i < M; i++) {
      float m = 0.f;
      for (int64_t k = 0; k < K; k++) {
        const float a = std::fabs(X[size_t(i * K + k)]);
        if ((threshold == 0.f || a < threshold) && a > m) m = a;
      }
      sca_ref[size_t(i)] = m;
      for (int64_t k = 0; k < K; k++)
        ca_ref[size_t(i * K + k)] = out_ref[size_t(k)] ? 0 : int8_t(std::nearbyint(X[size_t(i * K + k)] * (127.f / m)));
    }
    std::vector<int8_t> ca(size_t(M * K), 0x55);
    std::vector<uint8_t> outl(size_t(K), 0xaa);
    Vec sca = poison(size_t(M));
    pk::cuda::quantize_int8_vectorwise(ca.data(), sca.data(), outl.data(), X.data(), M, K, threshold);
    const std::string tag = "llm_int8 threshold " + std::to_string(int(threshold));
    expect_true(tag + " codes", ca == ca_ref);
    expect(tag + " row scales", sca, sca_ref, 0);
    expect_true(tag + " outlier columns", outl == out_ref);

    for (bool lora : {false, true}) {
      Vec A = randn(size_t(r * K), 0.1), B = randn(size_t(N * r), 0.1), bias = randn(size_t(N)), Xa = randn(size_t(M * K));
      Vec Y = poison(size_t(M * N)), XA = poison(size_t(M * r));
      std::vector<int8_t> sc_ca(size_t(M * K));
      Vec sc_sca(static_cast<size_t>(M));
      std::vector<uint8_t> sc_out(static_cast<size_t>(K));
      std::vector<int32_t> sc_cols(static_cast<size_t>(K));
      pk::LlmInt8Scratch sc;
      sc.ca = sc_ca.data();
      sc.sca = sc_sca.data();
      sc.outlier = sc_out.data();
      sc.cols = sc_cols.data();
      pk::QuantWeight w;
      w.format = pk::QuantFormat::INT8;
      w.codes = cb.data();
      w.scales = scb.data();
      w.rows = N;
      w.cols = K;
      pk::cuda::llm_int8_forward(Y.data(), lora ? XA.data() : nullptr, X.data(), Xa.data(), w, threshold,
                                 lora ? A.data() : nullptr, lora ? B.data() : nullptr, bias.data(), s, M, N, K,
                                 lora ? r : 0, sc);
      Ref y(size_t(M * N));
      const Ref xa = ref_xa(Xa, A, M, K, r);
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
          double acc = 0, f = 0;
          for (int64_t k = 0; k < K; k++) {
            acc += double(ca_ref[size_t(i * K + k)]) * cb[size_t(j * K + k)];
            if (out_ref[size_t(k)]) f += double(X[size_t(i * K + k)]) * (double(cb[size_t(j * K + k)]) * scb[size_t(j)] / 127.0);
          }
          double v = acc * sca_ref[size_t(i)] * scb[size_t(j)] / (127.0 * 127.0) + bias[size_t(j)] + f;
          if (lora)
            for (int64_t q = 0; q < r; q++) v += s * xa[size_t(i * r + q)] * B[size_t(j * r + q)];
          y[size_t(i * N + j)] = v;
        }
      expect(tag + (lora ? " lora Y" : " Y"), Y, y);
      if (lora) expect(tag + " lora XA", XA, xa);
    }
  }
}

// ---- column scales and row norms (IA3, DoRA) ------------------------------------------------
// dx and y are one f32 product per element, so they must equal the host's bits; ds and the
// norms are double sums rounded once, within the f32 rounding of the float64 reference.
static void check_colscale() {
  auto same_bits = [](const Vec& a, const Vec& b) { return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0; };
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 1}, {1, 37}, {5, 1}, {33, 65}, {300, 5}, {40, 1025}}) {
    const size_t n = size_t(N * C), nc = size_t(C);
    const std::string tag = "colscale N=" + std::to_string(N) + " C=" + std::to_string(C);
    const Vec x = randn(n), s = randn(nc), dy = randn(n), ds0 = randn(nc);
    Vec want_y(n), want_dx(n);
    Ref want_ds(ds0.begin(), ds0.end()), want_ds_zero(nc, 0.0);
    for (size_t i = 0; i < n; i++) {
      want_y[i] = x[i] * s[i % nc];
      want_dx[i] = dy[i] * s[i % nc];
      want_ds[i % nc] += double(dy[i]) * x[i];
      want_ds_zero[i % nc] += double(dy[i]) * x[i];
    }
    Vec y = poison(n);
    pk::cuda::mul_cols(y.data(), x.data(), s.data(), N, C);
    expect_true(tag + " mul_cols bits", same_bits(y, want_y));
    y = x;
    pk::cuda::mul_cols(y.data(), y.data(), s.data(), N, C);
    expect_true(tag + " mul_cols in place bits", same_bits(y, want_y));

    Vec dx = poison(n), ds = ds0;
    pk::cuda::mul_cols_backward(dx.data(), ds.data(), dy.data(), x.data(), s.data(), N, C);
    expect_true(tag + " backward dx bits", same_bits(dx, want_dx));
    expect(tag + " backward ds accumulates", ds, want_ds, 1e-7);
    Vec ds_alone(nc, 0.f);
    pk::cuda::mul_cols_backward(nullptr, ds_alone.data(), dy.data(), x.data(), s.data(), N, C);
    expect(tag + " backward ds alone", ds_alone, want_ds_zero, 1e-7);
    dx = poison(n);
    pk::cuda::mul_cols_backward(dx.data(), nullptr, dy.data(), x.data(), s.data(), N, C);
    expect_true(tag + " backward dx alone bits", same_bits(dx, want_dx));
    Vec g = dy;  // dx written over dy
    ds = ds0;
    pk::cuda::mul_cols_backward(g.data(), ds.data(), g.data(), x.data(), s.data(), N, C);
    expect_true(tag + " backward dx = dy bits", same_bits(g, want_dx));
    expect(tag + " backward ds with dx = dy", ds, want_ds, 1e-7);
    Vec xx = x;  // dx written over x
    ds = ds0;
    pk::cuda::mul_cols_backward(xx.data(), ds.data(), dy.data(), xx.data(), s.data(), N, C);
    expect_true(tag + " backward dx = x bits", same_bits(xx, want_dx));
    expect(tag + " backward ds with dx = x", ds, want_ds, 1e-7);
  }
  for (auto [R, C] : {std::pair<int64_t, int64_t>{1, 1}, {1, 300}, {37, 1}, {9, 37}, {5, 1000}, {3, 0}}) {
    const std::string tag = "row_norms R=" + std::to_string(R) + " C=" + std::to_string(C);
    Vec w = randn(size_t(R * C));
    // Rows whose f32 squares would overflow / underflow: the double sum keeps them.
    if (R >= 5)
      for (int64_t c = 0; c < C; c++) {
        w[size_t(1 * C + c)] *= 1e30f;
        w[size_t(2 * C + c)] *= 1e-30f;
        w[size_t(3 * C + c)] = 0.f;
      }
    for (bool b16 : {false, true}) {
      const Vec wv = b16 ? round_bf16(w) : w;
      const auto wb = to_bf16(w);
      Ref want(static_cast<size_t>(R));
      for (int64_t r = 0; r < R; r++) {
        double ss = 0;
        for (int64_t c = 0; c < C; c++) ss += double(wv[size_t(r * C + c)]) * wv[size_t(r * C + c)];
        want[size_t(r)] = std::sqrt(ss);
      }
      Vec out = poison(size_t(R));
      pk::cuda::row_norms(out.data(), b16 ? static_cast<const void*>(wb.data()) : w.data(),
                          b16 ? pk::DType::BF16 : pk::DType::F32, R, C);
      for (int64_t r = 0; r < R; r++)  // row by row: the 1e30 row would hide the others
        expect(tag + (b16 ? " bf16" : " f32") + " row " + std::to_string(r), Vec{out[size_t(r)]},
               Ref{want[size_t(r)]}, 1e-7);
    }
  }
  // DoRA's scale and magnitude gradient: one rounding each (f32 division; the gradient in double).
  for (int64_t n : {int64_t(1), int64_t(300), int64_t(1537)}) {
    const std::string tag = "dora n=" + std::to_string(n);
    Vec m = randn(size_t(n)), norms = randn(size_t(n)), dg = randn(size_t(n)), dm0 = randn(size_t(n));
    for (float& v : norms) v = std::abs(v) * 30.f + 1e-3f;
    Vec g = poison(size_t(n)), gm1 = poison(size_t(n)), wg = Vec(size_t(n)), wgm1 = Vec(size_t(n));
    pk::cuda::dora_scale(g.data(), gm1.data(), m.data(), norms.data(), n);
    for (size_t o = 0; o < size_t(n); o++) wg[o] = m[o] / norms[o], wgm1[o] = wg[o] - 1.f;
    expect_true(tag + " scale bits", same_bits(g, wg) && same_bits(gm1, wgm1));
    Vec dm = dm0, wdm = dm0;
    pk::cuda::dora_magnitude_backward(dm.data(), dg.data(), norms.data(), n);
    for (size_t o = 0; o < size_t(n); o++) wdm[o] = float(double(dm0[o]) + double(dg[o]) / double(norms[o]));
    expect_true(tag + " magnitude backward bits", same_bits(dm, wdm));
  }
}

// check_quant.cc: the bitsandbytes formats, against the CPU kernels' bytes.
void check_quant();
void check_gemm_quant();
void check_lora_quant();
void check_adamw8bit();
void check_bias();

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  const std::pair<const char*, void (*)()> families[] = {
      {"gemm", check_gemm},       {"gemm_cublaslt", check_gemm_cublaslt}, {"lora", check_lora}, {"embedding", check_embedding}, {"norm", check_norms},
      {"rope", check_rope},       {"elementwise", check_elementwise}, {"dropout", check_dropout},
      {"attention", check_attention}, {"loss", check_loss}, {"optim", check_optim},
      {"quant", check_quant},     {"gemm_quant", check_gemm_quant}, {"lora_quant", check_lora_quant},
      {"adamw8bit", check_adamw8bit}, {"bias", check_bias}, {"colscale", check_colscale},
      {"llm_int8", check_llm_int8}};
  for (auto& [name, fn] : families) {
    if (!only.empty() && only != name) continue;
    const int before = failures;
    try {
      fn();
    } catch (const std::exception& e) {
      failures++;
      printf("FAIL %s: exception %s\n", name, e.what());
    }
    printf("%-12s %s\n", name, failures == before ? "ok" : "FAILED");
    fflush(stdout);
  }
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
