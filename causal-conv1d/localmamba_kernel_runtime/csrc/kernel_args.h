/* Argument structs of the kernels, declared once as a list of fields so that the layout the Python side checks its
   ctypes mirror against is generated from the same list as the struct itself:

       #define SCAN_ARGS(FIELD, S) FIELD(S, int64_t, batch) FIELD(S, const float *, u) ...
       DECLARE_KERNEL_ARGS(ScanArgs, SCAN_ARGS)

   declares the struct ScanArgs and exports  int64_t ScanArgs_layout(const char *const **names, const int64_t
   **offsets, const int64_t **sizes)  which returns sizeof(ScanArgs) and points at the fields' names, offsets and
   sizes, in declaration order, each array ending with the entry of the last field (ScanArgs_fields() of them).

   Every kernel is  int kernel(const ScanArgs *args, int64_t start, int64_t end)  and returns LM_OK, or
   LM_OUT_OF_MEMORY when it could not allocate its work buffers (it then writes nothing); the Python side raises. */
#ifndef LOCALMAMBA_KERNEL_ARGS_H
#define LOCALMAMBA_KERNEL_ARGS_H

#include <stddef.h>
#include <stdint.h>

enum { LM_OK = 0, LM_OUT_OF_MEMORY = 1 };

#define KERNEL_ARGS_MEMBER(S, type, name) type name;
#define KERNEL_ARGS_NAME(S, type, name) #name,
#define KERNEL_ARGS_OFFSET(S, type, name) (int64_t)offsetof(S, name),
#define KERNEL_ARGS_SIZE(S, type, name) (int64_t)sizeof(((S *)0)->name),

#define DECLARE_KERNEL_ARGS(S, FIELDS)                                                                            \
    typedef struct { FIELDS(KERNEL_ARGS_MEMBER, S) } S;                                                          \
    static const char *const S##_names[] = {FIELDS(KERNEL_ARGS_NAME, S)};                                        \
    static const int64_t S##_offsets[] = {FIELDS(KERNEL_ARGS_OFFSET, S)};                                        \
    static const int64_t S##_sizes[] = {FIELDS(KERNEL_ARGS_SIZE, S)};                                            \
    int64_t S##_fields(void) { return (int64_t)(sizeof(S##_offsets) / sizeof(S##_offsets[0])); }                 \
    int64_t S##_layout(const char *const **names, const int64_t **offsets, const int64_t **sizes) {              \
        *names = S##_names;                                                                                      \
        *offsets = S##_offsets;                                                                                  \
        *sizes = S##_sizes;                                                                                      \
        return (int64_t)sizeof(S);                                                                               \
    }

#endif
