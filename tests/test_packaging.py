"""pyproject.toml: the requirement files say what its dependencies say, and the wheel it builds
ships every module, the configs (top-level configs/ -> personvit_jax/configs) and the console
scripts, and finds its configs when run from outside the checkout."""

import configparser
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from conftest import REPO, WEIGHT_FIXTURES

SCRIPTS = {"personvit-train": "personvit_jax.main:console",
           "personvit-prepare": "personvit_jax.data.prepare:main",
           "personvit-convert": "personvit_jax.tools.convert:main",
           "personvit-extract": "personvit_jax.tools.extract:main",
           "personvit-export": "personvit_jax.tools.export:main",
           "personvit-synthetic": "personvit_jax.synthetic.__main__:main"}


def _pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _requirements(name: str) -> set[str]:
    """The requirements of requirements*.txt file `name`, `-r` includes followed, comments and
    white space dropped."""
    out = set()
    with open(os.path.join(REPO, name)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("-r"):
                out |= _requirements(line[2:].strip())
            elif line:
                out.add(_canonical(line))
    return out


def _canonical(requirement: str) -> str:
    return "".join(requirement.split()).lower().replace("_", "-")


def test_requirement_files_match_pyproject():
    """requirements.txt = dependencies; requirements-<extra>.txt = dependencies + that extra,
    for every extra and every requirements-*.txt."""
    project = _pyproject()["project"]
    base = {_canonical(r) for r in project["dependencies"]}
    assert _requirements("requirements.txt") == base
    extras = project["optional-dependencies"]
    files = sorted(f[len("requirements-"):-len(".txt")] for f in os.listdir(REPO)
                   if f.startswith("requirements-") and f.endswith(".txt"))
    assert files == sorted(extras), "a requirements-<extra>.txt per extra, and no other"
    for extra, requirements in extras.items():
        want = base | {_canonical(r) for r in requirements}
        got = _requirements(f"requirements-{extra}.txt")
        assert got == want, (f"requirements-{extra}.txt vs pyproject's [{extra}]: only in the "
                             f"file {sorted(got - want)}, only in pyproject {sorted(want - got)}")


def test_console_scripts_are_callables():
    import importlib

    assert _pyproject()["project"]["scripts"] == SCRIPTS
    for target in SCRIPTS.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """The wheel setuptools builds from a copy of the sources (the checkout stays clean)."""
    pytest.importorskip("setuptools", reason="building the wheel needs requirements-test.txt")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("personvit_jax", "configs"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    r = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                        "print(build_meta.build_wheel(sys.argv[1]))", str(out)],
                       cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return str(out / r.stdout.strip().splitlines()[-1])


def test_wheel_ships_modules_configs_and_scripts(wheel):
    import personvit_jax

    names = set(zipfile.ZipFile(wheel).namelist())
    want = {os.path.relpath(os.path.join(d, f), REPO).replace(os.sep, "/")
            for d, _, fs in os.walk(os.path.join(REPO, "personvit_jax")) for f in fs
            if f.endswith(".py")}
    want |= {f"personvit_jax/configs/{f}" for f in os.listdir(os.path.join(REPO, "configs"))
             if f.endswith(".py")}
    assert want <= names, f"missing from the wheel: {sorted(want - names)}"
    dist_info = f"personvit_jax-{personvit_jax.__version__}.dist-info"
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == SCRIPTS


def test_installed_copy_finds_its_configs_outside_the_checkout(wheel, tmp_path):
    """Unpacked like `pip install` would, run from elsewhere: the configs come from the
    package, and `convert` (configs/finetune.py's defaults) writes a checkpoint."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import personvit_jax, sys\n"
             "from personvit_jax import config_args\n"
             "assert personvit_jax.__file__.startswith(sys.argv[1]), personvit_jax.__file__\n"
             "print(config_args.configs_dir())\n"
             "for name in ('pretrain', 'finetune', 'evaluate'):\n"
             "    config_args.load_config(name)\n")
    r = subprocess.run([sys.executable, "-c", probe, str(site)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[0] == str(site / "personvit_jax" / "configs")
    pth = os.path.join(WEIGHT_FIXTURES, "personvit_module.pth")
    r = subprocess.run([sys.executable, "-m", "personvit_jax.tools.convert", f"--input={pth}",
                        "--output=converted", "--num_heads=2", "--image_size=64,32"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "converted" / "config.json").is_file()
