// The definitions manylinux_2_28.h's redirections need (linked only when DIFFRT_MANYLINUX_2_28 is ON).
#include <cstring>
#include <exception>
#include <new>

// Read by libstdc++'s reference counts in place of glibc 2.32's __libc_single_threaded: never single
// threaded, so they always use atomic operations.
extern "C" {
__attribute__((visibility("hidden"))) char diffrt_libc_single_threaded = 0;
}

namespace std {

// GCC 11+'s allocators throw through this when asked for more than they can hold; libstdc++ exports it
// only from GLIBCXX_3.4.29 (GCC 11) on, so the library carries its own.
[[noreturn]] void __throw_bad_array_new_length() { throw std::bad_array_new_length(); }

// GCC 11+'s exception_ptr copies and destroys inline through _M_addref / _M_release, exported only from
// CXXABI_1.3.13; GCC ≤ 10's headers called the out-of-line copy constructor and destructor (CXXABI_1.3.3)
// instead, which do the same reference counting. They are bound to those versions here.
extern "C" void diffrt_exception_ptr_copy(void* self, const void* other) noexcept;
extern "C" void diffrt_exception_ptr_destroy(void* self) noexcept;
__asm__(".symver diffrt_exception_ptr_copy, _ZNSt15__exception_ptr13exception_ptrC1ERKS0_@CXXABI_1.3.3");
__asm__(".symver diffrt_exception_ptr_destroy, _ZNSt15__exception_ptr13exception_ptrD1Ev@CXXABI_1.3.3");

namespace __exception_ptr {
void exception_ptr::_M_addref() noexcept {  // one more reference: a copy that is never destroyed
  alignas(exception_ptr) unsigned char copy[sizeof(exception_ptr)];
  diffrt_exception_ptr_copy(copy, this);
}
void exception_ptr::_M_release() noexcept {  // one reference less: destroy a bitwise copy
  alignas(exception_ptr) unsigned char copy[sizeof(exception_ptr)];
  std::memcpy(copy, static_cast<const void*>(this), sizeof(exception_ptr));
  diffrt_exception_ptr_destroy(copy);
}
}  // namespace __exception_ptr

}  // namespace std
