"""An emulator of the GPU stack for tests on the CPU: fake `tensorrt` and `cuda.bindings.runtime`.

It implements exactly the subset that segexport calls (the builder of `segexport trt`, the
engine runner, the CUDA helpers), with the real bindings' names, signatures and return
conventions (cuda-python returns `(error, value...)` tuples;
`test_cuda_emulator.py` checks both surfaces against the real ones). An "engine" is an ONNX
file run by ONNX Runtime; "device memory" is host memory behind integer handles; work
enqueued on a stream runs only when the stream is synchronised. So the emulator catches what
a real GPU punishes (each check has a name, and can be switched off to prove a test needs it):

=================  =======================================================================
check              what it catches
=================  =======================================================================
``deferred``       reading a download before synchronising (its destination holds 0xFF bytes)
``bounds``         a copy larger than its allocation (`cudaErrorInvalidValue`, like CUDA)
``address``        a tensor address never set (`execute_async_v3` returns False, like
                   TensorRT) or freed before the work ran (`cudaErrorIllegalAddress` at sync)
``shapes``         an input shape not set before `execute_async_v3` (False, like TensorRT)
``double-free``    a buffer released twice (`cudaErrorInvalidValue`, like CUDA)
``pinned``         an async copy from or to pageable host memory (`Misuse`: real CUDA runs it
                   synchronously, silently losing the overlap)
``threads``        one execution context used from two threads while its work is in flight
``warmup``         capturing `execute_async_v3` without one plain run at that shape first
=================  =======================================================================

`install(monkeypatch)` puts both modules in `sys.modules`; `install(monkeypatch, cuda=real)`
keeps the real CUDA module and fakes only TensorRT (for GPU machines without TensorRT).
"""

from tests.emulator.device import CHECKS, Device, Misuse
from tests.emulator.install import Emulator, install
from tests.emulator.tensorrt import engine_bytes

__all__ = ["CHECKS", "Device", "Emulator", "Misuse", "engine_bytes", "install"]
