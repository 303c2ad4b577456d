// Transparent huge pages for the large read-only tables the kernels read at
// random (the item tables, the graph levels).

#ifndef NANN_KERNELS_HUGE_PAGES_H_
#define NANN_KERNELS_HUGE_PAGES_H_

#include <sys/mman.h>

#include <cstdint>
#include <mutex>
#include <set>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux >= 6.1
#endif

namespace nann {

// Asks the kernel, once per buffer, to back `bytes` at `data` (at least 8 MB)
// with transparent huge pages: a random read then costs one TLB entry of 2 MB
// instead of a page walk over 4 KB pages. MADV_HUGEPAGE marks the range (for
// THP mode "madvise", the common default); MADV_COLLAPSE moves its pages now
// (Linux >= 6.1; the first request, i.e. the warm-up, pays for it), else
// khugepaged does it in the background. Either may be refused (THP "never", an
// old kernel): the buffer is then read as before. The contents never change.
// At most kMaxBuffers buffers are advised per process (a variable read as a
// fresh copy on every call would otherwise be advised again and again).
inline void AdviseHugePages(const void* data, int64_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  constexpr size_t kMaxBuffers = 256;
  static std::mutex* mu = new std::mutex();
  static std::set<const void*>* advised = new std::set<const void*>();
  if (bytes < static_cast<int64_t>(4 * kHuge)) return;
  std::lock_guard<std::mutex> lock(*mu);
  if (advised->size() >= kMaxBuffers || !advised->insert(data).second) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (first + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (first + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end <= begin) return;
  void* at = reinterpret_cast<void*>(begin);
  if (madvise(at, end - begin, MADV_HUGEPAGE) == 0) {
    madvise(at, end - begin, MADV_COLLAPSE);
  }
}

}  // namespace nann

#endif  // NANN_KERNELS_HUGE_PAGES_H_
