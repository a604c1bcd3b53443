/*
Dropout with counter-based random numbers: the mask and the output in one pass, and the backward.
Reference: bertnp/ops/dropout.py, and bertnp.backend.philox_bits16 (NumPy's Philox4x64-10): these
kernels draw the SAME bits as NumPy, so both backends drop the same elements for the same key.

    key (seed, step, site)    step = the model's forward counter, site = which dropout in the model
    bits16(e)                 16 random bits of element e (below)
    keep[e] = bits16(e) >= T  T = round(p * 65536): P(drop) = T / 65536
    out[e]  = x[e] * scale * keep[e]          scale = 1 / (1 - p)   (a dropped NaN stays NaN, as x * 0)
    dx[e]   = dout[e] * scale * keep[e]       (out is x times a constant: the same factor passes back)

Philox4x64-10 (Salmon, Moraes, Dror, Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3"; the
Random123 constants, as NumPy's). A counter-based generator is a keyed bijection of a 256-bit
counter: 10 rounds of two 64x64 -> 128-bit multiplies whose high and low halves are xor-ed into the
other words, the key bumped by two Weyl constants between rounds. There is no state to seed or to
store: the bits of any element follow from (key, counter) alone, so every thread computes its own.

    key     = (seed, 0)
    counter = (b + 1, 0, step, site)       for block b = 0, 1, ... (NumPy increments before use)
    block b gives 4 words of 64 bits = 16 values of 16 bits, for elements 16b .. 16b + 15:
    bits16(e) = (word[(e / 4) % 4] >> (16 (e % 4))) & 0xFFFF        with b = e / 16

Versions: one. Each thread of a 256-thread block computes one Philox block (16 elements) of the
block's tile of 256 x 16 = 4096 elements and parks the 16-bit values in shared memory (8 KB); then
the block walks the tile with consecutive threads on consecutive elements (coalesced reads of x,
writes of out and of the 1-byte mask). Grid-stride over tiles. The mask-only kernel (other dtypes:
the wrapper multiplies with CuPy) and the float32 backward (grid-stride) complete the set.

Launch: block DROPOUT_BLOCK = 256 (the shared tile is sized for it), grid min(4096, ceil(n / 4096));
backward: block 256, grid min(4096, ceil(n / 256)).
*/

#define DROPOUT_BLOCK 256
#define TILE (DROPOUT_BLOCK * 16)

#define PHILOX_M0 0xD2E7470EE14C6C93ULL      // multipliers
#define PHILOX_M1 0xCA5A826395121157ULL
#define PHILOX_W0 0x9E3779B97F4A7C15ULL      // key bumps (golden ratio, sqrt(3) - 1)
#define PHILOX_W1 0xBB67AE8584CAA73BULL

typedef unsigned long long u64;

__device__ __forceinline__ void philox4x64_10(u64 c[4], u64 k0, u64 k1) {
    #pragma unroll
    for (int round = 0; round < 10; round++) {
        if (round > 0) { k0 += PHILOX_W0; k1 += PHILOX_W1; }
        u64 hi0 = __umul64hi(PHILOX_M0, c[0]), lo0 = PHILOX_M0 * c[0];
        u64 hi1 = __umul64hi(PHILOX_M1, c[2]), lo1 = PHILOX_M1 * c[2];
        u64 n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

__device__ __forceinline__ void tile_bits(unsigned short* bits, long long tile, u64 seed, u64 step,
                                          u64 site) {
    // thread t: Philox block b = tile * 256 + t -> bits[16 t .. 16 t + 15]
    u64 b = (u64)tile * DROPOUT_BLOCK + threadIdx.x;
    u64 c[4] = {b + 1ULL, 0ULL, step, site};
    philox4x64_10(c, seed, 0ULL);
    #pragma unroll
    for (int w = 0; w < 4; w++) {
        #pragma unroll
        for (int k = 0; k < 4; k++) bits[threadIdx.x * 16 + w * 4 + k] = (unsigned short)(c[w] >> (16 * k));
    }
}

template <class Visit>
__device__ __forceinline__ void for_each_element(long long n, u64 seed, u64 step, u64 site, Visit visit) {
    // visit(e, bits16(e)) for every element, tile by tile: the block's threads compute the tile's
    // bits into shared memory, then walk the tile with consecutive threads on consecutive elements
    __shared__ unsigned short bits[TILE];
    long long tiles = (n + TILE - 1) / TILE;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        tile_bits(bits, tile, seed, step, site);
        __syncthreads();
        long long base = tile * TILE;
        for (int j = threadIdx.x; j < TILE; j += DROPOUT_BLOCK) {      // coalesced over the tile
            long long e = base + j;
            if (e < n) visit(e, bits[j]);
        }
        __syncthreads();                                             // bits is rewritten next tile
    }
}

// ---------------------------------------------------------------------------------------- forward

extern "C" __global__ void dropout_forward_f32(float* out, bool* mask, const float* x, long long n,
                                               unsigned long long seed, unsigned long long step,
                                               unsigned long long site, unsigned int threshold, float scale) {
    for_each_element(n, seed, step, site, [&](long long e, unsigned int b) {
        bool keep = b >= threshold;
        mask[e] = keep;
        out[e] = (x[e] * scale) * (keep ? 1.0f : 0.0f);
    });
}

extern "C" __global__ void dropout_mask(bool* mask, long long n, unsigned long long seed,
                                        unsigned long long step, unsigned long long site,
                                        unsigned int threshold) {
    for_each_element(n, seed, step, site, [&](long long e, unsigned int b) { mask[e] = b >= threshold; });
}

// ---------------------------------------------------------------------------------------- backward

extern "C" __global__ void dropout_backward_f32(float* dx, const float* dout, const bool* mask,
                                                long long n, float scale) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride)
        dx[e] = (dout[e] * scale) * (mask[e] ? 1.0f : 0.0f);
}
