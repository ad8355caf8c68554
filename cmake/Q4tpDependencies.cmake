# Finds every external dependency the standard way and exposes each as an imported target.
find_package(CUDAToolkit REQUIRED)             # CUDA::cudart, CUDA::cublas
find_package(MPI REQUIRED COMPONENTS C)        # MPI::MPI_C (Open MPI)
find_package(HDF5 REQUIRED COMPONENTS C)       # HDF5 C library
find_package(GTest REQUIRED)                   # GTest::gtest, GTest::gtest_main
find_package(nlohmann_json 3.2 REQUIRED)       # nlohmann_json::nlohmann_json
find_package(PkgConfig REQUIRED)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

# NCCL ships no CMake package: look next to the CUDA toolkit and in the system paths.
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME PATH_SUFFIXES include)
find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME PATH_SUFFIXES lib lib64)
if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
  message(FATAL_ERROR "NCCL not found: set NCCL_HOME to the folder holding include/nccl.h and lib/libnccl.so")
endif()
add_library(q4tp_nccl INTERFACE)
target_include_directories(q4tp_nccl SYSTEM INTERFACE ${NCCL_INCLUDE_DIR})
target_link_libraries(q4tp_nccl INTERFACE ${NCCL_LIBRARY})
message(STATUS "NCCL: ${NCCL_LIBRARY}")

# HDF5's variables become one imported target so the rest of the build reads like the others.
add_library(q4tp_hdf5 INTERFACE)
target_include_directories(q4tp_hdf5 SYSTEM INTERFACE ${HDF5_C_INCLUDE_DIRS} ${HDF5_INCLUDE_DIRS})
target_link_libraries(q4tp_hdf5 INTERFACE ${HDF5_C_LIBRARIES})
target_compile_definitions(q4tp_hdf5 INTERFACE ${HDF5_C_DEFINITIONS} ${HDF5_DEFINITIONS})
