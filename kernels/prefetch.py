"""Software prefetch for the CPU kernels: LLVM's ``llvm.prefetch`` as a numba intrinsic.

Loops that touch a large table at random (hash probes, state rows) ask the CPU to start
loading the line of an element some iterations ahead, so that several misses overlap
instead of waiting one after the other. A prefetch never faults and changes no result.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["PREFETCH_DISTANCE"]

#: iterations ahead of the current one whose lines the CPU loops prefetch
PREFETCH_DISTANCE = 16


def _prefetch_typer(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    """Ask the CPU to start loading ``arr[idx]``'s cache line (LLVM's prefetch for write)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                       wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


_prefetch: Any = intrinsic(_prefetch_typer)
