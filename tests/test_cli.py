import json
import subprocess
import sys

import pytest

from chanattr.cli import main


def test_predict_json(run_cli):
    code, out, _ = run_cli("predict", "coffee", "--json", "--top", "3")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3
    assert rows[0]["index"] == 967 and rows[0]["name"] == "espresso"
    assert rows[0]["probability"] >= rows[1]["probability"] >= rows[2]["probability"]


def test_predict_text(run_cli):
    code, out, _ = run_cli("predict", "chelsea", "--top", "2")
    assert code == 0 and "cat" in out and len(out.strip().splitlines()) == 3


def test_layers_lists_shapes(run_cli):
    code, out, _ = run_cli("layers", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["conv_head"]["shape"] == [1, 1280, 7, 7] and rows["conv_head"]["channels"] == 1280


@pytest.mark.parametrize("argv, match", [
    (["predict", "no_such_file.jpg"], "image not found"),
    (["predict", "chelsea", "--model", "nope"], "unknown model"),
    (["predict", "chelsea", "--model", "torchvision:resnet1888"], "close names"),
    (["predict", "chelsea", "--device", "cuda:7"], "device"),
    (["layers", "--std", "0", "1", "1"], "must be positive"),
])
def test_bad_input_one_line_exit_2(run_cli, argv, match):
    code, _, err = run_cli(*argv)
    assert code == 2
    assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", "chelsea", "--top", "x"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid int value" in err and len(err.strip().splitlines()) == 1


def test_not_an_image_file(run_cli, tmp_path):
    bad = tmp_path / "fake.png"
    bad.write_bytes(b"\x00\x01 not a png")
    code, _, err = run_cli("predict", str(bad))
    assert code == 2 and "not an image file" in err


@pytest.mark.parametrize("command", ["predict", "layers", "explain", "channels", "invert", "run", "demo"])
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("usage: chanattr " + command)


def test_the_parser_is_built_without_torch():
    """``chanattr --help`` and usage errors answer at once: the package imports its API lazily."""
    code = ("import sys; from chanattr.cli import build_parser; build_parser(); import chanattr; "
            "print(sorted(m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _type_checking_imports(path: str) -> dict[str, str]:
    """name -> module of the imports under ``if TYPE_CHECKING:`` in a package's ``__init__``."""
    import ast

    tree = ast.parse(open(path).read())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    return {a.name: imp.module for imp in block.body if isinstance(imp, ast.ImportFrom) for a in imp.names}


def test_the_lazy_api_is_the_whole_api():
    import chanattr
    from chanattr.baselines import METHODS
    from chanattr.method_names import SALIENCY_METHODS

    assert tuple(METHODS) == SALIENCY_METHODS
    assert set(chanattr.__all__) == set(chanattr._MODULE_OF)
    assert _type_checking_imports(chanattr.__file__) == chanattr._MODULE_OF  # what static tools see is the same
    for name in chanattr.__all__:
        assert getattr(chanattr, name) is not None
    assert chanattr.evaluation.extremal_score and "load_model" in dir(chanattr)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        chanattr.nothing


def test_console_script_help_and_error():
    r = subprocess.run([sys.executable, "-m", "chanattr", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage" in r.stdout
    r = subprocess.run([sys.executable, "-m", "chanattr", "predict", "nowhere.png"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
