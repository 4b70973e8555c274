# CMake toolchain file: cross build for 64-bit ARM Linux (Jetson, Raspberry Pi 4/5, Graviton)
# with Debian's cross compiler and the arm64 multiarch libraries, run under qemu-user.
#
#   tools/bootstrap.sh --aarch64     # g++-aarch64-linux-gnu, qemu-user, libuv1-dev:arm64, ...
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
#         -DCMAKE_BUILD_TYPE=Release -DST_CUDA=OFF -DST_SANITIZER_TESTS=OFF
#   tools/test_aarch64.sh            # the same, plus the [portable] tests under qemu-aarch64
#
# The target's C/C++ runtime (glibc, libstdc++, libgomp) comes with the cross compiler under
# /usr/aarch64-linux-gnu; the arm64 builds of libuv and stb come from Debian multiarch
# (/usr/lib/aarch64-linux-gnu). Header-only dependencies (Catch2, nlohmann-json, the stb and uv
# headers) are shared with the native build in /usr/include.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# find_library looks in <prefix>/lib/aarch64-linux-gnu (and never in the x86-64 multiarch dirs).
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
list(APPEND CMAKE_IGNORE_PATH /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu
                              /usr/include/x86_64-linux-gnu)

# Arch-specific multiarch headers (if a -dev:arm64 package ships any) after the cross
# compiler's own include dirs, so they never shadow the cross glibc headers; the linker resolves
# the libraries' own dependencies in the multiarch lib dirs.
set(CMAKE_C_FLAGS_INIT "-idirafter /usr/include/aarch64-linux-gnu")
set(CMAKE_CXX_FLAGS_INIT "-idirafter /usr/include/aarch64-linux-gnu")
set(_st_rpath_link "-Wl,-rpath-link,/usr/lib/aarch64-linux-gnu:/lib/aarch64-linux-gnu")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${_st_rpath_link}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "${_st_rpath_link}")

# Test binaries (catch_discover_tests, ctest, try_run) run under user-mode emulation. -L makes
# the program interpreter (ld-linux-aarch64.so.1) come from the cross toolchain's tree, and
# LD_LIBRARY_PATH the C and C++ runtime too: libuv:arm64 pulls in Debian's own libc6:arm64,
# whose libc.so.6 (found through /etc/ld.so.cache) can be another Debian revision than the cross
# tree's loader, and a glibc's loader and libc.so must come from the same build.
find_program(ST_QEMU_AARCH64 qemu-aarch64)
if(ST_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${ST_QEMU_AARCH64} -L /usr/aarch64-linux-gnu
                                    -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib)
endif()
