/*
Softmax cross-entropy over the vocabulary with ignore_index, forward and backward.
Reference: bertnp/ops/losses.py (cross_entropy_forward / cross_entropy_backward), which is
PyTorch's F.cross_entropy(logits, targets, ignore_index=-100) with mean reduction.

For one row z (V logits, V = vocabulary size, 30522 for BERT) with target t:

    forward    M      = max_c z[c]
               D      = sum_c exp(z[c] - M)                      (>= 1)
               nll    = log D - (z[t] - M)                       = logsumexp(z) - z[t]
               p[c]   = exp(z[c] - M) / D                        (saved for the backward)
               loss   = sum_{valid rows} nll / max(1, #valid)    (done by the caller on (N,) values)
    backward   dz[c]  = (p[c] - [c == t]) * valid * dloss / count    (softmax minus one-hot)

A NaN logit makes its row's nll and probabilities NaN, and so the loss, as in the reference (the
online update must not skip it: every comparison with NaN is false).

A row with t == ignore_index is not counted (valid = 0): its nll is computed with target 0, like the
reference's safe index, and multiplied by 0 later. A target outside [0, V) that is not ignored
would read out of bounds: the kernel writes NaN to that row's nll instead, so a bad label poisons
the loss visibly rather than silently (the host-side range check, which syncs, is optional).

The probabilities are materialised ONCE (the cache the reference defines); the backward reads them
and writes dlogits, the forward never builds shifted logits, exp(...) and probs as three arrays.

Versions:
  forward v1  one thread per row: three sequential passes (max, sum, write); the sum in double
              (see the kernel). For V = 30522 and a few hundred rows this leaves the GPU almost
              idle: for teaching only.
  forward v2  one BLOCK per row (V is large), ONLINE softmax: each thread keeps a running (max,
              sum) pair over its strided columns c = tid, tid + blockDim, ... (coalesced), so max
              and sum come from one read of the row. Pairs are merged within each warp by a
              __shfl_xor_sync butterfly, the per-warp results through shared memory by warp 0,
              and the row's (M, D) broadcast back through shared memory. A second read writes p.
  backward v1 grid-stride over all N*V elements (row = i / V: a 64-bit division per element).
  backward v2 one block per row: the row's scale valid * dloss / count is computed once.

dloss is read through a pointer (a 0-d device array; the loss's upstream gradient) or, when that
pointer is NULL, taken from dloss_value; count is a 0-d device array from the forward. Neither is
ever copied to the host: no synchronisation.

Launch: v1 block 128, grid ceil(N / 128).  v2: block 256 or 512 (a multiple of 32, <= 1024),
grid N.  backward v1: block 256, grid-stride.  backward v2: block 256, grid N.
*/

#define BNP_NEG_INF __int_as_float(0xff800000)
#define BNP_NAN __int_as_float(0x7fffffff)
#define WARP 32

// ---------------------------------------------------------------------------------------- forward v1

extern "C" __global__ void cross_entropy_forward_v1(float* probs, float* nll, const float* logits,
                                                    const long long* targets, long long ignore_index,
                                                    long long N, int V) {
    long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;   // one thread per row
    if (row >= N) return;
    const float* z = logits + row * V;
    float* p = probs + row * V;
    float M = BNP_NEG_INF;
    for (int c = 0; c < V; c++) M = fmaxf(M, z[c]);
    // The sum is kept in double: a float32 running sum of 30522 positive terms drifts by ~2e-5
    // (each add rounds relative to the growing total), more than the 1e-5 the kernel is held to.
    // The tree sums of v2 add numbers of similar size and do not need this.
    double Dd = 0.0;
    for (int c = 0; c < V; c++) Dd += (double)expf(z[c] - M);
    float D = (float)Dd;
    for (int c = 0; c < V; c++) p[c] = expf(z[c] - M) / D;
    long long t = targets[row];
    if (t == ignore_index) t = 0;                              // the reference's safe index
    nll[row] = (t >= 0 && t < V) ? logf(D) - (z[t] - M) : BNP_NAN;
}

// ---------------------------------------------------------------------------------------- forward v2

__device__ __forceinline__ void online_update(float& m, float& d, float v) {
    if (v > m) { d = d * expf(m - v) + 1.0f; m = v; }       // new max: rescale the sum so far
    else if (v != BNP_NEG_INF) { d += expf(v - m); }           // -inf logits contribute 0; a NaN
}                                                              // (both tests false) makes d NaN

__device__ __forceinline__ void online_combine(float& m, float& d, float m2, float d2) {
    float mn = fmaxf(m, m2);                                   // a pair that saw nothing finite is
    float a = (m == BNP_NEG_INF) ? d : d * expf(m - mn);       // (-inf, 0), or (-inf, NaN) after a
    float b = (m2 == BNP_NEG_INF) ? d2 : d2 * expf(m2 - mn);   // NaN: its d passes unchanged
    m = mn;
    d = a + b;
}

__device__ __forceinline__ void warp_combine(float& m, float& d) {
    for (int off = 16; off > 0; off >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, off);
        float d2 = __shfl_xor_sync(0xffffffffu, d, off);
        online_combine(m, d, m2, d2);
    }
}

extern "C" __global__ void cross_entropy_forward_v2(float* probs, float* nll, const float* logits,
                                                    const long long* targets, long long ignore_index,
                                                    long long N, int V) {
    __shared__ float sm_m[32], sm_d[32];                       // one (m, d) per warp, <= 32 warps
    long long row = blockIdx.x;                                // one block per row
    const float* z = logits + row * V;
    float* p = probs + row * V;
    int tid = threadIdx.x, lane = tid % WARP, warp = tid / WARP, nwarps = blockDim.x / WARP;

    float m = BNP_NEG_INF, d = 0.0f;                           // 1) this thread's columns, one pass
    for (int c = tid; c < V; c += blockDim.x) online_update(m, d, z[c]);
    warp_combine(m, d);                                        // 2) within the warp
    if (lane == 0) { sm_m[warp] = m; sm_d[warp] = d; }
    __syncthreads();
    if (warp == 0) {                                           // 3) across warps, by warp 0
        m = (lane < nwarps) ? sm_m[lane] : BNP_NEG_INF;
        d = (lane < nwarps) ? sm_d[lane] : 0.0f;
        warp_combine(m, d);
        if (lane == 0) { sm_m[0] = m; sm_d[0] = d; }
    }
    __syncthreads();
    float M = sm_m[0], D = sm_d[0];                            // the row's max and sum, everywhere

    for (int c = tid; c < V; c += blockDim.x) p[c] = expf(z[c] - M) / D;   // 4) write probs
    if (tid == 0) {
        long long t = targets[row];
        if (t == ignore_index) t = 0;
        nll[row] = (t >= 0 && t < V) ? logf(D) - (z[t] - M) : BNP_NAN;
    }
}

// ---------------------------------------------------------------------------------------- backward

extern "C" __global__ void cross_entropy_backward_v1(float* dlogits, const float* probs,
                                                     const long long* safe_targets, const float* valid,
                                                     const float* dloss_ptr, float dloss_value,
                                                     const float* count, long long N, int V) {
    float dl = dloss_ptr ? *dloss_ptr : dloss_value;
    float g = dl / *count;                                     // dloss / count, as the reference
    long long total = N * V, stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        long long row = i / V;
        int c = (int)(i - row * V);
        float onehot = (c == safe_targets[row]) ? 1.0f : 0.0f;
        dlogits[i] = (probs[i] - onehot) * (valid[row] * g);
    }
}

extern "C" __global__ void cross_entropy_backward_v2(float* dlogits, const float* probs,
                                                     const long long* safe_targets, const float* valid,
                                                     const float* dloss_ptr, float dloss_value,
                                                     const float* count, long long N, int V) {
    long long row = blockIdx.x;                                // one block per row
    float dl = dloss_ptr ? *dloss_ptr : dloss_value;
    float scale = valid[row] * (dl / *count);                  // once per row
    long long t = safe_targets[row];
    const float* p = probs + row * V;
    float* dz = dlogits + row * V;
    for (int c = threadIdx.x; c < V; c += blockDim.x)
        dz[c] = (p[c] - (c == t ? 1.0f : 0.0f)) * scale;
}
