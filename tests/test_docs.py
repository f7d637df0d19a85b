"""Every command in README.md and docs/*.md runs as written.

The shell blocks are extracted; every `segexport` line is parsed by the real click tree
(options, choices, sizes), `make` targets must exist in the Makefile and `pip install`
extras in pyproject.toml. The slow test then executes, in a scratch directory with a few
photos and a short video, the blocks that need no GPU: README's tour first, then docs/.
A block preceded by `<!-- parse-only: reason -->` is parsed only (GPU, TensorRT, network,
minutes of work); `<!-- not-run: reason -->` skips it, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from segexport.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!--\s*(?P<mark>not-run|parse-only):\s*(?P<reason>.*?)\s*-->\s*\n)?"
    r"```(?P<lang>bash|sh|shell|console|python)\n(?P<body>.*?)```",
    re.S,
)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    mark: str | None
    reason: str
    body: str

    @property
    def label(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[list[str]]:
        """Each logical shell line (continuations joined, comments dropped) as arguments."""
        joined = self.body.replace("\\\n", " ")
        return [args for line in joined.splitlines() if (args := shlex.split(line, comments=True))]


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        # README's first block sits in a quote: drop the quote marks
        text = re.sub(r"^> ?", "", path.read_text(), flags=re.M)
        for match in BLOCK.finditer(text):
            found.append(
                Block(
                    path,
                    text.count("\n", 0, match.start("body")),
                    match["lang"],
                    match["mark"],
                    match["reason"] or "",
                    match["body"],
                )
            )
    return found


def _parse(args: list[str]) -> None:
    """What `segexport ARGS` would do up to running the command: click's parsing and callbacks."""
    context = main.make_context("segexport", list(args))
    rest = [*getattr(context, "_protected_args", []), *context.args]
    name, command, remaining = main.resolve_command(context, rest)
    assert command is not None, f"no command {rest[:1]}"
    with command.make_context(name, remaining, parent=context):
        pass


def _check_line(args: list[str]) -> None:
    if args[0] == "segexport":
        with contextlib.suppress(click.exceptions.Exit):  # --help, --version
            _parse(args[1:])
    elif args[0] == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        assert set(args[1:]) <= targets, f"no Makefile target {set(args[1:]) - targets}"
    elif args[:2] == ["pip", "install"]:
        extras = _extras()
        for spec in args[2:]:
            named = re.fullmatch(r"segexport\[(.*)\]", spec)
            if named:
                missing = set(named[1].split(",")) - set(extras)
                assert not missing, f"no extra {missing}"


def _extras() -> set[str]:
    """The extras pyproject.toml declares (read by hand: tomllib is Python 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


SHELL = [b for b in blocks() if b.lang != "python"]


def test_the_docs_have_blocks_to_check() -> None:
    assert len(SHELL) >= 10 and any(b.path.name == "README.md" and b.mark is None for b in SHELL)


@pytest.mark.parametrize("block", [b for b in SHELL if b.mark != "not-run"], ids=lambda b: b.label)
def test_every_command_parses(block: Block) -> None:
    for args in block.commands():
        try:
            _check_line(args)
        except (click.ClickException, AssertionError) as error:
            message = error.format_message() if isinstance(error, click.ClickException) else str(error)
            pytest.fail(f"{block.label}: {shlex.join(args)}: {message}")


def test_not_run_blocks_say_why() -> None:
    for block in blocks():
        if block.mark:
            assert block.reason.strip(), f"{block.label}: say why the block is {block.mark}"


def _scratch(folder: Path) -> None:
    """What the tour's commands read: photos/ (street.png among them), street.mp4 and examples/."""
    import shutil

    import av
    import numpy as np
    from PIL import Image

    from segexport.data import SyntheticScenes

    shutil.copytree(ROOT / "examples", folder / "examples")  # docs/your-model.md exports examples/my_model.py
    (folder / "photos").mkdir()
    scenes = SyntheticScenes("eval", 12, (240, 320))
    for index in range(4):
        name = "street" if index == 0 else f"photo{index}"
        Image.fromarray(scenes[index][0]).save(folder / "photos" / f"{name}.png")
    with av.open(str(folder / "street.mp4"), "w") as video:
        stream = video.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for index in range(12):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scenes[index][0]), format="rgb24")
            for packet in stream.encode(frame):
                video.mux(packet)
        for packet in stream.encode():
            video.mux(packet)


@pytest.mark.slow
def test_the_runnable_blocks_run_as_written(tmp_path: Path) -> None:
    pytest.importorskip("av")
    _scratch(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for block in blocks():  # README first: its tour makes artifacts/demo for the docs
        if block.mark is not None:
            continue
        if block.lang == "python":
            steps = [[sys.executable, "-c", block.body]]
        else:
            steps = []
            for args in block.commands():
                assert args[0] == "segexport", f"{block.label}: only segexport lines run here; mark it"
                steps.append([sys.executable, "-m", "segexport", *args[1:]])
        for step in steps:
            ran = subprocess.run(step, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert ran.returncode == 0, f"{block.label}: {shlex.join(step[1:])}\n{ran.stderr[-2000:]}"
