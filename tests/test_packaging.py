"""The package as pip installs it: declared dependencies, wheel contents, and a wheel install that
works without the repository (imports, shipped configs and masks, console scripts).

The wheel is built offline from a copy of the sources (the work tree stays clean); the install
test puts it into a fresh venv whose only other packages are this environment's, added through a
.pth file, so nothing has to be downloaded and the checkout is not on sys.path.
"""

import ast
import email.parser
import functools
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

SHIPPED_CODE = ("latentsync", "scripts", "gradio_app.py")  # what the wheel holds (setup.py)
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "gradio_app.py", "latentsync", "scripts", "configs")
# import name -> distribution, where the two differ and the installed metadata is ambiguous
IMPORT_TO_DIST = {
    "cv2": "opencv-contrib-python",  # the one OpenCV distribution (mediapipe depends on it)
    "yaml": "PyYAML",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "whisper": "openai-whisper",
    "face_alignment": "face-alignment",
}
FIRST_PARTY = {"latentsync", "scripts", "gradio_app"}
CONSOLE_SCRIPTS = ("latentsync-infer", "latentsync-app", "latentsync-train-unet", "latentsync-train-syncnet",
                   "latentsync-data", "latentsync-eval-sync")
EXTRAS = {"train", "data", "eval", "corpus", "app", "server", "test"}  # each must be pinned in requirements.txt
UNPINNED_EXTRAS = {"faces", "all"}  # optional face backends are not part of the tested set
PIP_QUIET = ["--disable-pip-version-check", "--no-index", "--quiet"]


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(source: str) -> set[str]:
    """Top-level names of absolute imports anywhere in `source` (also inside functions), minus the
    standard library and this project."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY}


def shipped_python_files() -> list[Path]:
    files = []
    for entry in SHIPPED_CODE:
        path = REPO / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


@functools.cache
def installed_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(import_name: str) -> str:
    """The distribution that provides `import_name` (explicit table, else installed metadata)."""
    if import_name in IMPORT_TO_DIST:
        return normalize(IMPORT_TO_DIST[import_name])
    installed = installed_distributions().get(import_name, [])
    return normalize(installed[0] if len(installed) == 1 else import_name)


def requirement_name(spec: str) -> str:
    return normalize(re.match(r"[A-Za-z0-9._-]+", spec).group(0))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel offline from a copy of the package sources."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", *PIP_QUIET,
                    "-w", str(dist), str(src)], check=True, capture_output=True)
    (built,) = dist.glob("latentsync-*.whl")
    return built


@pytest.fixture(scope="module")
def metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode())


def declared(metadata) -> dict[str, set[str]]:
    """Distribution names by extra ("" = the base install) from the wheel's Requires-Dist."""
    by_extra: dict[str, set[str]] = {}
    for line in metadata.get_all("Requires-Dist") or []:
        spec, _, marker = line.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        by_extra.setdefault(extra.group(1) if extra else "", set()).add(requirement_name(spec))
    return by_extra


def test_import_scan_sees_imports_inside_functions():
    source = "import os\nfrom . import x\nimport cv2\ndef f():\n    from skimage.draw import disk\n"
    assert third_party_imports(source) == {"cv2", "skimage"}
    assert distribution_of("cv2") == "opencv-contrib-python"
    assert distribution_of("yaml") == "pyyaml"


def test_scripts_import_each_other_relatively():
    """scripts/ ships as latentsync.cli: `from scripts._cli import ...` would break installed commands."""
    offenders = []
    for path in sorted((REPO / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "scripts"]
    assert not offenders, f"use relative imports (from ._cli import ...): {offenders}"


def test_every_third_party_import_is_declared(metadata):
    by_extra = declared(metadata)
    everything = set().union(*by_extra.values())
    missing = {}
    for path in shipped_python_files():
        for name in third_party_imports(path.read_text(encoding="utf-8")):
            if distribution_of(name) not in everything:
                missing.setdefault(f"{name} ({distribution_of(name)})", []).append(str(path.relative_to(REPO)))
    assert not missing, f"imported but not declared in pyproject.toml (base or an extra): {missing}"


def test_declared_dependencies_are_lower_bounds_pinned_in_requirements(metadata):
    by_extra = declared(metadata)
    assert {"torch", "torchvision", "numpy", "opencv-contrib-python", "mediapipe"} <= by_extra[""]
    assert EXTRAS <= set(by_extra), f"extras missing: {EXTRAS - set(by_extra)}"
    assert set(by_extra) - {""} <= EXTRAS | UNPINNED_EXTRAS, "an extra that requirements.txt does not cover"
    requires = metadata.get_all("Requires-Dist")
    assert not [r for r in requires if "==" in r.partition(";")[0]], "pyproject.toml pins exact versions"
    assert any(r.startswith("numpy") and "<2" in r for r in requires), "numpy must stay <2 for mediapipe"
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert "==" in line, f"requirements.txt: {line!r} is not an exact pin"
            pins[requirement_name(line)] = line
    wanted = set().union(*(names for extra, names in by_extra.items() if extra not in UNPINNED_EXTRAS))
    assert not wanted - set(pins), f"declared but not pinned in requirements.txt: {wanted - set(pins)}"
    assert not set(pins) - wanted, f"pinned but not declared in pyproject.toml: {set(pins) - wanted}"
    assert len([n for n in pins if n.startswith("opencv")]) == 1, "exactly one OpenCV distribution"


def test_wheel_holds_code_configs_and_masks(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "latentsync").rglob("*.py")}
    expected |= {"latentsync/cli/" + p.relative_to(REPO / "scripts").as_posix()
                 for p in (REPO / "scripts").rglob("*.py")}
    expected |= {"latentsync/configs/" + p.relative_to(REPO / "configs").as_posix()
                 for p in (REPO / "configs").rglob("*") if p.suffix in (".yaml", ".json")}
    expected |= {p.relative_to(REPO).as_posix() for p in (REPO / "latentsync" / "face").glob("*.png")}
    expected.add("gradio_app.py")
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("latentsync-infer", "latentsync-data"):
        assert f"{script} = " in entry_points


INSTALLED_CHECK = """
import sys
from pathlib import Path
import latentsync, latentsync.pipelines
from latentsync.face.mask import DEFAULT_MASK_PATH
from latentsync.paths import config_path, find_config
venv = Path(sys.argv[1]).resolve()
assert venv in Path(latentsync.__file__).resolve().parents, latentsync.__file__
for name in ("unet/stage2_512.yaml", "unet/stage2.yaml", "syncnet/syncnet_16_pixel_attn.yaml"):
    assert config_path(name).is_file() and venv in config_path(name).parents, config_path(name)
assert find_config("configs/unet/stage2.yaml") == config_path("unet/stage2.yaml")
assert DEFAULT_MASK_PATH.is_file() and venv in DEFAULT_MASK_PATH.parents
from latentsync.loading import DEFAULT_UNET_CONFIG  # latentsync-infer's default --unet_config_path
assert DEFAULT_UNET_CONFIG.is_file() and venv in DEFAULT_UNET_CONFIG.parents, DEFAULT_UNET_CONFIG
from importlib.metadata import distribution
for ep in distribution("latentsync").entry_points:  # every console script's target imports
    assert callable(ep.load()), ep
    assert venv in Path(sys.modules[ep.module].__file__).resolve().parents, ep
print("ok")
"""


def test_wheel_installs_and_runs_without_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies come from this environment (a path line: its .pth files are not run, so
    # the checkout's editable install stays out)
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", *PIP_QUIET,
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    run = dict(cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    result = subprocess.run([str(python), "-c", INSTALLED_CHECK, str(venv)], **run)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    for script in ("latentsync-infer", "latentsync-data"):
        result = subprocess.run([str(venv / "bin" / script), "--help"], **run)
        assert result.returncode == 0, f"{script} --help: {result.stderr[-2000:]}"
        assert f"usage: {script}" in result.stdout


# -- the shell launchers (scripts/launch.sh) ---------------------------------------------------

LAUNCHERS = {"inference.sh": "scripts.inference", "data_processing_pipeline.sh": "scripts.data_processing_pipeline",
             "train_unet.sh": "scripts.train_unet", "train_syncnet.sh": "scripts.train_syncnet",
             "train_vae.sh": "scripts.train_vae"}
TRAINERS = ("train_unet.sh", "train_syncnet.sh", "train_vae.sh")


@pytest.fixture
def echo_python(tmp_path):
    """A stand-in interpreter (PYTHON=...) that prints the command line a launcher gives it."""
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\necho "ARGS $*"\n')
    fake.chmod(0o755)
    return fake


def launch(name: str, *args: str, cwd, **env) -> subprocess.CompletedProcess:
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env}
    return subprocess.run([str(REPO / name), *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_every_launcher_passes_its_arguments_and_wants_some(name, echo_python, tmp_path):
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/scripts/launch.sh"' in (REPO / name).read_text()
    result = launch(name, "--flag", "a b", cwd=tmp_path, PYTHON=str(echo_python))
    assert result.returncode == 0 and result.stdout == f"ARGS -m {LAUNCHERS[name]} --flag a b\n", result.stderr
    result = launch(name, cwd=tmp_path, PYTHON=str(echo_python))  # no arguments: the tool's help, exit 2
    assert result.returncode == 2 and result.stderr == f"ARGS -m {LAUNCHERS[name]} --help\n" \
        "error: no arguments given (the help above lists them)\n"


@pytest.mark.parametrize("name", TRAINERS)
def test_every_trainer_takes_num_gpus_and_an_accelerate_config(name, echo_python, tmp_path):
    module = LAUNCHERS[name]
    result = launch(name, "--x", cwd=tmp_path, PYTHON=str(echo_python), NUM_GPUS="4")
    assert result.stdout == f"ARGS -m accelerate.commands.launch --multi_gpu --num_processes 4 -m {module} --x\n"
    result = launch(name, "--x", cwd=tmp_path, PYTHON=str(echo_python), ACCELERATE_CONFIG_FILE="acc.yaml")
    assert result.stdout == f"ARGS -m accelerate.commands.launch --config_file acc.yaml -m {module} --x\n"
    assert launch(name, "--x", cwd=tmp_path, PYTHON=str(echo_python), NUM_GPUS="1").stdout == f"ARGS -m {module} --x\n"
    bad = launch(name, "--x", cwd=tmp_path, PYTHON=str(echo_python), NUM_GPUS="two")
    assert bad.returncode == 2 and bad.stderr == "error: NUM_GPUS=two: expected a positive whole number\n"

