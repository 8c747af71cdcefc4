"""fp8 (e4m3fn) rounding shared by the kernels that write an fp8 KV cache.

Triton's interpreter converts fp32 to fp8 wrongly when rounding carries into the exponent
(-125.97 became -64, not -128), so the cache write rounds to the e4m3 grid itself, in fp32,
and only then casts: the cast of a value already on the grid is exact everywhere. The result
is round-to-nearest-even with saturation at +-448, bit for bit what torch's
``(x / scale).clamp(-448, 448).to(torch.float8_e4m3fn)`` gives.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_to_e4m3(x):
    """fp32 ``x`` -> the nearest e4m3fn value (ties to even), saturated at +-448, as fp32."""
    x = tl.minimum(tl.maximum(x, -448.0), 448.0)
    a = tl.abs(x)
    # Exponent of |x| from its bits; below 2^-6 e4m3 is subnormal with a fixed step of 2^-9.
    e = ((a.to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32) - 127
    e = tl.maximum(e, -6)
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2^(e-3): 3 mantissa bits
    # Adding and subtracting 2^23 rounds an fp32 in [0, 2^23) to an integer, ties to even.
    n = (a / step + 8388608.0) - 8388608.0
    r = n * step
    negative = (x.to(tl.uint32, bitcast=True) >> 31) != 0  # the sign bit: -0.0 stays -0.0
    return tl.where(negative, -r, r)
