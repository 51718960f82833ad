# The optional evidex._cuda module: kernels in cuda/, the static CUDA runtime, a
# host-compiled pybind11 front. The package never imports it eagerly.
if(EVIDEX_CUDA STREQUAL "OFF")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(EVIDEX_CUDA STREQUAL "ON")
    message(FATAL_ERROR "EVIDEX_CUDA=ON but no CUDA compiler was found")
  endif()
  message(STATUS "evidex: nvcc not found, building without evidex._cuda")
  return()
endif()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  # Turing to Hopper as SASS, plus PTX of the newest for later GPUs.
  set(CMAKE_CUDA_ARCHITECTURES "75-real;80-real;86-real;89-real;90")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)

add_library(evidex_cuda_kernels STATIC cuda/runtime.cu cuda/ops.cu)
target_include_directories(evidex_cuda_kernels PUBLIC cpp/include cuda)
set_target_properties(evidex_cuda_kernels PROPERTIES
  CUDA_RUNTIME_LIBRARY Static
  POSITION_INDEPENDENT_CODE ON)

pybind11_add_module(_cuda MODULE cuda/module.cpp)
target_link_libraries(_cuda PRIVATE evidex_cuda_kernels CUDA::cudart_static)
set_target_properties(_cuda PROPERTIES CUDA_RUNTIME_LIBRARY Static)
install(TARGETS _cuda LIBRARY DESTINATION evidex)
message(STATUS "evidex: building evidex._cuda for ${CMAKE_CUDA_ARCHITECTURES}")
