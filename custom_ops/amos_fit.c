/* The fitter's inner loop in C (loaded with ctypes by amos_onnx/fit/kernel.py), each function the same float64
 * operations in the same order as its numpy form in amos_onnx.fit.blocks, so its outputs are bit-identical to it
 * (z as 0.0 or 1.0, no fused multiply-add: -ffp-contract=off); only faster:
 * - amos_rest: neurons start..k-1 from membranes v: z = (v > T[j]), y += z * d[j], s += z, v -= z * h[j]; one
 *   pass over each block of samples held in L1, vectorised (an AVX2 clone and a baseline clone, picked at load time);
 * - amos_simulate32: amos_onnx.gate.simulate, the gate itself in float32 (a shared gate, finite resets and weights);
 * - amos_spike_matrix: which neurons fire for each input;
 * - amos_split_costs: the cost of every split of one neuron's threshold;
 * - amos_total_cost: a gate's cost on the training points;
 * - amos_sweep: one sweep of the block descent, every neuron's threshold, weight and reset in turn. */
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

/* amos_onnx.gate.simulate in float32, for a shared gate with finite resets and weights: the gate's output and spike
 * count for each of n inputs (z as 0.0f or 1.0f: y += z * d[j], v -= z * h[j], the same float32 operations). */
__attribute__((target_clones("avx2", "default")))
void amos_simulate32(const float* T, const float* h, const float* d, int64_t k, const float* x, int64_t n, float* y,
                     int32_t* s) {
    float v[BLOCK], acc[BLOCK], count[BLOCK];
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        const int64_t m = n - i0 < BLOCK ? n - i0 : BLOCK;
        for (int64_t i = 0; i < m; ++i) {
            v[i] = x[i0 + i];
            acc[i] = 0.0f;
            count[i] = 0.0f;
        }
        for (int64_t j = 0; j < k; ++j) {
            const float t = T[j], dj = d[j], hj = h[j];
            for (int64_t i = 0; i < m; ++i) {
                const float z = v[i] > t ? 1.0f : 0.0f;
                acc[i] += z * dj;
                count[i] += z;
                v[i] -= z * hj;
            }
        }
        for (int64_t i = 0; i < m; ++i) {
            y[i0 + i] = acc[i];
            s[i0 + i] = (int32_t)count[i];
        }
    }
}

/* blocks.spike_matrix: Z[i, j] = 1.0 where neuron j fires for input x[i] (its membrane after neurons 0..j-1 above
 * T[j]), else 0.0; Z is n x k, row-major. */
void amos_spike_matrix(const double* T, const double* h, int64_t k, const double* x, int64_t n, double* Z) {
    for (int64_t i = 0; i < n; ++i) {
        double v = x[i];
        for (int64_t j = 0; j < k; ++j) {
            const double z = v > T[j] ? 1.0 : 0.0;
            Z[i * k + j] = z;
            v = v - h[j] * z;
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
 * `buffers`: 3n + 1 indices, `see`: n + 1 values of scratch. */
static void split_costs_into(const double* v, const double* yb, const double* target, const double* w,
                             const double* r0, const double* r1, const int8_t* s0, const int8_t* s1, double lam,
                             double room_ulps, int64_t n, const int64_t* hint, double* vs, double* cost, double* se,
                             double* sw, int64_t* order, int64_t* buffers, double* see) {
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
}

/* split_costs_into with its scratch allocated here: 0, or 1 when memory ran out. */
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
    split_costs_into(v, yb, target, w, r0, r1, s0, s1, lam, room_ulps, n, hint, vs, cost, se, sw, order, buffers, see);
    free(buffers);
    free(see);
    return 0;
}

/* ---- One sweep of the block descent (amos_onnx.fit.blocks.sweep's numpy form, step by step) ---- */

/* numpy's sum of a contiguous float64 row (np.sum; over the last axis of a C array, row by row): 0.0 plus the
 * pairwise sum, below 8 values in order, up to 128 in eight interleaved partial sums, else split in two at a
 * multiple of 8. */
static double pairwise_sum(const double* a, int64_t n) {
    if (n < 8) {
        double res = 0.0;
        for (int64_t i = 0; i < n; ++i) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        int64_t i = 8;
        for (; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    int64_t half = n / 2;
    half -= half % 8;
    return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

static double numpy_sum(const double* a, int64_t n) { return 0.0 + pairwise_sum(a, n); }

/* One training point's cost in blocks._costs: w * ((target - y)^2 + lam * s), the spike term left out without a
 * penalty (as numpy's: the same bits as adding 0.0 * s). */
static double point_cost(double w, double target, double y, int8_t s, double lam) {
    const double e = target - y;
    const double square = e * e;
    return lam != 0.0 ? w * (square + lam * (double)s) : w * square;
}

/* numpy_sum exported, for the tests to hold it to np.sum. */
double amos_numpy_sum(const double* a, int64_t n) { return numpy_sum(a, n); }

/* numpy's argmin: the first NaN, else the first least value. */
static int64_t argmin(const double* a, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (a[i] != a[i]) return i;
        if (a[i] < a[best]) best = i;
    }
    return best;
}

/* numpy's searchsorted(sorted, key, side="right"): the first index whose value sorts after key (NaN last). */
static int64_t search_right(const double* sorted, int64_t n, double key) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (before_value(key, sorted[mid]))
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

typedef struct {
    const double *x, *target, *w;
    int64_t n;
    double lam, room_ulps;
} Problem;

/* A sweep's scratch: membranes and outputs carried along the neurons, a threshold update's arrays, and a reset
 * update's samples that fire the neuron (z_*) with one candidate's row. */
typedef struct {
    double *v, *y, *vh, *r0, *r1, *vs, *cost, *se, *sw, *see, *zv, *zy, *zt, *zw, *vf, *rf, *row;
    int8_t *s0, *s1, *sf;
    int64_t *orders[2], *sort;
    void *doubles, *bytes, *indices;
} Work;

static void free_work(Work* wk) {
    free(wk->doubles);
    free(wk->bytes);
    free(wk->indices);
}

static int alloc_work(Work* wk, int64_t n) {
    const size_t m = (size_t)n + 1;
    double* f = wk->doubles = malloc(17 * m * sizeof(double));
    int8_t* b = wk->bytes = malloc(3 * m);
    int64_t* i = wk->indices = malloc(5 * m * sizeof(int64_t));
    if (!f || !b || !i) {
        free_work(wk);
        return 1;
    }
    double** slots[] = {&wk->v, &wk->y, &wk->vh, &wk->r0, &wk->r1, &wk->vs, &wk->cost, &wk->se, &wk->sw,
                        &wk->see, &wk->zv, &wk->zy, &wk->zt, &wk->zw, &wk->vf, &wk->rf, &wk->row};
    for (size_t j = 0; j < sizeof(slots) / sizeof(slots[0]); ++j) *slots[j] = f + j * m;
    wk->s0 = b, wk->s1 = b + m, wk->sf = b + 2 * m;
    wk->orders[0] = i, wk->orders[1] = i + m, wk->sort = i + 2 * m;
    return 0;
}

/* blocks.update_threshold: the exact best T[t] and d[t] with all else fixed, from the membranes arriving at neuron
 * t (wk->v) and the output before it (wk->y); the order that sorts those membranes (one of wk->orders, the other
 * than `hint`, the order of nearly sorted membranes the sort starts from, or NULL). */
static const int64_t* update_threshold(const Problem* p, Work* wk, double* T, double* h, double* d, int64_t k,
                                       int64_t t, const int64_t* hint) {
    const int64_t n = p->n;
    for (int64_t i = 0; i < n; ++i) wk->vh[i] = wk->v[i] - h[t];
    amos_rest(T, h, d, k, t + 1, wk->v, n, wk->r0, wk->s0); /* neuron t skips */
    amos_rest(T, h, d, k, t + 1, wk->vh, n, wk->r1, wk->s1); /* neuron t fires */
    int64_t* order = hint == wk->orders[0] ? wk->orders[1] : wk->orders[0];
    split_costs_into(wk->v, wk->y, p->target, p->w, wk->r0, wk->r1, wk->s0, wk->s1, p->lam, p->room_ulps, n, hint,
                     wk->vs, wk->cost, wk->se, wk->sw, order, wk->sort, wk->see);
    const double *vs = wk->vs, *cost = wk->cost;
    int64_t i = argmin(cost, n + 1);
    const int64_t current = search_right(vs, n, T[t]); /* samples from here on fire now */
    if (isfinite(cost[current]) && cost[i] >= cost[current] - 1e-15 * fabs(cost[current])) i = current;
    if (i == current && (i == 0 || i == n)) {
        /* fires for all or none: stays where it is */
    } else if (i == 0) {
        const double gap = vs[n - 1] - vs[0];
        T[t] = vs[0] - (1.0 > gap ? 1.0 : gap);
    } else if (i == n) {
        const double gap = vs[n - 1] - vs[0];
        T[t] = vs[n - 1] + (1.0 > gap ? 1.0 : gap);
    } else {
        T[t] = 0.5 * (vs[i - 1] + vs[i]);
        const double single = (double)(float)T[t];
        if (!(vs[i - 1] < single && single < vs[i])) T[t] = (float)vs[i - 1] < (float)vs[i] ? vs[i - 1] : T[t];
    }
    d[t] = i < n && wk->sw[i] > 0 ? wk->se[i] / wk->sw[i] : 0.0;
    return order;
}

/* blocks.update_reset: the best h[t] among candidates around the current value and on the range's scale, costed
 * on the samples that fire neuron t; whether it changed. */
static int update_reset(const Problem* p, Work* wk, const double* T, double* h, const double* d, int64_t k, int64_t t,
                        double scale) {
    static const double factors[7] = {0.0, 0.5, 0.85, 0.95, 1.05, 1.15, 2.0};
    static const double steps[6] = {1.0, 0.25, 0.0625, 0.015625, 0.00390625, 0.0009765625};
    int64_t m = 0;
    for (int64_t i = 0; i < p->n; ++i)
        if (wk->v[i] > T[t]) {
            wk->zv[m] = wk->v[i], wk->zy[m] = wk->y[i], wk->zt[m] = p->target[i], wk->zw[m] = p->w[i];
            ++m;
        }
    if (m == 0) return 0;
    double others[15], cands[16], costs[16];
    int count = 0, c = 0;
    for (int j = 0; j < 7; ++j) others[count++] = h[t] * factors[j];
    for (int j = 0; j < 6; ++j) others[count++] = scale * steps[j];
    others[count++] = -(scale * steps[0]);
    others[count++] = -(scale * steps[1]);
    cands[c++] = h[t];
    for (int j = 0; j < count; ++j)
        if (fabs(others[j]) <= 4 * scale) cands[c++] = others[j];
    for (int j = 0; j < c; ++j) {
        for (int64_t i = 0; i < m; ++i) wk->vf[i] = wk->zv[i] - cands[j];
        amos_rest(T, h, d, k, t + 1, wk->vf, m, wk->rf, wk->sf);
        for (int64_t i = 0; i < m; ++i)
            wk->row[i] = point_cost(wk->zw[i], wk->zt[i], wk->zy[i] + d[t] + wk->rf[i], wk->sf[i], p->lam);
        costs[j] = numpy_sum(wk->row, m);
    }
    const int64_t best = argmin(costs, c);
    if (costs[best] < costs[0] * (1 - 1e-12)) { /* candidate 0 is the current value: ties keep it */
        h[t] = cands[best];
        return 1;
    }
    return 0;
}

/* blocks.total_cost: sum of w * ((target - y)^2 + lam * s) over the training points, the gate's output y and
 * spikes s from neuron 0 (the penalty term left out without a penalty, as numpy's), summed as np.sum does, into
 * `cost`. Returns 0, or 1 when memory ran out. */
int amos_total_cost(const double* T, const double* h, const double* d, int64_t k, const double* x,
                    const double* target, const double* w, int64_t n, double lam, double* cost) {
    double* y = malloc((size_t)(n + 1) * sizeof(double));
    int8_t* s = malloc((size_t)n + 1);
    if (!y || !s) {
        free(y);
        free(s);
        return 1;
    }
    amos_rest(T, h, d, k, 0, x, n, y, s);
    for (int64_t i = 0; i < n; ++i) y[i] = point_cost(w[i], target[i], y[i], s[i], lam);
    *cost = numpy_sum(y, n);
    free(y);
    free(s);
    return 0;
}

/* One sweep of blocks.descend over neurons 0..k-1 in turn, T, h and d updated in place: each neuron's threshold
 * and weight, its reset (not the last neuron's) and, when the reset changed, its threshold and weight again;
 * neurons before t are final when t is updated, so their membranes and output are carried forward, with the order
 * that sorts the membranes. Returns 0, or 1 when memory ran out (nothing changed). */
int amos_sweep(const double* x, const double* target, const double* w, int64_t n, double lam, double room_ulps,
               double* T, double* h, double* d, int64_t k, double scale) {
    Work wk;
    if (alloc_work(&wk, n)) return 1;
    const Problem p = {x, target, w, n, lam, room_ulps};
    for (int64_t i = 0; i < n; ++i) wk.v[i] = x[i], wk.y[i] = 0.0;
    const int64_t* order = NULL;
    for (int64_t t = 0; t < k; ++t) {
        order = update_threshold(&p, &wk, T, h, d, k, t, order);
        if (t < k - 1 && update_reset(&p, &wk, T, h, d, k, t, scale))
            order = update_threshold(&p, &wk, T, h, d, k, t, order);
        const double tt = T[t], dt = d[t], ht = h[t];
        for (int64_t i = 0; i < n; ++i) {
            const double z = wk.v[i] > tt ? 1.0 : 0.0;
            wk.y[i] = wk.y[i] + dt * z;
            wk.v[i] = wk.v[i] - ht * z;
        }
    }
    free_work(&wk);
    return 0;
}
