/* The fitter's inner loop in C: amos_onnx.fit.blocks.rest for float64 membranes (loaded with ctypes by
 * amos_onnx/fit/kernel.py). Each neuron j = start..k-1 in turn: z = (v > T[j]), y += z * d[j], s += z,
 * v -= z * h[j]. The same float64 operations in the same order as the numpy loop (z as 0.0 or 1.0, no fused
 * multiply-add: -ffp-contract=off), so its outputs are bit-identical to it; only faster (one pass over each
 * block of samples held in L1, vectorised: an AVX2 clone and a baseline clone, picked at load time). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 512

__attribute__((target_clones("avx2", "default")))
void amos_rest(const double* T, const double* h, const double* d, int64_t k, int64_t start,
               const double* x, int64_t n, double* y, int8_t* s) {
    double v[BLOCK], acc[BLOCK], count[BLOCK];
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        const int64_t m = n - i0 < BLOCK ? n - i0 : BLOCK;
        for (int64_t i = 0; i < m; ++i) {
            v[i] = x[i0 + i];
            acc[i] = 0.0;
            count[i] = 0.0;
        }
        for (int64_t j = start; j < k; ++j) {
            const double t = T[j], dj = d[j], hj = h[j];
            for (int64_t i = 0; i < m; ++i) {
                const double z = v[i] > t ? 1.0 : 0.0;
                acc[i] += z * dj;
                count[i] += z;
                v[i] -= z * hj;
            }
        }
        for (int64_t i = 0; i < m; ++i) {
            y[i0 + i] = acc[i];
            s[i0 + i] = (int8_t)count[i];
        }
    }
}

/* Stable natural merge sort of indices by value (NaN last, as numpy's stable argsort): the one order by (value,
 * index), so ties keep their input order whatever order the indices start in. The indices start in `hint`'s order
 * (NULL: 0..n-1); runs already in order along it are found first and merged pairwise. A fitter's membranes are a
 * few shifted runs of the sorted inputs, and the order of the membranes one neuron earlier leaves two runs (the
 * ones that fired it, shifted by its reset, and the rest), so this is close to one pass. */
static int before_value(double a, double b) { return a < b || (b != b && a == a); }
static int before(const double* v, int64_t i, int64_t j) {
    return before_value(v[i], v[j]) || (!before_value(v[j], v[i]) && i < j);
}

static int64_t* sort_indices(const double* v, const int64_t* hint, int64_t* idx, int64_t* tmp, int64_t* starts,
                             int64_t n) {
    int64_t runs = 0;
    for (int64_t i = 0; i < n; ++i) {
        idx[i] = hint ? hint[i] : i;
        if (i == 0 || before(v, idx[i], idx[i - 1])) starts[runs++] = i;
    }
    starts[runs] = n;
    while (runs > 1) {
        int64_t merged = 0;
        for (int64_t r = 0; r < runs; r += 2) {
            const int64_t lo = starts[r], mid = starts[r + 1], hi = r + 2 <= runs ? starts[r + 2] : n;
            int64_t a = lo, b = mid, o = lo;
            if (r + 1 < runs) {
                while (a < mid && b < hi) tmp[o++] = before(v, idx[b], idx[a]) ? idx[b++] : idx[a++];
                while (b < hi) tmp[o++] = idx[b++];
            }
            while (a < mid) tmp[o++] = idx[a++];
            starts[merged++] = lo;
        }
        starts[merged] = n;
        runs = merged;
        int64_t* swap = idx;
        idx = tmp;
        tmp = swap;
    }
    return idx; /* the order: one of the two buffers */
}

/* numpy's spacing of a float32 (the gap to the next float32 away from zero; NaN for NaN and infinity). */
static float spacing32(float m) {
    if (m != m || m == INFINITY || m == -INFINITY) return NAN;
    return nextafterf(m, m < 0 ? -INFINITY : INFINITY) - m;
}

/* The cost of every split of one neuron's threshold (amos_onnx.fit.blocks.split_costs, the same float64
 * operations in the same order): sorts the membranes v (starting from `hint`'s order when not NULL, and writing
 * the order to `order` when not NULL), and for split i (samples i.. fire) gives
 * cost[i] = skipping cost of samples ..i-1 + best firing cost of samples i.., with cost = +inf where the gap
 * below sample i is too narrow for float32; se[i], sw[i]: the weighted error and weight sums of samples i..
 * Returns 0, or 1 when memory ran out. */
int amos_split_costs(const double* v, const double* yb, const double* target, const double* w, const double* r0,
                     const double* r1, const int8_t* s0, const int8_t* s1, double lam, double room_ulps, int64_t n,
                     const int64_t* hint, double* vs, double* cost, double* se, double* sw, int64_t* order) {
    int64_t* buffers = malloc((size_t)(3 * n + 1) * sizeof(int64_t));
    double* see = malloc((size_t)(n + 1) * sizeof(double));
    if (!buffers || !see) {
        free(buffers);
        free(see);
        return 1;
    }
    const int64_t* idx = sort_indices(v, hint, buffers, buffers + n, buffers + 2 * n, n);
    if (order)
        for (int64_t i = 0; i < n; ++i) order[i] = idx[i];
    double prefix = 0.0;
    cost[0] = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t o = idx[i];
        vs[i] = v[o];
        const double e0 = target[o] - yb[o] - r0[o];
        const double a = w[o] * (e0 * e0 + lam * (double)s0[o]);
        prefix = i == 0 ? a : prefix + a;
        cost[i + 1] = prefix;
    }
    se[n] = sw[n] = see[n] = 0.0;
    for (int64_t i = n - 1; i >= 0; --i) {
        const int64_t o = idx[i];
        const double e1 = target[o] - yb[o] - r1[o];
        const double we = w[o] * e1, wee = w[o] * (e1 * e1 + lam * (1.0 + (double)s1[o]));
        sw[i] = i == n - 1 ? w[o] : sw[i + 1] + w[o];
        se[i] = i == n - 1 ? we : se[i + 1] + we;
        see[i] = i == n - 1 ? wee : see[i + 1] + wee;
    }
    for (int64_t i = 0; i <= n; ++i) cost[i] = cost[i] + (sw[i] > 0 ? see[i] - se[i] * se[i] / sw[i] : 0.0);
    for (int64_t i = 1; i < n; ++i) {
        const double a = fabs(vs[i]), b = fabs(vs[i - 1]);
        const double top = (a != a || b != b) ? NAN : (a >= b ? a : b);
        const float room = (float)room_ulps * spacing32((float)top);
        if (!(vs[i] - vs[i - 1] > (double)room)) cost[i] = INFINITY;
    }
    free(buffers);
    free(see);
    return 0;
}
