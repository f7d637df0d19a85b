"""tools/trt_typecheck.py: our TensorRT code type-checked against the real bindings of each release.

TensorRT cannot be installed here, so these static checks are the only place where a call that
one release does not have (11.x dropped `BuilderFlag.FP16`, `int8_calibrator`, ...) shows up
before a user's machine. The end-to-end tests download the bindings wheels from PyPI on their
first run (cached in .cache/trt-stubs, or $SEGEXPORT_TRT_CACHE, afterwards).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "trt_typecheck.py"
V10_3, V10_16, V11_4 = "10.3.0", "10.16.1.11", "11.4.0.106"


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trt_typecheck", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


tool = _load_tool()

needs_toolchain = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not all(shutil.which(t) for t in ("cc", "nm", "readelf")),
    reason="the TensorRT shim needs Linux, a C compiler and binutils",
)


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def plant(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


# The TensorRT calls of a builder and a runner that 10.x and 11.x both have.
COMMON_API = '''
    """Planted: strongly typed build from ONNX, then deserialize and run setup."""

    from __future__ import annotations

    import tensorrt as trt


    def build_and_load(onnx_path: str, workspace: int) -> bytes | None:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(onnx_path):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            raise RuntimeError("; ".join(f"{e.node_name()}: {e.desc()}" for e in errors))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        profile.set_shape(name, (1, 3, 64, 64), (1, 3, 512, 512), [4, 3, 1024, 1024])
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            return None
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        context = engine.create_execution_context()
        for tensor in inputs:
            context.set_input_shape(tensor, tuple(engine.get_tensor_shape(tensor)))
        version: str = trt.__version__
        return bytes(plan) if version else None
'''

FP16_FLAG = """
    import tensorrt as trt


    def enable_fp16(config: trt.IBuilderConfig) -> None:
        config.set_flag(trt.BuilderFlag.FP16)
"""

IMPLICIT_INT8 = """
    import tensorrt as trt


    def implicit_int8(config: trt.IBuilderConfig) -> object:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = None
        return trt.IInt8EntropyCalibrator2
"""


@needs_toolchain
def test_common_builder_api_passes_on_every_version(tmp_path: Path) -> None:
    planted = plant(tmp_path, "common_api", COMMON_API)
    result = run_tool("--versions", V10_3, V10_16, V11_4, "--files", str(planted))
    assert result.returncode == 0, result.stdout + result.stderr
    for version in (V10_3, V10_16, V11_4):
        assert f"tensorrt {version}: OK (1 module)" in result.stdout


@needs_toolchain
def test_fp16_flag_exists_on_10x_only(tmp_path: Path) -> None:
    planted = plant(tmp_path, "fp16_flag", FP16_FLAG)
    result = run_tool("--versions", V10_16, V11_4, "--files", str(planted))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"tensorrt {V10_16}: OK (1 module)" in result.stdout
    assert f"tensorrt {V11_4}: FAILED (1 error)" in result.stdout
    assert f'[{V11_4}]   {planted}:6: error: "type[BuilderFlag]" has no attribute "FP16"' in result.stdout


@needs_toolchain
def test_implicit_int8_calibration_is_gone_in_11x(tmp_path: Path) -> None:
    planted = plant(tmp_path, "implicit_int8", IMPLICIT_INT8)
    result = run_tool("--versions", V11_4, "--files", str(planted))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"tensorrt {V11_4}: FAILED (3 errors)" in result.stdout
    assert '"type[BuilderFlag]" has no attribute "INT8"' in result.stdout
    assert '"IBuilderConfig" has no attribute "int8_calibrator"' in result.stdout
    assert 'Module has no attribute "IInt8EntropyCalibrator2"' in result.stdout


def test_missing_stubs_fail_instead_of_passing_silently(tmp_path: Path) -> None:
    """With `ignore_missing_imports`, a stub mypy cannot find would make `trt` Any and
    everything pass: the probe must turn that into a failure."""
    empty = tmp_path / "0.0" / "stubs"
    empty.mkdir(parents=True)
    planted = plant(tmp_path, "fp16_flag", FP16_FLAG)
    result = tool.run_mypy(tool.Stubs("0.0", empty, [], [], cached=True), [planted], tmp_path)
    assert not result.ok
    assert "mypy did not use the generated stubs" in result.messages[0]


def test_fix_stub_makes_pybind11_signatures_valid_python() -> None:
    raw = textwrap.dedent('''
        from __future__ import annotations
        import typing
        class DataType:
            FLOAT: typing.ClassVar[DataType]
        class Dims:
            def __getitem__(self, arg0: typing.SupportsInt) -> int:
                ...
            def __len__(self) -> int:
                ...
        class IHostMemory:
            @property
            def nbytes(self) -> int:
                ...
        class ParserError:
            def node_name(self) -> str:
                ...
        class OnnxParser:
            def get_error(self, index: typing.SupportsInt) -> nvonnxparser::IParserError:
                """
                Mentions nvinfer1::ICudaEngine and capsule, left as they are.
                """
            def supports(self, flag: nvinfer1::NoSuchClass) -> bool:
                ...
        class IPluginV2DynamicExt:
            def get_workspace_size(self, in: list[int], out: list[int]) -> int:
                ...
        class INetworkDefinition:
            def add_scale_nd(self, x: int, shift: Weights = None, channel_axis: typing.SupportsInt) -> None:
                ...
        class IOptimizationProfile:
            def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None:
                ...
        class ICudaEngine:
            def create(self, strategy: DataType = <DataType.FLOAT: 0>, memory: capsule = None) -> None:
                ...
        bool: DataType
    ''')
    fixed = tool.fix_stub(raw, "1.2.3", ["ICudaEngine.device_memory"])
    assert "def get_error(self, index: typing.SupportsInt) -> ParserError:" in fixed
    assert "Mentions nvinfer1::ICudaEngine and capsule, left as they are." in fixed
    assert "def supports(self, flag: typing.Any) -> builtins.bool:" in fixed
    assert "def get_workspace_size(self, in_: list[int], out: list[int]) -> int:" in fixed
    assert "shift: Weights | numpy.ndarray = None, channel_axis: typing.SupportsInt = ...) -> None:" in fixed
    sequence = "Dims | collections.abc.Sequence[typing.SupportsInt]"
    assert f"def set_shape(self, input: str, min: {sequence}, opt: {sequence}, max: {sequence})" in fixed
    assert "strategy: DataType = ..., memory: typing_extensions.CapsuleType = None" in fixed
    assert "def __iter__(self) -> collections.abc.Iterator[int]: ..." in fixed
    assert "def __buffer__(self, flags: int, /) -> memoryview: ..." in fixed
    assert "    device_memory: typing.Any  # write-only\n" in fixed
    assert "\nbool: DataType\n" in fixed
    assert "\n__version__: str\n" in fixed
    assert "_segexport_stub_version: typing.Final = '1.2.3'" in fixed


def test_discovers_static_and_flags_dynamic_tensorrt_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    plant(package, "top", "import tensorrt as trt\n")
    plant(package, "lazy", "def f() -> None:\n    import tensorrt as trt\n    del trt\n")
    plant(package, "dynamic", "import importlib\ntrt = importlib.import_module('tensorrt')\n")
    plant(package, "mention", '"""Why `import tensorrt` fails."""\nimport tensorrt_libs_not_this\n')
    modules, unchecked = tool.discover_modules(package)
    assert [p.name for p in modules] == ["dynamic.py", "lazy.py", "top.py"]
    assert [p.name for p in unchecked] == ["dynamic.py"]


def test_generated_mypy_config_keeps_project_settings_and_requires_the_stubs(tmp_path: Path) -> None:
    config = tool.mypy_config(ROOT / "pyproject.toml", tmp_path)
    assert f"mypy_path = {tmp_path}" in config
    assert "disallow_untyped_defs = True" in config
    assert "files =" not in config
    assert "[mypy-tensorrt.*]\nignore_missing_imports = False\nignore_errors = True" in config
