#!/usr/bin/env python3
"""Rewrites a .cu file into C++ for the CPU emulation (include/emu.h): kernel launches
`k<<<grid, block, smem, stream>>>(args)` become `emu::Launcher(k, grid, block, smem, stream)(args)`
and `extern __shared__ T name[];` becomes a pointer to the block's dynamic shared memory."""
import re
import sys

src = open(sys.argv[1]).read()
src = re.sub(r'extern __shared__ (\w+) (\w+)\[\];', r'\1* \2 = emu::dynamic_smem<\1>();', src)
src = re.sub(r'([\w:]+(?:<[^<>;]*>)?)<<<(.*?)>>>', r'emu::Launcher(\1, \2)', src, flags=re.S)
sys.stdout.write(f'#line 1 "{sys.argv[1]}"\n' + src)
