// C entry points of the op kernels (cuda/ops.cu): device pointers, sizes, a dtype
// code (0 float32, 1 float64) and the caller's stream. Each returns a cudaError_t.
#pragma once

extern "C" {
int evidex_cuda_topk_rows(const void* scores, void* mask, void* indices, long long rows, int n,
                          int k, int dtype, void* stream);
int evidex_cuda_st_topk_backward(const void* scores, const void* indices, const void* grad,
                                 void* out, long long rows, int n, int k, double tau, int mode,
                                 int per_slot, int dtype, void* stream);
int evidex_cuda_box_iou_matrix(const void* a, const void* b, void* out, int na, int nb,
                               int generalized, int dtype, void* stream);
int evidex_cuda_box_iou_matrix_backward(const void* a, const void* b, const void* g, void* ga,
                                        void* gb, int na, int nb, int generalized, int dtype,
                                        void* stream);
int evidex_cuda_box_iou_pairs(const void* a, const void* b, void* out, int n, int generalized,
                              double eps, int dtype, void* stream);
int evidex_cuda_box_iou_pairs_backward(const void* a, const void* b, const void* g, void* ga,
                                       void* gb, int n, int generalized, double eps, int dtype,
                                       void* stream);
int evidex_cuda_temporal_iou_matrix(const void* a, const void* b, void* out, int na, int nb,
                                    int dtype, void* stream);
int evidex_cuda_frame_scores(const void* frames, const void* queries, void* out, int nt, int nq,
                             int d, int dtype, void* stream);
int evidex_cuda_select_keyframes(const void* scores, void* out, void* count, int n, int k,
                                 int min_gap, int dtype, void* stream);
}
