/*
Layer normalization over the last axis (C channels), forward and backward.
Reference: bertnp/ops/layernorm.py (layernorm_forward / layernorm_backward).

    forward    mean = sum_c x[c] / C
               var  = sum_c (x[c] - mean)^2 / C          population variance, two passes (as the
                                                          reference; one-pass E[x^2]-E[x]^2 cancels)
               rstd = 1 / sqrt(var + eps)                eps inside the square root (BERT: 1e-12)
               xhat = (x - mean) * rstd
               out  = gamma * xhat + beta

    The forward keeps what the backward needs, the same cache as the reference: xhat (rows, C) and
    the row statistic rstd (rows,), so the backward never recomputes the mean or the variance.

    backward   dbeta[c]  = sum_rows dout[c]                        (out = ... + beta)
               dgamma[c] = sum_rows dout[c] * xhat[c]              (out = gamma * xhat + ...)
               dxhat     = dout * gamma
               dx        = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
               (mean and rstd depend on every x of the row: the mean term removes dxhat's component
                along the all-ones direction, the xhat term its component along xhat.)

Rounding: dxhat = dout * gamma is written __fmul_rn (a multiply the compiler may not fuse into the
following subtraction). With a fused multiply-add, dxhat - mean(dxhat) would keep the product's
rounding error, which is not 0 where the reference's is (exactly, for C = 1), and rstd (up to
1/sqrt(eps) = 1e6) multiplies whatever is left.

Versions:
  forward v1   one thread per row, sequential loops (uncoalesced: neighbouring threads are C apart).
  forward v2   one warp per row: lane l takes channels l, l+32, ...; sums by __shfl_xor_sync
               butterfly. Reads x twice (mean, then variance + write) -- the second read mostly hits
               L1/L2 for BERT's C = 768.
  backward v1  one thread per row for dx.
  backward v2  one warp per row for dx (two shuffle-reduced row means).
  param grads  dgamma, dbeta are sums over ROWS, a different reduction axis from dx:
               v1  one thread per channel, looping over every row (coalesced, but only C threads);
               v2  two deterministic stages, no atomics (so results are bit-reproducible):
                   layernorm_param_grad_partial: block (256 threads = 256 channels) x chunk of
                   rows_per_chunk rows -> partial[chunk][2][C]; then layernorm_param_grad_finalize
                   sums the chunks.
               With backward v1/v2 these read dout and xhat a second time, after the dx kernel.
  backward v3  dx AND the partial sums of dgamma, dbeta in one pass, so dout and xhat are read once
               (from DRAM; the second read of a row, for the write, hits L1/L2 as in v2). A block of
               4 warps takes a chunk of rows_per_chunk rows, a warp one row at a time (as v2); each
               warp adds its rows' dout * xhat and dout into its own slice of shared memory (lane l
               owns channels l, l + 32, ...: no two threads share an address, no atomics), and at
               the end the block sums its 4 slices in warp order into partial[chunk][2][C].
               layernorm_param_grad_finalize then sums the chunks: deterministic, bit-reproducible.
               Shared memory 4 x 2 x C floats (24 KB at C = 768): used for C <= 1536, else v2.
  finalize     one block per 32 channels and per output (dgamma, dbeta): a 32 x 16 block whose row
               ty sums chunks ty, ty + 16, ... (a warp reads 32 adjacent channels: coalesced), then
               thread ty = 0 adds the 16 row sums in order. Not a loop over every chunk in C threads.

Launch: v1 kernels: block 128, grid ceil(rows / 128).  v2 row kernels: block 256 = 8 rows, grid
ceil(rows / 8).  param v1: block 256, grid ceil(C / 256).  param v2 partial: block 256, grid
(ceil(C / 256), n_chunks).  v3: block 128 = 4 warps, grid n_chunks = ceil(rows / rows_per_chunk),
dynamic shared memory 32 C bytes.  finalize: block (32, 16), grid (ceil(C / 32), 2).
*/

#define WARP 32
#define FINAL_ROWS 16                                          // finalize: chunk sums per channel in parallel

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// ---------------------------------------------------------------------------------------- forward

extern "C" __global__ void layernorm_forward_v1(float* out, float* xhat, float* rstd, const float* x,
                                                const float* gamma, const float* beta,
                                                long long rows, int C, float eps) {
    // TASK 6.1 layernorm_forward_v1: one thread per row (kernels/README.md)
    long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;   // one thread per row
    if (row >= rows) return;
    const float* xr = x + row * C;
    float sum = 0.0f;
    for (int c = 0; c < C; c++) sum += xr[c];
    float mean = sum / C;
    float ss = 0.0f;
    for (int c = 0; c < C; c++) { float d = xr[c] - mean; ss += d * d; }
    float r = 1.0f / sqrtf(ss / C + eps);                      // 1/sqrtf, not rsqrtf: rsqrtf is 2 ulp
    rstd[row] = r;
    for (int c = 0; c < C; c++) {
        float h = (xr[c] - mean) * r;
        xhat[row * C + c] = h;
        out[row * C + c] = h * gamma[c] + beta[c];
    }
    // END TASK 6.1
}

extern "C" __global__ void layernorm_forward_v2(float* out, float* xhat, float* rstd, const float* x,
                                                const float* gamma, const float* beta,
                                                long long rows, int C, float eps) {
    // TASK 6.1 layernorm_forward_v2: one warp per row (kernels/README.md)
    int lane = threadIdx.x % WARP;
    long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;  // one warp per row
    if (row >= rows) return;
    const float* xr = x + row * C;
    float sum = 0.0f;
    for (int c = lane; c < C; c += WARP) sum += xr[c];
    float mean = warp_sum(sum) / C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += WARP) { float d = xr[c] - mean; ss += d * d; }
    float r = 1.0f / sqrtf(warp_sum(ss) / C + eps);
    if (lane == 0) rstd[row] = r;
    for (int c = lane; c < C; c += WARP) {
        float h = (xr[c] - mean) * r;
        xhat[row * C + c] = h;
        out[row * C + c] = h * gamma[c] + beta[c];
    }
    // END TASK 6.1
}

// ---------------------------------------------------------------------------------------- backward: dx

extern "C" __global__ void layernorm_backward_dx_v1(float* dx, const float* dout, const float* xhat,
                                                    const float* rstd, const float* gamma,
                                                    long long rows, int C) {
    long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= rows) return;
    const float* g = dout + row * C;
    const float* h = xhat + row * C;
    float s1 = 0.0f, s2 = 0.0f;                                // sum dxhat, sum dxhat * xhat
    for (int c = 0; c < C; c++) { float dh = __fmul_rn(g[c], gamma[c]); s1 += dh; s2 += dh * h[c]; }
    float mean1 = s1 / C, mean2 = s2 / C, r = rstd[row];
    for (int c = 0; c < C; c++)
        dx[row * C + c] = (__fmul_rn(g[c], gamma[c]) - mean1 - h[c] * mean2) * r;
}

extern "C" __global__ void layernorm_backward_dx_v2(float* dx, const float* dout, const float* xhat,
                                                    const float* rstd, const float* gamma,
                                                    long long rows, int C) {
    int lane = threadIdx.x % WARP;
    long long row = (long long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    const float* g = dout + row * C;
    const float* h = xhat + row * C;
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += WARP) { float dh = __fmul_rn(g[c], gamma[c]); s1 += dh; s2 += dh * h[c]; }
    float mean1 = warp_sum(s1) / C, mean2 = warp_sum(s2) / C, r = rstd[row];
    for (int c = lane; c < C; c += WARP)
        dx[row * C + c] = (__fmul_rn(g[c], gamma[c]) - mean1 - h[c] * mean2) * r;
}

// ---------------------------------------------------------------------------------------- backward: dgamma, dbeta

extern "C" __global__ void layernorm_param_grad_v1(float* dgamma, float* dbeta, const float* dout,
                                                   const float* xhat, long long rows, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;             // one thread per channel
    if (c >= C) return;
    float sg = 0.0f, sb = 0.0f;
    for (long long r = 0; r < rows; r++) {                     // a warp reads 32 adjacent channels
        float g = dout[r * C + c];
        sb += g;
        sg += g * xhat[r * C + c];
    }
    dgamma[c] = sg;
    dbeta[c] = sb;
}

extern "C" __global__ void layernorm_param_grad_partial(float* partial, const float* dout,
                                                        const float* xhat, long long rows, int C,
                                                        int rows_per_chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;             // channel
    int chunk = blockIdx.y;                                    // which block of rows
    if (c >= C) return;
    long long r0 = (long long)chunk * rows_per_chunk;
    long long r1 = min(r0 + rows_per_chunk, rows);
    float sg = 0.0f, sb = 0.0f;
    for (long long r = r0; r < r1; r++) {
        float g = dout[r * C + c];
        sb += g;
        sg += g * xhat[r * C + c];
    }
    partial[((long long)chunk * 2 + 0) * C + c] = sg;          // partial: (n_chunks, 2, C)
    partial[((long long)chunk * 2 + 1) * C + c] = sb;
}

extern "C" __global__ void layernorm_param_grad_finalize(float* dgamma, float* dbeta,
                                                         const float* partial, int n_chunks, int C) {
    __shared__ float rowsum[FINAL_ROWS][WARP + 1];             // +1: no bank conflict reading a column
    int tx = threadIdx.x, ty = threadIdx.y;                    // block (32, FINAL_ROWS)
    int c = blockIdx.x * WARP + tx;                            // channel
    int which = blockIdx.y;                                    // 0: dgamma, 1: dbeta
    float s = 0.0f;
    if (c < C)
        for (int k = ty; k < n_chunks; k += FINAL_ROWS)        // chunks ty, ty + 16, ... in order
            s += partial[((long long)k * 2 + which) * C + c];
    rowsum[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && c < C) {
        float total = 0.0f;
        for (int r = 0; r < FINAL_ROWS; r++) total += rowsum[r][tx];    // fixed order: deterministic
        (which == 0 ? dgamma : dbeta)[c] = total;
    }
}

// ---------------------------------------------------------------------------------------- backward v3: fused

extern "C" __global__ void layernorm_backward_v3(float* dx, float* partial, const float* dout,
                                                 const float* xhat, const float* rstd,
                                                 const float* gamma, long long rows, int C,
                                                 int rows_per_chunk) {
    extern __shared__ float acc[];                             // (nwarps, 2, C) column sums per warp
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, nwarps = blockDim.x / WARP;
    float* acc_g = acc + (long long)warp * 2 * C;              // this warp's sum of dout * xhat
    float* acc_b = acc_g + C;                                  // ... and of dout
    for (int c = lane; c < C; c += WARP) { acc_g[c] = 0.0f; acc_b[c] = 0.0f; }
    long long r0 = (long long)blockIdx.x * rows_per_chunk;
    long long r1 = min(r0 + rows_per_chunk, rows);
    for (long long row = r0 + warp; row < r1; row += nwarps) { // whole warps: the shuffles stay legal
        const float* g = dout + row * C;
        const float* h = xhat + row * C;
        float s1 = 0.0f, s2 = 0.0f;
        for (int c = lane; c < C; c += WARP) { float dh = __fmul_rn(g[c], gamma[c]); s1 += dh; s2 += dh * h[c]; }
        float mean1 = warp_sum(s1) / C, mean2 = warp_sum(s2) / C, r = rstd[row];
        for (int c = lane; c < C; c += WARP) {
            float gc = g[c], hc = h[c];
            dx[row * C + c] = (__fmul_rn(gc, gamma[c]) - mean1 - hc * mean2) * r;
            acc_g[c] += gc * hc;                               // lane-owned: no other thread writes c
            acc_b[c] += gc;
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {        // the chunk's sums, warps in order
        float sg = 0.0f, sb = 0.0f;
        for (int w = 0; w < nwarps; w++) { sg += acc[((long long)w * 2) * C + c]; sb += acc[((long long)w * 2 + 1) * C + c]; }
        partial[((long long)blockIdx.x * 2 + 0) * C + c] = sg;
        partial[((long long)blockIdx.x * 2 + 1) * C + c] = sb;
    }
}
