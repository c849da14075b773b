"""Every command shares facevib.cli: a user mistake is one line on stderr and exit code 2."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

from facevib.cli import make_parser, run_main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "train/arcface.py",
    "train/classic.py",
    "eval/ijb.py",
    "eval/verification.py",
    "eval/report.py",
    "eval/infoplane.py",
    "serve/app.py",
    "serve/exchange.py",
]
MODULES = [
    "facevib.train",
    "facevib.report.__main__",
    "facevib.info.__main__",
    "facevib.serve.__main__",
    "facevib.export.__main__",
    "facevib.detect.__main__",
    "facevib.data.__main__",
]


def _script_parser(rel: str):
    spec = importlib.util.spec_from_file_location("cli_" + rel.replace("/", "_")[:-3], ROOT / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_args_parser()


def _module_parser(name: str):
    module = importlib.import_module(name)
    return (getattr(module, "get_args_parser", None) or module.build_parser)()


@pytest.mark.parametrize("source", SCRIPTS + MODULES)
def test_unknown_flag_is_one_line_exit_2(source: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _script_parser(source) if source.endswith(".py") else _module_parser(source)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--no-such-flag-xyz"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    # a missing required argument may be reported first; either way one line naming the problem
    assert ": error: " in err and err.endswith("(see --help)\n") and "usage:" not in err


def test_subcommand_errors_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _module_parser("facevib.detect.__main__")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["detect"])  # the photos argument is missing
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "photos" in err and "usage:" not in err


def test_run_main_maps_user_errors_and_keeps_bugs(capsys: pytest.CaptureFixture[str]) -> None:
    def missing(argv):
        raise FileNotFoundError("no such file: x.bin")

    def ok(argv):
        return 0 if argv == ["a"] else 5

    def bug(argv):
        raise KeyError("a real bug")

    assert run_main(missing, [], prog="tool") == 2
    assert capsys.readouterr().err == "tool: error: no such file: x.bin\n"
    assert run_main(ok, ["a"]) == 0
    with pytest.raises(KeyError):
        run_main(bug, [])


def test_make_parser_keeps_the_docstring_layout(capsys: pytest.CaptureFixture[str]) -> None:
    parser = make_parser("Tool.\n\n    python -m tool --x 1\n    python -m tool --x 2\n", prog="tool")
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "    python -m tool --x 1\n    python -m tool --x 2" in out


def test_training_module_and_script_are_one_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from facevib.train import main

    script = importlib.util.spec_from_file_location("cli_train_wrapper", ROOT / "train" / "arcface.py")
    wrapper = importlib.util.module_from_spec(script)
    script.loader.exec_module(wrapper)
    assert wrapper.main is main
    missing = tmp_path / "no_such_config.py"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_config.py" in err
