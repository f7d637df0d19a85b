"""A real Triton server serving a generated ensemble end to end, on loopback.

The server is the `tritonserver` 2.51 that the `nvidia-pytriton` 0.7.0 wheel bundles: CPU,
Python backend only (no onnxruntime or tensorrt backend). Its Python-backend stub needs
numpy < 2, so it runs from its own venv (`make test-triton` creates `.venv-pytriton`; or point
SEGEXPORT_PYTRITON_VENV at one with nvidia-pytriton, numpy<2, pillow and onnxruntime).

What this proves: the generated pre/post-processing models, their configs and the ensemble
load in a real server, and concurrent clients get the runtime's masks for images of several
sizes, with the dynamic batcher combining requests. The network step runs as a Python-backend
stand-in (ONNX Runtime on the CPU, same config otherwise): the onnxruntime backend itself,
its TensorRT accelerator and plans are not exercised here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from segexport.data import render_scene
from segexport.export import ExportRequest, export_onnx
from segexport.quantize import QuantizeRequest, quantize_artifact
from segexport.runtime import open_artifact, preprocess, resize
from segexport.runtime.geometry import logits_to_mask
from segexport.serving.triton import TritonRequest, parse_config, render_config, write_repository

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("SEGEXPORT_PYTRITON_VENV", ROOT / ".venv-pytriton"))
STANDIN = Path(__file__).resolve().parent / "triton" / "standin_model.py"
SERVED = (64, 64)
SIZES = [(64, 64), (120, 160), (37, 91), (300, 200), (120, 160), (50, 70), (64, 64), (200, 120)]


def pytriton_server() -> tuple[Path, Path, Path]:
    """(server dist dir, its bundled libs, the venv's python) or skip with the reason."""
    python = VENV / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no PyTriton venv at {VENV} (make test-triton creates it)")
    found = subprocess.run(
        [
            str(python),
            "-c",
            "import pytriton, numpy, sys; print(pytriton.__file__); print(numpy.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        pytest.skip(f"{python} lacks nvidia-pytriton or numpy: {found.stderr.strip().splitlines()[-1:]}")
    module_file, numpy_version = found.stdout.split()
    if int(numpy_version.split(".")[0]) >= 2:
        pytest.skip(f"{VENV} has numpy {numpy_version}; the Python-backend stub needs numpy < 2")
    dist = Path(module_file).parent / "tritonserver"
    libs = Path(module_file).parents[1] / "nvidia_pytriton.libs"
    if not (dist / "bin" / "tritonserver").is_file():
        pytest.skip(f"no tritonserver binary in {dist}")
    return dist, libs, python


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def pytriton() -> tuple[Path, Path, Path]:
    return pytriton_server()


@pytest.fixture(scope="module")
def artifact(pytriton: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("served") / "unet-small"
    export_onnx(ExportRequest("unet-small", weights="demo", size=SERVED, out_dir=out))
    quantize_artifact(QuantizeRequest(artifacts=out, int8=False, eval_images=4))
    return out


def use_standin(repo: Path, name: str) -> None:
    """Serve the network through the Python backend (same name, I/O, batching), running its model.onnx."""
    path = repo / name / "config.pbtxt"
    config = parse_config(path.read_text())
    for key in ("optimization", "default_model_filename"):
        config.pop(key, None)
    config["backend"] = "python"
    config["instance_group"] = [{"kind": "KIND_CPU", "count": 1}]
    path.write_text(render_config(config))
    shutil.copyfile(STANDIN, repo / name / "1" / "model.py")


@pytest.fixture(scope="module")
def server(
    pytriton: tuple[Path, Path, Path], artifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    dist, libs, python = pytriton
    pytest.importorskip("tritonclient.grpc", reason="the client side needs segexport[triton]")
    work = tmp_path_factory.mktemp("tritonserver")
    repo = work / "repo"
    write_repository(
        TritonRequest(
            artifacts=artifact,
            repo=repo,
            name="seg",
            format="onnx-fp16",
            ensemble=True,
            preferred_batch=(4,),
            max_queue_delay_us=50_000,
        )
    )
    use_standin(repo, "seg")
    # PyTriton's layout: the server with the stub for the venv's Python in backends/python.
    shutil.copytree(dist / "bin", work / "bin")
    shutil.copytree(dist / "backends", work / "backends")
    version = subprocess.run(
        [str(python), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.skip(f"PyTriton has no Python-backend stub for Python {version}")
    shutil.copy(stub, work / "backends" / "python" / "triton_python_backend_stub")
    grpc_port, http_port = free_port(), free_port()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{libs}:{env.get('LD_LIBRARY_PATH', '')}"
    # The stub's embedded interpreter finds its environment through the python on PATH.
    env["PATH"] = f"{python.parent}:{env['PATH']}"
    log = work / "server.log"
    command = [
        str(work / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={work / 'backends'}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--disable-auto-complete-config",
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_started(process, log)
        yield f"127.0.0.1:{grpc_port}", log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_started(process: subprocess.Popen[bytes], log: Path) -> None:
    """Return when the gRPC endpoint is up; skip if the binary can't run here, fail on anything else."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Started GRPCInferenceService" in text:
            return
        if process.poll() is not None:
            tail = " | ".join(text.strip().splitlines()[-5:])
            if process.returncode in (126, 127) or "error while loading shared libraries" in text:
                pytest.skip(f"tritonserver cannot run on this machine: {tail}")
            pytest.fail(f"tritonserver exited with {process.returncode}: {tail}")
        time.sleep(0.25)
    pytest.fail(f"tritonserver did not start in 120 s: {log.read_text()[-2000:]}")


def test_the_ensemble_serves_the_runtimes_masks(artifact: Path, server: tuple[str, Path]) -> None:
    from segexport.serving.client import TritonSegmenter

    url, log = server
    rng = np.random.default_rng(11)
    images = [render_scene(rng, height, width)[0] for height, width in SIZES]
    with TritonSegmenter("seg_ensemble", url=url) as client:
        client.wait_ready(60)
        with ThreadPoolExecutor(len(images)) as pool:
            masks = list(pool.map(client, images))

    runner, manifest = open_artifact(artifact, "model.fp16.onnx")
    processing = manifest["preprocessing"]
    for image, mask in zip(images, masks, strict=True):
        tensor = preprocess(resize(image, SERVED), processing["mean"], processing["std"], processing["scale"])
        expected = logits_to_mask(runner.infer({"image": tensor})["logits"][0], image.shape[:2])
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected)
    assert len(set(np.unique(np.concatenate([m.ravel() for m in masks])).tolist())) >= 3
    batches = [line for line in log.read_text().splitlines() if "standin batch" in line]
    print("\n".join(batches), file=sys.stderr)  # shown with -s: how the dynamic batcher grouped them
    assert batches, "the network step never ran"


def test_a_wrong_image_is_refused_and_the_server_keeps_serving(server: tuple[str, Path]) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    url, _ = server
    client = grpcclient.InferenceServerClient(url=url)
    wrong = grpcclient.InferInput("IMAGE", [8, 8, 4], "UINT8")
    wrong.set_data_from_numpy(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(InferenceServerException, match="IMAGE"):
        client.infer("seg_ensemble", [wrong])
    right = grpcclient.InferInput("IMAGE", [8, 8, 3], "UINT8")
    right.set_data_from_numpy(np.zeros((8, 8, 3), np.uint8))
    assert client.infer("seg_ensemble", [right]).as_numpy("MASK").shape == (8, 8)
    client.close()
