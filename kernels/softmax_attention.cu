/*
Attention softmax with BERT's padding mask, fused: forward and backward.
Reference: bertnp/ops/softmax.py (softmax_forward / softmax_backward). NumPy is always the truth.

The operation, one row at a time (a row = one query of one head; K = number of keys):

    forward    v[k] = s[k] + mask[b, k]                 (mask: 0 for real keys, a huge negative
                                                          number -- float32's minimum -- for padding)
               M    = max_k v[k]                        (subtracting M keeps expf from overflowing)
               p[k] = exp(v[k] - M) / sum_j exp(v[j] - M)

    backward   dp -> ds:  ds[k] = p[k] * (dp[k] - sum_j dp[j] p[j])
               (the softmax Jacobian is diag(p) - p p^T, applied to dp). The mask is a constant:
               it has no gradient, and the backward never needs it, only the saved probs p.

"Fused" means the mask add, the max, the exponentials and the normalisation happen in one kernel
that reads the scores once or twice and writes the probabilities once; the plain CuPy version
materialises scores + mask, exp(...) and the division as separate full-size arrays.

Layout. scores and probs are C-contiguous (rows, K) with rows = B * nh * Tq. The mask is one row of
K floats per batch element (HF's (B, 1, 1, K) additive mask), shared by the rows_per_batch = nh*Tq
rows of that batch element: mask row = row / rows_per_batch. mask_stride is K, or 0 when a single
mask row is broadcast over the whole batch. mask may be NULL (no mask).

Edge cases, exactly as the reference:
  * a row whose every key is masked with float32's minimum: all v are equal, so p is uniform (HF);
  * a row of -inf (an infinite mask): M is -inf; the reference shifts by 0 instead, every exp is 0,
    the sum is 0 and it divides by 1, so the row is all zeros, never NaN;
  * a NaN score makes its whole row NaN (the sum is NaN), so it shows downstream as in PyTorch; every
    comparison with NaN is false, so each test below is written to let NaN through, never to drop it.

Versions (each is checked against the NumPy reference before it is timed):
  v1  one thread per row. Three sequential passes over the row (max, sum of exp, write).
      Simplest possible; the reads of neighbouring threads are K floats apart (uncoalesced), so it
      is slow, but every line maps to a line of the reference.
  v2  one warp (32 threads) per row. Lane l handles keys l, l+32, l+64, ... so a warp reads 32
      consecutive floats at a time (coalesced); the max and the sum are combined across lanes with
      a butterfly of __shfl_xor_sync (after 5 steps every lane holds the full result).
  v3  one warp per row with the ONLINE softmax (Milakov & Gimelshein 2018): each lane keeps a running
      max m and a running sum d of exp(v - m), rescaling d when m grows, so max and sum come from
      ONE pass over the row; pairs (m, d) are combined across lanes by the same butterfly. Two
      reads of the row instead of three.
  backward v1 one thread per row; backward v2 one warp per row (one shuffle-reduced dot product).

Launch: v1 and backward v1: block 128 threads, grid ceil(rows / 128).
        v2, v3, backward v2: block 256 threads = 8 warps = 8 rows, grid ceil(rows / 8).
A warp whose row is past the end returns as a whole, so the full-mask shuffles stay legal.
64-bit offsets: rows * K can pass 2^31 for long sequences and large batches.
*/

#define BNP_NEG_INF __int_as_float(0xff800000)   // -infinity (NVRTC has no <math.h> INFINITY)
#define BNP_POS_INF __int_as_float(0x7f800000)
#define WARP 32

// ---------------------------------------------------------------------------------------- helpers

__device__ __forceinline__ float warp_sum(float v) {
    // butterfly: at step `off` lane i adds lane i^off; after 16, 8, 4, 2, 1 every lane has the total
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ __forceinline__ float finite_or_zero(float m) {
    // the reference shifts by 0 when the row max is not finite (a row of -inf)
    return (fabsf(m) < BNP_POS_INF) ? m : 0.0f;
}

// ---------------------------------------------------------------------------------------- forward v1

extern "C" __global__ void softmax_forward_v1(float* probs, const float* scores, const float* mask,
                                              long long rows, int K, long long rows_per_batch,
                                              long long mask_stride) {
    long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;   // one thread per row
    if (row >= rows) return;
    const float* s = scores + row * K;
    const float* m = mask ? mask + (row / rows_per_batch) * mask_stride : nullptr;
    float* p = probs + row * K;

    float maxval = BNP_NEG_INF;                                // pass 1: max of s + mask
    for (int k = 0; k < K; k++) maxval = fmaxf(maxval, s[k] + (m ? m[k] : 0.0f));
    maxval = finite_or_zero(maxval);

    float sum = 0.0f;                                          // pass 2: exponentials and their sum
    for (int k = 0; k < K; k++) {
        float e = expf(s[k] + (m ? m[k] : 0.0f) - maxval);
        p[k] = e;                                              // park exp in the output
        sum += e;
    }
    float denom = (sum == 0.0f) ? 1.0f : sum;                  // an all -inf row stays 0; NaN stays NaN
    for (int k = 0; k < K; k++) p[k] = p[k] / denom;           // pass 3: normalise
}

// ---------------------------------------------------------------------------------------- forward v2

extern "C" __global__ void softmax_forward_v2(float* probs, const float* scores, const float* mask,
                                              long long rows, int K, long long rows_per_batch,
                                              long long mask_stride) {
    int lane = threadIdx.x % WARP;
    long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;  // one warp per row
    if (row >= rows) return;                                   // the whole warp leaves together
    const float* s = scores + row * K;
    const float* m = mask ? mask + (row / rows_per_batch) * mask_stride : nullptr;
    float* p = probs + row * K;

    float maxval = BNP_NEG_INF;                                // each lane: max over its strided keys
    for (int k = lane; k < K; k += WARP) maxval = fmaxf(maxval, s[k] + (m ? m[k] : 0.0f));
    maxval = finite_or_zero(warp_max(maxval));                 // the row max, in every lane

    float sum = 0.0f;
    for (int k = lane; k < K; k += WARP) {
        float e = expf(s[k] + (m ? m[k] : 0.0f) - maxval);
        p[k] = e;                                              // a lane re-reads only what it wrote
        sum += e;
    }
    sum = warp_sum(sum);
    float denom = (sum == 0.0f) ? 1.0f : sum;
    for (int k = lane; k < K; k += WARP) p[k] = p[k] / denom;
}

// ---------------------------------------------------------------------------------------- forward v3

__device__ __forceinline__ void online_update(float& m, float& d, float v) {
    // add one value v to the running pair (m = max so far, d = sum of exp(x - m) so far)
    if (v > m) {                     // new max: rescale the old sum to the new reference point
        d = d * expf(m - v) + 1.0f;  // (m = -inf: d is 0 and expf(-inf) = 0, so d becomes 1)
        m = v;
    } else if (v != BNP_NEG_INF) {   // v = -inf contributes exp(-inf) = 0; skipping it avoids -inf - -inf.
        d += expf(v - m);            // NaN lands here (v > m and v == -inf are both false for NaN):
    }                                // exp(NaN) = NaN poisons d, and so the row, as in the reference
}

__device__ __forceinline__ void online_combine(float& m, float& d, float m2, float d2) {
    // merge two pairs: both sums are moved to the larger max. A pair with m = -inf has seen nothing
    // finite: its d is 0 (or NaN, if it saw a NaN) and passes as it is; testing for it avoids
    // exp(-inf - -inf) = NaN where there was no NaN.
    float mn = fmaxf(m, m2);
    float a = (m == BNP_NEG_INF) ? d : d * expf(m - mn);
    float b = (m2 == BNP_NEG_INF) ? d2 : d2 * expf(m2 - mn);
    m = mn;
    d = a + b;
}

extern "C" __global__ void softmax_forward_v3(float* probs, const float* scores, const float* mask,
                                              long long rows, int K, long long rows_per_batch,
                                              long long mask_stride) {
    int lane = threadIdx.x % WARP;
    long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    const float* s = scores + row * K;
    const float* msk = mask ? mask + (row / rows_per_batch) * mask_stride : nullptr;
    float* p = probs + row * K;

    float m = BNP_NEG_INF, d = 0.0f;                           // one pass: running max and sum
    for (int k = lane; k < K; k += WARP) online_update(m, d, s[k] + (msk ? msk[k] : 0.0f));
    for (int off = 16; off > 0; off >>= 1) {                   // butterfly over (m, d) pairs
        float m2 = __shfl_xor_sync(0xffffffffu, m, off);
        float d2 = __shfl_xor_sync(0xffffffffu, d, off);
        online_combine(m, d, m2, d2);
    }
    float shift = finite_or_zero(m);                           // all -inf row: shift 0, d = 0
    float denom = (d == 0.0f) ? 1.0f : d;                      // (not d > 0: NaN must not become 1)
    for (int k = lane; k < K; k += WARP)                       // second (and last) pass: write
        p[k] = expf(s[k] + (msk ? msk[k] : 0.0f) - shift) / denom;
}

// ---------------------------------------------------------------------------------------- backward

extern "C" __global__ void softmax_backward_v1(float* dscores, const float* dprobs, const float* probs,
                                               long long rows, int K) {
    long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;   // one thread per row
    if (row >= rows) return;
    const float* dp = dprobs + row * K;
    const float* p = probs + row * K;
    float* ds = dscores + row * K;
    float dot = 0.0f;                                          // sum_j dp_j p_j
    for (int k = 0; k < K; k++) dot += dp[k] * p[k];
    for (int k = 0; k < K; k++) ds[k] = p[k] * (dp[k] - dot);
}

extern "C" __global__ void softmax_backward_v2(float* dscores, const float* dprobs, const float* probs,
                                               long long rows, int K) {
    int lane = threadIdx.x % WARP;
    long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;  // one warp per row
    if (row >= rows) return;
    const float* dp = dprobs + row * K;
    const float* p = probs + row * K;
    float* ds = dscores + row * K;
    float dot = 0.0f;
    for (int k = lane; k < K; k += WARP) dot += dp[k] * p[k];
    dot = warp_sum(dot);
    for (int k = lane; k < K; k += WARP) ds[k] = p[k] * (dp[k] - dot);
}
