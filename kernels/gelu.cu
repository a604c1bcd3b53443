/*
GELU, forward and backward, elementwise. Reference: bertnp/ops/activations.py (gelu_forward /
gelu_backward).

    exact ("gelu", BERT's):     out = x * Phi(x),   Phi(x) = 0.5 * (1 + erf(x / sqrt 2))
                                dx  = dout * (Phi(x) + x * phi(x)),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    tanh ("gelu_new"):          u   = sqrt(2/pi) * (x + 0.044715 x^3),   t = tanh(u)
                                out = 0.5 x (1 + t)
                                dx  = dout * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2))

approximate: 0 = exact erf form, 1 = tanh form (a run-time flag: one branch per launch, uniform
across threads, so it costs nothing).

erff is CUDA's full-precision error function (max 2 ulp), not a 1e-7 polynomial. The formula is the
reference's, 0.5 * (1 + erf(...)), including its cancellation for x << 0 (where erfcf(-x/sqrt 2)/2
would be more accurate): the kernel must agree with NumPy, not improve on it.

Versions:
  v1  grid-stride loop, one float per thread per iteration.
  v2  float4: each thread moves 16 bytes per load/store (fewer memory instructions in flight per
      byte). Needs 16-byte aligned pointers (the Python side checks, else uses v1). The n % 4
      leftover elements are done by the first n % 4 threads of the grid, one each.

Launch: block 256, grid min(ceil(items / 256), 4096) with items = n (v1) or n / 4 (v2): a grid-stride
loop, so the cap only bounds the grid, never the coverage.
Elementwise, so memory-bound: forward reads x and writes out (8 B/elem), backward reads x, dout
and writes dx (12 B/elem).
*/

#define SQRT_HALF 0.70710678118654752440f         // 1 / sqrt(2)
#define INV_SQRT_2PI 0.39894228040143267794f      // 1 / sqrt(2 pi)
#define SQRT_2_OVER_PI 0.79788456080286535588f    // sqrt(2 / pi)
#define GELU_COEF 0.044715f

__device__ __forceinline__ float gelu_fwd(float x, int approximate) {
    float cdf;
    if (approximate == 0) {
        cdf = 0.5f * (1.0f + erff(x * SQRT_HALF));
    } else {
        cdf = 0.5f * (1.0f + tanhf(SQRT_2_OVER_PI * (x + GELU_COEF * (x * x * x))));
    }
    return x * cdf;
}

__device__ __forceinline__ float gelu_bwd(float x, float dout, int approximate) {
    if (approximate == 0) {
        float cdf = 0.5f * (1.0f + erff(x * SQRT_HALF));
        float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
        return dout * (cdf + x * pdf);                    // d[x Phi(x)] = Phi + x phi
    }
    float x2 = x * x;
    float t = tanhf(SQRT_2_OVER_PI * (x + GELU_COEF * x2 * x));
    float du_dx = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEF * x2);
    return dout * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du_dx);
}

// ---------------------------------------------------------------------------------------- v1

extern "C" __global__ void gelu_forward_v1(float* out, const float* x, long long n, int approximate) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = gelu_fwd(x[i], approximate);
}

extern "C" __global__ void gelu_backward_v1(float* dx, const float* x, const float* dout, long long n,
                                            int approximate) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dx[i] = gelu_bwd(x[i], dout[i], approximate);
}

// ---------------------------------------------------------------------------------------- v2 (float4)

extern "C" __global__ void gelu_forward_v2(float* out, const float* x, long long n, int approximate) {
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long n4 = n / 4;                                      // whole float4 groups
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float4* o4 = reinterpret_cast<float4*>(out);
    for (long long i = tid; i < n4; i += stride) {
        float4 v = x4[i];                                      // one 16-byte load
        v.x = gelu_fwd(v.x, approximate);
        v.y = gelu_fwd(v.y, approximate);
        v.z = gelu_fwd(v.z, approximate);
        v.w = gelu_fwd(v.w, approximate);
        o4[i] = v;                                             // one 16-byte store
    }
    long long tail = n - 4 * n4;                               // 0..3 leftovers
    if (tid < tail) out[4 * n4 + tid] = gelu_fwd(x[4 * n4 + tid], approximate);
}

extern "C" __global__ void gelu_backward_v2(float* dx, const float* x, const float* dout, long long n,
                                            int approximate) {
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long n4 = n / 4;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* g4 = reinterpret_cast<const float4*>(dout);
    float4* d4 = reinterpret_cast<float4*>(dx);
    for (long long i = tid; i < n4; i += stride) {
        float4 v = x4[i], g = g4[i], r;
        r.x = gelu_bwd(v.x, g.x, approximate);
        r.y = gelu_bwd(v.y, g.y, approximate);
        r.z = gelu_bwd(v.z, g.z, approximate);
        r.w = gelu_bwd(v.w, g.w, approximate);
        d4[i] = r;
    }
    long long tail = n - 4 * n4;
    if (tid < tail) dx[4 * n4 + tid] = gelu_bwd(x[4 * n4 + tid], dout[4 * n4 + tid], approximate);
}
