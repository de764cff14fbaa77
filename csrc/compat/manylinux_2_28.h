// Force-included into every C++ translation unit when CMakeLists.txt's DIFFRT_MANYLINUX_2_28 is ON (the
// portable wheel): the library then needs no glibc symbol newer than 2.28 and no libstdc++ symbol newer
// than GLIBCXX_3.4.24, the manylinux_2_28 policy (RHEL 8, Debian 11, Ubuntu 20.04 and later: torch's own
// floor), even when built with a newer glibc and GCC. Three things a newer toolchain pulls in:
//   exp, log: glibc 2.29 gave them new symbol versions (the same results; only the SVID error handling of
//     the old ones differs): references are bound to the old versions;
//   __libc_single_threaded (glibc 2.32), read by libstdc++'s reference counts since GCC 11: replaced by
//     a hidden flag that is always 0, so those counts are always atomic (what an older libstdc++ does);
//   std::__throw_bad_array_new_length (GLIBCXX_3.4.29, called by GCC 11+'s allocators) and
//     exception_ptr's _M_addref / _M_release (CXXABI_1.3.13, GCC 11+'s inline copies): defined in
//     manylinux_2_28.cpp, which this build links in.
// The .symver bindings act on the references of the translation unit they are assembled with, so a
// file that calls exp or log must not be compiled with -flto (the kernel objects are not).
#pragma once
#if defined(__linux__)
#include <features.h>  // defines __GLIBC__ (not on musl, which needs none of this)
#endif

#if defined(__GLIBC__) && !defined(__CUDA_ARCH__)
#if defined(__x86_64__)
__asm__(".symver exp,exp@GLIBC_2.2.5");
__asm__(".symver log,log@GLIBC_2.2.5");
#elif defined(__aarch64__)
__asm__(".symver exp,exp@GLIBC_2.17");
__asm__(".symver log,log@GLIBC_2.17");
#endif

#if defined(__cplusplus) && __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h>
extern "C" char diffrt_libc_single_threaded;
#define __libc_single_threaded diffrt_libc_single_threaded
#endif
#endif
