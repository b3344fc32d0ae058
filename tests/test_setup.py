"""`make setup` and the commands say only what matters: no hard-coded download address, the Detectron2 sdist downloaded
by pip from the index it is configured with, licenses as SPDX expressions (no setuptools deprecation warnings), and no
warnings from any command's --help."""
import importlib.util
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_PY = ROOT / "third_party" / "detectron2" / "build.py"
PACKAGES = ("bt_transfer", "pretrain", "bench")  # pyproject's [tool.setuptools.packages.find]


def load_build():
    spec = importlib.util.spec_from_file_location("d2_build", BUILD_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_modules() -> list[str]:
    """Every `python -m` entry point: modules that run under __main__, packages with a __main__.py."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "__main__.py":
                found.add(".".join(path.parent.relative_to(ROOT).parts))
            elif re.search(r"""^if __name__ == ["']__main__["']:""", path.read_text(), re.MULTILINE):
                found.add(".".join(path.with_suffix("").relative_to(ROOT).parts))
    return sorted(found)


def test_build_names_no_download_address():
    urls = set(re.findall(r"""\b[a-z][a-z0-9+.-]*://[^\s"'<>)]+""", BUILD_PY.read_text()))
    assert urls == {"https://github.com/facebookresearch/detectron2"}  # the home page in the wheel's metadata


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local package index (PEP 503 folder layout) that pip is configured to use instead of PyPI."""
    project = tmp_path / "simple" / "pb1-detectron2"
    project.mkdir(parents=True)
    (tmp_path / "files").mkdir()
    (project / "index.html").write_text('<a href="../../files/pb1-detectron2-0.6.tar.gz">sdist</a>\n')
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "simple").as_uri())
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    return tmp_path / "files"


def test_pip_downloads_the_sdist_from_its_configured_index_and_checks_its_hash(mirror, tmp_path):
    d2_build = load_build()
    (mirror / d2_build.SDIST).write_bytes(b"not the sdist")
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(SystemExit, match=r"(?s)pip could not download .*DO NOT MATCH THE HASHES.*put the file at"):
        d2_build.fetch_sdist(cache)  # pip fetched the mirror's file, and refused it
    assert list(cache.iterdir()) == []


def test_pyproject_license_is_an_spdx_expression_setuptools_accepts_without_warning():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # setuptools >= 77 deprecates the {text = ...} table
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "MIT"


def test_generated_detectron2_setup_declares_an_spdx_license_without_warning(tmp_path):
    (tmp_path / "detectron2").mkdir()
    (tmp_path / "detectron2" / "__init__.py").write_text('__version__ = "0.6"\n')
    (tmp_path / "setup.py").write_text(load_build().SETUP_PY)
    prepare = "from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel('.'))"
    done = subprocess.run([sys.executable, "-W", "error", "-c", prepare], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    metadata = (tmp_path / done.stdout.splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()


@pytest.mark.parametrize("module", command_modules())
def test_help_prints_no_warning(module):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "usage:" in done.stdout
    assert done.stderr == ""
