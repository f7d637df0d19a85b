"""One spelling per idea, each option explained: walks the whole click tree."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from segexport.cli import main
from segexport.cli._base import DEPRECATED_SPELLINGS


def _options() -> list[tuple[str, click.Option]]:
    found = []
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                found.append((name, param))
    return found


def test_every_option_has_help_that_states_its_default() -> None:
    missing, no_default = [], []
    for command, option in _options():
        label = f"{command} {option.opts[0]}"
        if not (option.help or "").strip():
            missing.append(label)
            continue
        default = option.default
        unset = default is None or default is getattr(click.core, "UNSET", None)
        if option.is_flag or unset or option.multiple or callable(default):
            continue
        if not option.show_default and "[" not in option.help and "default" not in option.help:
            no_default.append(label)
    assert not missing, f"options without help: {', '.join(missing)}"
    assert not no_default, f"options whose help hides the default: {', '.join(no_default)}"


def test_one_spelling_for_image_counts_batches_and_precision() -> None:
    spelled = {opt for _, option in _options() for opt in option.opts}
    assert not spelled & {"--eval-images", "--batch-size", "--fp32"}
    assert "--precision" in {o for _, option in _options() if _ == "trt" for o in option.opts}
    for command, old in DEPRECATED_SPELLINGS.items():
        assert command in main.commands, command
        for new in old.values():
            assert new[0] in {o for p in main.commands[command].params for o in getattr(p, "opts", [])}


@pytest.mark.parametrize(
    ("args", "note"),
    [
        (["trt", "--int8", "--gpu-fallback"], "--int8 is deprecated; use --precision int8"),
        (["quantize", "--eval-images", "0"], "--eval-images is deprecated; use --limit"),
        (["train", "--batch-size=0", "--model", "unet-small", "--out", "x"], "use --batch"),
    ],
)
def test_old_spellings_still_parse_with_a_note(args: list[str], note: str) -> None:
    result = CliRunner().invoke(main, args)
    assert note in result.stderr
    assert "no such option" not in result.stderr


def test_two_old_precision_flags_are_refused() -> None:
    result = CliRunner().invoke(main, ["trt", "--fp16", "--int8"])
    assert result.exit_code == 2
    assert "--fp16 and --int8 are mutually exclusive" in result.stderr


def test_top_level_help_documents_exit_codes_and_no_later() -> None:
    text = CliRunner().invoke(main, ["--help"]).output
    assert "and later" not in text
    for code in ("0 ok", "1 verification", "2 a usage", "3 this install"):
        assert code in " ".join(text.split()), code
