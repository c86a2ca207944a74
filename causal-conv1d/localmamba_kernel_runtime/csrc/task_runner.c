/* Linked into every kernel library: run fn(args[i], start_i, end_i) over `tasks` contiguous slices of range(items),
   on OpenMP threads when the library is built with -fopenmp (sharing torch's thread team), else in turn, returning
   LM_OK or the failure any task returned; and the library's vector width (VW of vector_math.h for the flags it was
   built with: callers pad buffers to it). */
#include <stdint.h>

#include "kernel_args.h"
#include "vector_math.h"

int64_t lm_vector_width(void) { return VW; }

typedef int (*lm_task_fn)(const void *, int64_t, int64_t);

int lm_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int lm_run_tasks(lm_task_fn fn, void **args, int64_t tasks, int64_t items) {
    int status = LM_OK;
#ifdef _OPENMP
#pragma omp parallel for num_threads(tasks) schedule(static, 1) reduction(| : status)
#endif
    for (int64_t i = 0; i < tasks; i++) status |= fn(args[i], items * i / tasks, items * (i + 1) / tasks);
    return status;
}
