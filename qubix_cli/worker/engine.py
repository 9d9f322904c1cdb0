"""The GPU engine the worker can always carry, and the verifiable job it runs.

The verifiable job is a seeded integer matrix product: A and B are n x n matrices of
bytes drawn from a xorshift32 stream seeded with `seed`, C = A.B is exact on every device
(each entry is below 2^32 for n <= 65,536), and the answer is the SHA-256 of C as
little-endian uint32. Whoever knows the seed can check the answer, and a worker cannot
tell a check from a renter's job of the same type.

Engines, best first: `cuda` (the CUDA driver API through ctypes and a small PTX kernel:
`libcuda` ships with every NVIDIA driver, so no toolkit is needed), `torch` (with a GPU),
and `none`: the CPU, in plain Python. The result says which ran.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct
import time
from typing import Any, Callable, List, Tuple

from qubix_cli.worker.sandbox import vendor_index

PTX = b"""
.version 6.0
.target sm_50
.address_size 64

.visible .entry matmul(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u32 pn)
{
    .reg .pred p;
    .reg .u32 r<12>;
    .reg .u64 rd<8>;

    ld.param.u64 rd1, [pa];
    ld.param.u64 rd2, [pb];
    ld.param.u64 rd3, [pc];
    ld.param.u32 r1, [pn];
    cvta.to.global.u64 rd1, rd1;
    cvta.to.global.u64 rd2, rd2;
    cvta.to.global.u64 rd3, rd3;
    mov.u32 r2, %ctaid.x;
    mov.u32 r3, %ntid.x;
    mov.u32 r4, %tid.x;
    mad.lo.u32 r5, r2, r3, r4;
    mov.u32 r2, %ctaid.y;
    mov.u32 r3, %ntid.y;
    mov.u32 r4, %tid.y;
    mad.lo.u32 r6, r2, r3, r4;
    setp.ge.u32 p, r5, r1;
    @p bra DONE;
    setp.ge.u32 p, r6, r1;
    @p bra DONE;
    mov.u32 r7, 0;
    mov.u32 r8, 0;
LOOP:
    setp.ge.u32 p, r7, r1;
    @p bra STORE;
    mad.lo.u32 r9, r6, r1, r7;
    mul.wide.u32 rd4, r9, 4;
    add.u64 rd5, rd1, rd4;
    ld.global.u32 r10, [rd5];
    mad.lo.u32 r9, r7, r1, r5;
    mul.wide.u32 rd4, r9, 4;
    add.u64 rd5, rd2, rd4;
    ld.global.u32 r11, [rd5];
    mad.lo.u32 r8, r10, r11, r8;
    add.u32 r7, r7, 1;
    bra LOOP;
STORE:
    mad.lo.u32 r9, r6, r1, r5;
    mul.wide.u32 rd4, r9, 4;
    add.u64 rd5, rd3, rd4;
    st.global.u32 [rd5], r8;
DONE:
    ret;
}
"""

Matrix = List[int]  # row-major, n * n


def matrices(seed: int, n: int) -> tuple[Matrix, Matrix]:
    """A and B: bytes of a xorshift32 stream (the seed's low 32 bits, never zero)."""
    state = (seed & 0xFFFFFFFF) or 0x9E3779B9
    values = []
    for _ in range(2 * n * n):
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        values.append(state & 0xFF)
    return values[: n * n], values[n * n :]


def digest(c: Matrix) -> str:
    return hashlib.sha256(struct.pack(f"<{len(c)}I", *c)).hexdigest()


def cpu_product(a: Matrix, b: Matrix, n: int) -> Matrix:
    """C = A.B in plain Python (the reference, and the engine of last resort)."""
    columns = [b[j::n] for j in range(n)]
    c: Matrix = []
    for i in range(n):
        row = a[i * n : (i + 1) * n]
        c.extend(sum(x * y for x, y in zip(row, column)) for column in columns)
    return c


def timed_cpu_product(a: Matrix, b: Matrix, n: int) -> tuple[Matrix, float]:
    started = time.perf_counter()
    c = cpu_product(a, b, n)
    return c, time.perf_counter() - started


def expected_digest(seed: int, n: int) -> str:
    a, b = matrices(seed, n)
    return digest(cpu_product(a, b, n))


# -- CUDA through the driver API ----------------------------------------------------------

# (A, B, n) -> (C, seconds the product itself took on the device)
Product = Callable[[Matrix, Matrix, int], Tuple[Matrix, float]]


def load_libcuda() -> Any:
    """The CUDA driver library, or None where there is no NVIDIA driver."""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


class CudaError(Exception):
    pass


def _check(code: int, call: str) -> None:
    if code != 0:
        raise CudaError(f"{call} failed with CUDA error {code}")


def cuda_product(cuda: Any, device: int) -> Product:
    """C = A.B on GPU `device` through the driver API: context, PTX module, three buffers,
    one launch of 16 x 16 threads per block, copy back, free everything."""

    def product(a: Matrix, b: Matrix, n: int) -> tuple[Matrix, float]:
        size = 4 * n * n
        handle, context = ctypes.c_int(), ctypes.c_void_p()
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        _check(cuda.cuInit(0), "cuInit")
        _check(cuda.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
        _check(cuda.cuCtxCreate_v2(ctypes.byref(context), 0, handle), "cuCtxCreate")
        buffers = [ctypes.c_uint64() for _ in range(3)]
        try:
            _check(cuda.cuModuleLoadData(ctypes.byref(module), PTX + b"\0"), "cuModuleLoadData")
            _check(
                cuda.cuModuleGetFunction(ctypes.byref(function), module, b"matmul"),
                "cuModuleGetFunction",
            )
            for buffer in buffers:
                _check(cuda.cuMemAlloc_v2(ctypes.byref(buffer), size), "cuMemAlloc")
            host = (ctypes.c_uint32 * (n * n))()
            for buffer, values in zip(buffers, (a, b)):
                host[:] = values  # type: ignore[assignment]
                _check(cuda.cuMemcpyHtoD_v2(buffer, host, size), "cuMemcpyHtoD")
            width = ctypes.c_uint32(n)
            args = (ctypes.c_void_p * 4)(
                *(ctypes.cast(ctypes.pointer(x), ctypes.c_void_p) for x in (*buffers, width))
            )
            blocks = (n + 15) // 16
            started = time.perf_counter()
            _check(
                cuda.cuLaunchKernel(function, blocks, blocks, 1, 16, 16, 1, 0, None, args, None),
                "cuLaunchKernel",
            )
            _check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
            took = time.perf_counter() - started
            _check(cuda.cuMemcpyDtoH_v2(host, buffers[2], size), "cuMemcpyDtoH")
            return list(host), took
        finally:
            for buffer in buffers:
                if buffer.value:
                    cuda.cuMemFree_v2(buffer)
            if module.value:
                cuda.cuModuleUnload(module)
            cuda.cuCtxDestroy_v2(context)

    return product


def torch_product(torch: Any) -> Product:
    def product(a: Matrix, b: Matrix, n: int) -> tuple[Matrix, float]:
        ta = torch.tensor(a, dtype=torch.int64, device="cuda").reshape(n, n)
        tb = torch.tensor(b, dtype=torch.int64, device="cuda").reshape(n, n)
        torch.cuda.synchronize()
        started = time.perf_counter()
        tc = ta @ tb
        torch.cuda.synchronize()
        took = time.perf_counter() - started
        return [int(x) for x in tc.flatten().cpu().tolist()], took

    return product


def find_engine(gpus: list[dict], assigned: list[int]) -> tuple[str, Product | None]:  # type: ignore[type-arg]
    """The best engine for the job's GPUs: ("cuda"|"torch", product) or ("none", None)."""
    nvidia = [p for p in assigned if gpus[p]["vendor"] == "nvidia"] or [
        p for p, g in enumerate(gpus) if g["vendor"] == "nvidia"
    ]
    if not nvidia:
        return "none", None
    ordinal = vendor_index(gpus, nvidia[0])[1]
    cuda = load_libcuda()
    if cuda is not None:
        return "cuda", cuda_product(cuda, ordinal)
    try:
        import torch  # type: ignore[import-not-found]

        if torch.cuda.is_available():
            return "torch", torch_product(torch)
    except ImportError:
        pass
    return "none", None


def run_matmul(seed: int, n: int, gpus: list[dict], assigned: list[int]) -> dict:  # type: ignore[type-arg]
    """Compute the product on the best engine (the CPU if the GPU engine fails, said so):
    the digest, the engine, and the seconds the product itself took."""
    a, b = matrices(seed, n)
    engine, product = find_engine(gpus, assigned)
    note = None
    try:
        c, took = (product or timed_cpu_product)(a, b, n)
    except CudaError as exc:
        engine, note = "none", f"the {engine} engine failed ({exc}); computed on the CPU"
        c, took = timed_cpu_product(a, b, n)
    result = {"digest": digest(c), "engine": engine, "computeS": round(took, 6), "n": n}
    if note:
        result["note"] = note
    return result
