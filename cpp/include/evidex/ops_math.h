// Per-element math of the evidence and selection ops, written once for the CPU
// kernels (cpp/src/ops.cpp) and the CUDA kernels (cuda/ops.cu): box areas, IoU and
// GIoU with their gradients, temporal IoU, and the row-softmax pieces of the
// straight-through top-k backward.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define EVIDEX_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined, so that callers cloned per ISA (target_clones) vectorise it.
#define EVIDEX_HD inline __attribute__((always_inline))
#else
#define EVIDEX_HD inline
#endif

namespace evidex {
namespace ops {

template <class T>
EVIDEX_HD T max_(T a, T b) {
    return a > b ? a : b;
}
template <class T>
EVIDEX_HD T min_(T a, T b) {
    return a < b ? a : b;
}

// Area of an xyxy box; degenerate boxes (x2 < x1 or y2 < y1) have area 0.
template <class T>
EVIDEX_HD T box_area(const T* b) {
    return max_(b[2] - b[0], T(0)) * max_(b[3] - b[1], T(0));
}

// x / (y + eps), or 0 where y + eps <= 0; branch-free (the division never sees
// 0), so the CPU loops that call it vectorise. eps is torchvision's losses'
// guard (0 for the IoU matrices, which have none).
template <class T>
EVIDEX_HD T ratio_or_zero(T x, T y, T eps = T(0)) {
    const T d = y + eps;
    const bool ok = d > T(0);
    return ok ? x / (ok ? d : T(1)) : T(0);
}

// IoU and GIoU of boxes given as coordinates and areas (areas of degenerate
// boxes are 0): the one formula behind every IoU op, CPU and CUDA. IoU is 0 when
// the union is empty, where torchvision's formula would give NaN.
template <class T>
EVIDEX_HD T iou_xyxy(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b,
                     bool generalized, T eps = T(0)) {
    const T iw = max_(min_(ax2, bx2) - max_(ax1, bx1), T(0));
    const T ih = max_(min_(ay2, by2) - max_(ay1, by1), T(0));
    const T inter = iw * ih;
    const T uni = area_a + area_b - inter;
    const T iou = ratio_or_zero(inter, uni, eps);
    if (!generalized) return iou;
    // Generalised IoU: IoU - (enclosing area - union) / enclosing area.
    const T cw = max_(max_(ax2, bx2) - min_(ax1, bx1), T(0));
    const T ch = max_(max_(ay2, by2) - min_(ay1, by1), T(0));
    const T enclose = cw * ch;
    return iou - ratio_or_zero(enclose - uni, enclose, eps);
}

// Coordinates past this make the formula's products overflow T (float32 areas
// of boxes near 1e20 are inf, and inf / inf is NaN).
template <class T>
EVIDEX_HD T overflow_limit() {
    return sizeof(T) == sizeof(float) ? T(1e18f) : T(1e150);
}

template <class T>
EVIDEX_HD T max_abs_coordinate(const T* b) {
    T m = T(0);
    for (int i = 0; i < 4; ++i) m = max_(m, b[i] < T(0) ? -b[i] : b[i]);
    return m;
}

// The scale that brings two boxes' coordinates into [-1, 1], or 0 when they are
// small enough for the plain formula. IoU and GIoU are ratios of areas, so they
// are the same on scaled boxes (with eps scaled as the areas are), and their
// gradients scale by it.
template <class T>
EVIDEX_HD T overflow_scale(const T* a, const T* b) {
    const T m = max_(max_abs_coordinate(a), max_abs_coordinate(b));
    return m > overflow_limit<T>() ? T(1) / m : T(0);
}

template <class T>
EVIDEX_HD T iou_pair(const T* a, const T* b, bool generalized, T eps = T(0)) {
    const T s = overflow_scale(a, b);
    if (s > T(0)) {
        const T sa[4] = {a[0] * s, a[1] * s, a[2] * s, a[3] * s};
        const T sb[4] = {b[0] * s, b[1] * s, b[2] * s, b[3] * s};
        return iou_xyxy(sa[0], sa[1], sa[2], sa[3], box_area(sa), sb[0], sb[1], sb[2], sb[3],
                        box_area(sb), generalized, eps * s * s);
    }
    return iou_xyxy(a[0], a[1], a[2], a[3], box_area(a), b[0], b[1], b[2], b[3], box_area(b),
                    generalized, eps);
}

// expf(x) for x <= 0 (a softmax after max subtraction): Cody-Waite range
// reduction and a degree-6 polynomial, within a few ulp, branch-free so the CPU
// loops vectorise. Inputs below -87 give 0 (flushed, where expf gives a
// denormal): denormals would slow every later product on the CPU by an order of
// magnitude, and a softmax term below 1e-38 changes nothing.
EVIDEX_HD float exp_nonpositive(float x) {
    const float flush = x < -87.0f ? 0.0f : 1.0f;
    x = max_(x, -87.0f);
    // Round to nearest by the 1.5 * 2^23 trick: plain adds, so it vectorises on
    // the baseline ISA (no roundps before SSE4.1).
    const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    const float r = (x - n * 0.693145751953125f) - n * 1.428606820e-6f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    // 2^n (n in [-126, 0]) straight into the exponent bits.
    const int bits = (static_cast<int>(n) + 127) << 23;
    float scale;
#if defined(__CUDA_ARCH__)
    scale = __int_as_float(bits);
#else
    __builtin_memcpy(&scale, &bits, sizeof(scale));
#endif
    return p * scale * flush;
}

// d IoU (or GIoU) / d (a, b), given the upstream gradient g: adds into ga[4],
// gb[4]. Follows the same piecewise branches as the forward (subgradient 0 at
// ties and on clamped sides), so it matches autograd of the plain-torch
// composition.
template <class T>
EVIDEX_HD void iou_backward_unscaled(const T* a, const T* b, T g, bool generalized, T eps, T* ga,
                                     T* gb) {
    // Forward pieces.
    const T wa = a[2] - a[0], ha = a[3] - a[1], wb = b[2] - b[0], hb = b[3] - b[1];
    const bool wa_pos = wa > T(0), ha_pos = ha > T(0), wb_pos = wb > T(0), hb_pos = hb > T(0);
    const T area_a = (wa_pos ? wa : T(0)) * (ha_pos ? ha : T(0));
    const T area_b = (wb_pos ? wb : T(0)) * (hb_pos ? hb : T(0));
    const bool ix1_a = a[0] >= b[0], ix2_a = a[2] <= b[2];
    const bool iy1_a = a[1] >= b[1], iy2_a = a[3] <= b[3];
    const T iw_raw = min_(a[2], b[2]) - max_(a[0], b[0]);
    const T ih_raw = min_(a[3], b[3]) - max_(a[1], b[1]);
    const bool iw_pos = iw_raw > T(0), ih_pos = ih_raw > T(0);
    const T iw = iw_pos ? iw_raw : T(0), ih = ih_pos ? ih_raw : T(0);
    const T inter = iw * ih;
    const T uni = area_a + area_b - inter;
    const bool cx1_a = a[0] <= b[0], cx2_a = a[2] >= b[2];
    const bool cy1_a = a[1] <= b[1], cy2_a = a[3] >= b[3];
    const T cw_raw = max_(a[2], b[2]) - min_(a[0], b[0]);
    const T ch_raw = max_(a[3], b[3]) - min_(a[1], b[1]);
    const bool cw_pos = cw_raw > T(0), ch_pos = ch_raw > T(0);
    const T cw = cw_pos ? cw_raw : T(0), ch = ch_pos ? ch_raw : T(0);
    const T enclose = cw * ch;

    // iou = inter/(uni+eps); giou = iou - (enclose - uni)/(enclose+eps)
    T g_inter = 0, g_uni = 0, g_enc = 0;
    const T du = uni + eps, de = enclose + eps;
    if (du > T(0)) {
        g_inter += g / du;
        g_uni -= g * inter / (du * du);
    }
    if (generalized && de > T(0)) {
        // -(enclose - uni)/de: d/d uni = 1/de, d/d enclose = -(de - enclose + uni)/de^2
        g_uni += g / de;
        g_enc -= g * (eps + uni) / (de * de);
    }
    // uni = area_a + area_b - inter
    const T g_area_a = g_uni, g_area_b = g_uni;
    g_inter -= g_uni;
    // areas
    if (wa_pos && ha_pos) {
        ga[2] += g_area_a * ha;
        ga[0] -= g_area_a * ha;
        ga[3] += g_area_a * wa;
        ga[1] -= g_area_a * wa;
    }
    if (wb_pos && hb_pos) {
        gb[2] += g_area_b * hb;
        gb[0] -= g_area_b * hb;
        gb[3] += g_area_b * wb;
        gb[1] -= g_area_b * wb;
    }
    // inter = iw * ih
    if (iw_pos && ih_pos) {
        const T g_iw = g_inter * ih, g_ih = g_inter * iw;
        (ix2_a ? ga[2] : gb[2]) += g_iw;
        (ix1_a ? ga[0] : gb[0]) -= g_iw;
        (iy2_a ? ga[3] : gb[3]) += g_ih;
        (iy1_a ? ga[1] : gb[1]) -= g_ih;
    }
    // enclose = cw * ch
    if (cw_pos && ch_pos) {
        const T g_cw = g_enc * ch, g_ch = g_enc * cw;
        (cx2_a ? ga[2] : gb[2]) += g_cw;
        (cx1_a ? ga[0] : gb[0]) -= g_cw;
        (cy2_a ? ga[3] : gb[3]) += g_ch;
        (cy1_a ? ga[1] : gb[1]) -= g_ch;
    }
}

template <class T>
EVIDEX_HD void box_iou_backward(const T* a, const T* b, T g, bool generalized, T eps, T* ga,
                                T* gb) {
    const T s = overflow_scale(a, b);
    if (s > T(0)) {
        const T sa[4] = {a[0] * s, a[1] * s, a[2] * s, a[3] * s};
        const T sb[4] = {b[0] * s, b[1] * s, b[2] * s, b[3] * s};
        T da[4] = {T(0), T(0), T(0), T(0)}, db[4] = {T(0), T(0), T(0), T(0)};
        iou_backward_unscaled(sa, sb, g, generalized, eps * s * s, da, db);
        for (int i = 0; i < 4; ++i) {
            ga[i] += da[i] * s;  // d f(s x) / dx = s f'(s x), and f(s x) = f(x)
            gb[i] += db[i] * s;
        }
        return;
    }
    iou_backward_unscaled(a, b, g, generalized, eps, ga, gb);
}

// IoU of two frame intervals [start, end] (inclusive ends count as length end-start).
template <class T>
EVIDEX_HD T temporal_iou(const T* a, const T* b) {
    const T inter = max_(min_(a[1], b[1]) - max_(a[0], b[0]), T(0));
    const T uni = max_(a[1] - a[0], T(0)) + max_(b[1] - b[0], T(0)) - inter;
    return uni > T(0) ? inter / uni : T(0);
}

}  // namespace ops
}  // namespace evidex
