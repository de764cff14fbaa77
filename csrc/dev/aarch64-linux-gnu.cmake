# Cross compile for 64-bit Arm Linux with Debian/Ubuntu's GNU cross toolchain
# (apt-get install g++-aarch64-linux-gnu). Configures and compiles the CPU kernel libraries; the Python
# module needs the target's Python headers, so configure with -DDIFFRT_PYTHON_MODULE=OFF:
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=csrc/dev/aarch64-linux-gnu.cmake \
#         -DDIFFRT_PYTHON_MODULE=OFF -DDIFFRT_CUDA=OFF && cmake --build build-aarch64
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# qemu-user runs the target's programs (try_run); apt-get install qemu-user
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
