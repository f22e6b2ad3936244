"""The command line: each subcommand's arguments are the parameters of the function it calls."""
import inspect

import pytest

from genemask import cli


def _subparsers():
    ap = cli.build_parser()
    return next(a for a in ap._actions if a.dest == "command").choices


@pytest.mark.parametrize("name", [name for name, _, _ in cli.SUBCOMMANDS])
def test_arguments_are_the_called_functions_parameters(name):
    """dest of every argument = a parameter of the function; every parameter without a default is
    an argument (so dispatch's fn(**arguments) cannot miss or rename one)."""
    p = _subparsers()[name]
    dests = {a.dest for a in p._actions if a.dest not in ("help", "_target")}
    fn = p.get_default("_target")()
    params = inspect.signature(fn).parameters
    if any(v.kind is v.VAR_KEYWORD for v in params.values()):  # bench: a namespace for its module
        return
    assert dests <= set(params), f"{name}: arguments that {fn.__name__} does not take: {dests - set(params)}"
    required = {n for n, v in params.items() if v.default is v.empty and v.kind is not v.VAR_POSITIONAL}
    assert required <= dests, f"{name}: parameters of {fn.__name__} no argument gives: {required - dests}"


def test_one_place_per_subcommand():
    """Every registered subcommand is in the parser, in order, with its help as description."""
    subs = _subparsers()
    assert list(subs) == [name for name, _, _ in cli.SUBCOMMANDS]
    for name, help, _ in cli.SUBCOMMANDS:
        assert subs[name].description == help


def test_dispatch_calls_by_name(tmp_path, capsys):
    out = tmp_path / "missing.tsv"
    assert cli.main(["write-missing", "t:10", "-o", str(out)]) == 0
    assert out.read_text().splitlines()[1].startswith("t\t10\t")
    assert cli.main(["fetch", "--mirror-path", "x", "--checksums-url", "u", "-o", str(tmp_path / "y")]) == 2
    assert "--checksums-url needs --checksums-path" in capsys.readouterr().err


def test_import_builds_no_parser():
    """Importing the CLI (what a warm-worker client does) imports neither argparse nor the schema."""
    import subprocess
    import sys

    code = ("import sys, genemask.cli; "
            "print(sorted(m for m in ('argparse', 'genemask.defaults', 'yaml', 'jsonschema') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
