{
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
    "cflags": ["-O3", "-fPIC", "-fopenmp", "-fno-math-errno"],
    "cflags_cc": ["-std=c++17", "-fexceptions"],
    "include_dirs": ["native/include"],
    "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
    # Linux (g++/clang, libgomp) is what is built and tested. macOS and Windows below are written
    # for their CI runners (.github/workflows/prebuilds.yml) and not yet checked there.
    "conditions": [
      # macOS: Apple clang has no -fopenmp driver flag; OpenMP comes from Homebrew's libomp
      # (`brew install libomp`; LIBOMP_PREFIX overrides its location).
      ["OS=='mac'", {
        "variables": { "libomp%": "<!(node -p \"process.env.LIBOMP_PREFIX || '/opt/homebrew/opt/libomp'\")" },
        "xcode_settings": {
          "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
          "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
          "CLANG_CXX_LIBRARY": "libc++",
          "MACOSX_DEPLOYMENT_TARGET": "11.0",
          "OTHER_CFLAGS": ["-O3", "-fno-math-errno", "-ffp-contract=off", "-Xpreprocessor", "-fopenmp", "-I<(libomp)/include"],
          "OTHER_CPLUSPLUSFLAGS": ["-O3", "-fno-math-errno", "-ffp-contract=off", "-Xpreprocessor", "-fopenmp", "-I<(libomp)/include"],
          "OTHER_LDFLAGS": ["-L<(libomp)/lib", "-lomp", "-Wl,-rpath,<(libomp)/lib"]
        }
      }],
      # Windows: MSVC with LLVM's OpenMP runtime (/openmp:llvm: OpenMP 3.x, unsigned loop indices).
      ["OS=='win'", {
        "defines": ["NOMINMAX", "_USE_MATH_DEFINES", "_CRT_SECURE_NO_WARNINGS"],
        "msvs_settings": {
          "VCCLCompilerTool": {
            "ExceptionHandling": 1,
            "AdditionalOptions": ["/std:c++17", "/openmp:llvm", "/O2", "/fp:precise", "/Zc:__cplusplus", "/bigobj"]
          }
        }
      }]
    ]
  },
  "targets": [
    {
      "target_name": "peftkit",
      # Distributed training's Gloo part (native/distributed/group.cc) is built only where Gloo
      # is installed (libgloo-dev); without it the addon reports it absent. PEFTKIT_GLOO=0 forces
      # it off, =1 makes a missing Gloo an error (scripts/gloo.js). gyp reads "1" as a number: gloo==1.
      "variables": { "gloo%": "<!(node scripts/gloo.js)" },
      "sources": ["<!@(node scripts/sources.js generic)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      # No implicit fused multiply-adds in the portable code: x86-64 has no FMA without -mfma,
      # so this changes nothing there, and arm64 (FMA in its base ISA) rounds the same way
      # (dequantization and norm backward results are specified to the f32 rounding step).
      # SIMD files write their FMAs explicitly.
      "cflags": ["-ffp-contract=off"],
      "conditions": [
        ["gloo==1", {
          "defines": ["PEFTKIT_GLOO"],
          "cflags_cc": ["<!@(node scripts/gloo.js include)"],
          "libraries": ["<!@(node scripts/gloo.js lib)", "-lgloo"]
        }],
        ["OS!='mac' and OS!='win'", {
          "libraries": ["-fopenmp"],
          # Node dlcloses an addon when the last worker using it exits; libgomp would go with it
          # while its idle team threads (made on libuv pool threads) still run its code: segfault.
          "ldflags": ["-Wl,-z,nodelete"]
        }],
        ["target_arch=='x64'", {
          "dependencies": ["peftkit_avx2", "peftkit_avx512", "peftkit_amx"],
          "defines": ["PEFTKIT_X86"]
        }],
        # NEON is in the arm64 base ISA: its files need no flags of their own.
        ["target_arch=='arm64'", {
          "sources": ["<!@(node scripts/sources.js neon)"],
          "defines": ["PEFTKIT_ARM64"]
        }]
      ]
    }
  ],
  # The x86 ISA libraries exist only on x64: other compilers reject their -m flags.
  "conditions": [
    ["target_arch=='x64'", {
      "targets": [
        {
          "target_name": "peftkit_avx2",
          "type": "static_library",
          "sources": ["<!@(node scripts/sources.js avx2)"],
          "cflags": ["-mavx2", "-mfma", "-mf16c"],
          "xcode_settings": { "OTHER_CPLUSPLUSFLAGS": ["-mavx2", "-mfma", "-mf16c"] },
          "msvs_settings": { "VCCLCompilerTool": { "AdditionalOptions": ["/arch:AVX2"] } }
        },
        {
          "target_name": "peftkit_avx512",
          "type": "static_library",
          "sources": ["<!@(node scripts/sources.js avx512)"],
          "cflags": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16"],
          "xcode_settings": { "OTHER_CPLUSPLUSFLAGS": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16"] },
          "msvs_settings": { "VCCLCompilerTool": { "AdditionalOptions": ["/arch:AVX512"] } }
        },
        {
          "target_name": "peftkit_amx",
          "type": "static_library",
          "sources": ["<!@(node scripts/sources.js amx)"],
          "cflags": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16",
                     "-mamx-tile", "-mamx-bf16"],
          "xcode_settings": { "OTHER_CPLUSPLUSFLAGS": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16",
                     "-mamx-tile", "-mamx-bf16"] },
          "msvs_settings": { "VCCLCompilerTool": { "AdditionalOptions": ["/arch:AVX512"] } }
        }
      ]
    }]
  ]
}
