// CPU kernels of the selection and evidence ops (row-parallel over std::thread).
// The per-element math is in ops_math.h, shared with the CUDA kernels.
#pragma once

#include <cstddef>
#include <cstdint>

namespace evidex {
namespace ops {

// Top-k of each of `rows` rows of length n: indices sorted by score (descending),
// ties to the lower index, and the k-hot mask. Partial selection, O(n log k).
template <class T>
void topk_rows(const T* scores, std::size_t rows, std::size_t n, std::size_t k,
               std::int64_t* indices, T* mask, std::size_t num_threads);

// Gradient of the straight-through top-k with respect to the scores.
//   mode 0 "softmax":    grad = J(softmax(s / tau))^T g
//   mode 1 "successive": grad = sum_j J(softmax(s / tau + log(1 - taken_j + 1e-8)))^T g_j
// where taken_j holds the hard picks of slots before j. `grad` is [rows, n] (the
// same upstream gradient for every slot) or, with per_slot, [rows, k, n].
template <class T>
void st_topk_backward(const T* scores, const std::int64_t* indices, const T* grad,
                      std::size_t rows, std::size_t n, std::size_t k, double tau, int mode,
                      bool per_slot, T* grad_scores, std::size_t num_threads);

// Pairwise [na, nb] IoU or GIoU of xyxy boxes.
template <class T>
void box_iou_matrix(const T* a, std::size_t na, const T* b, std::size_t nb, bool generalized,
                    T* out, std::size_t num_threads);

// Gradient of box_iou_matrix, given d out [na, nb]: into ga [na, 4], gb [nb, 4].
template <class T>
void box_iou_matrix_backward(const T* a, std::size_t na, const T* b, std::size_t nb,
                             const T* g, bool generalized, T* ga, T* gb,
                             std::size_t num_threads);

// Elementwise IoU or GIoU of n box pairs; eps guards the ratios as in
// torchvision's losses (inter / (union + eps)).
template <class T>
void box_iou_pairs(const T* a, const T* b, std::size_t n, bool generalized, T eps, T* out);

// Gradient of box_iou_pairs, given d out: into ga, gb [n, 4].
template <class T>
void box_iou_pairs_backward(const T* a, const T* b, const T* g, std::size_t n, bool generalized,
                            T eps, T* ga, T* gb);

// Pairwise [na, nb] temporal IoU of [start, end] intervals.
template <class T>
void temporal_iou_matrix(const T* a, std::size_t na, const T* b, std::size_t nb, T* out);

// Cosine similarity [nq, nt] of queries [nq, d] against frames [nt, d].
template <class T>
void frame_scores(const T* frames, std::size_t nt, const T* queries, std::size_t nq,
                  std::size_t d, T* out, std::size_t num_threads);

// Greedy temporal non-maximum suppression: up to k frames, best first, each at
// least min_gap away from those kept; returned in time order. Returns the count.
template <class T>
std::size_t select_keyframes(const T* scores, std::size_t n, std::size_t k,
                             std::size_t min_gap, std::int64_t* out);

}  // namespace ops
}  // namespace evidex
