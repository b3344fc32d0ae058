"""Build Detectron2 0.6 as a pure-Python wheel from the PyPI sdist ``pb1-detectron2==0.6``.

That sdist is upstream Detectron2 v0.6 renamed, without the C++ sources, so its own
setup.py cannot build. The R50-C4 models never call the compiled ops, so we:
  1. download the sdist with pip (pinned by sha256), from the index pip is configured with,
  2. make the compatibility edits that upstream main also made (listed in EDITS; each
     must match exactly once, so a different sdist fails loudly instead of half-patching),
  3. add ``detectron2/_C.py``, a stand-in that names any compiled-only operator if called,
  4. package ``detectron2/`` (no extension) as ``detectron2-0.6+purepy`` into the cache.

Usage: python third_party/detectron2/build.py --cache DIR   (prints the wheel path)
Stdlib only, with the pip of the interpreter that runs it; torch must be installed first (see fetch_sdist).
"""
import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PROJECT = "pb1-detectron2"
SDIST = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
VERSION = "0.6+purepy"
WHEEL = f"detectron2-{VERSION}-py3-none-any.whl"
HERE = Path(__file__).resolve().parent

# (file, old, new): the smallest edits, the same ones upstream main made later.
EDITS = [
    # Pillow 10 removed the LINEAR alias; BILINEAR is the same filter.
    ("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR"),
    # numpy 1.24 removed the np.str/np.bool/np.int/np.float aliases of the builtins.
    ("detectron2/data/datasets/pascal_voc.py", "dtype=np.str)", "dtype=str)"),
    ("detectron2/evaluation/pascal_voc_evaluation.py", "for x in R]).astype(np.bool)\n", "for x in R]).astype(bool)\n"),
    ("detectron2/structures/masks.py", "np.zeros((height, width)).astype(np.bool)", "np.zeros((height, width)).astype(bool)"),
    ("detectron2/structures/masks.py", "mask_util.decode(rle).astype(np.bool)", "mask_util.decode(rle).astype(bool)"),
    ("detectron2/structures/masks.py", "np.asarray(keep, dtype=np.bool)", "np.asarray(keep, dtype=bool)"),
    ("detectron2/data/build.py", "histogram = np.zeros((num_classes,), dtype=np.int)", "histogram = np.zeros((num_classes,), dtype=int)"),
    ("detectron2/data/build.py", "if not x.get(\"iscrowd\", 0)], dtype=np.int", "if not x.get(\"iscrowd\", 0)], dtype=int"),
    # Python 3.11 refuses random.sample() on a set: a bad image would crash the loader.
    ("detectron2/data/common.py", "self._rng.sample(self._fallback_candidates, k=1)", "self._rng.sample(list(self._fallback_candidates), k=1)"),
    # setuptools 81 removed pkg_resources; importlib.resources finds the packaged configs.
    ("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "import importlib.resources\n"),
    (
        "detectron2/model_zoo/model_zoo.py",
        'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
        'str(importlib.resources.files("detectron2.model_zoo").joinpath("configs", config_path))',
    ),
]

SETUP_PY = f'''
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="{VERSION}",
    author="FAIR",
    url="https://github.com/facebookresearch/detectron2",
    description="Detectron2 v0.6 (PyPI sdist pb1-detectron2==0.6), pure-Python build by bt-transfer",
    license_expression="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    python_requires=">=3.8",
    install_requires=[
        "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8",
        "tabulate", "cloudpickle", "tqdm>4.29.0", "tensorboard", "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10", "omegaconf>=2.1", "hydra-core>=1.1",
    ],
)
'''


def fetch_sdist(cache: Path) -> Path:
    """The sdist in ``cache``, downloaded by pip itself, so the index, mirror, proxy and credentials pip is
    configured with are the ones used, and pinned by its sha256 (``--require-hashes``).

    pip prepares an sdist's metadata before it saves it, which runs this sdist's setup.py: it imports torch, so
    torch must be installed first (``make setup`` does) and the build runs without isolation. pip >= 26.3
    refuses any PyPI sdist whose metadata names a direct URL, as this one's "all" extra does (panopticapi on
    GitHub); the Makefile therefore keeps the environment's pip below 26.3.
    """
    target = cache / SDIST
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            requirement = Path(tmp) / "requirements.txt"
            requirement.write_text(f"{PROJECT}==0.6 --hash=sha256:{SDIST_SHA256}\n")
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
                 "--no-binary", ":all:", "--no-build-isolation", "--require-hashes", "-r", str(requirement),
                 "-d", tmp], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"pip could not download {SDIST} (sha256 {SDIST_SHA256}) from the index it is configured "
                         f"with:\n{done.stdout}{done.stderr}\nConfigure pip with an index that serves {PROJECT} "
                         f"(any PyPI mirror does), or put the file at {target} yourself.")
            shutil.move(Path(tmp) / SDIST, target.with_suffix(".part"))
        target.with_suffix(".part").rename(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        target.unlink()
        sys.exit(f"{target}: sha256 {digest} != expected {SDIST_SHA256}; deleted, rerun to download again")
    return target


def apply_edits(root: Path) -> None:
    for rel, old, new in EDITS:
        path = root / rel
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            sys.exit(f"{path}: expected exactly one occurrence of {old!r}, found {count}")
        path.write_text(text.replace(old, new))
    leftovers = [
        f"{p.relative_to(root)}: {m.group(0)}"
        for p in (root / "detectron2").rglob("*.py")
        for m in re.finditer(r"Image\.LINEAR\b|import pkg_resources", p.read_text())
    ]
    if leftovers:
        sys.exit("unpatched incompatibilities:\n" + "\n".join(leftovers))


def build(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL
    if wheel.exists():
        return wheel
    sdist = fetch_sdist(cache)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        root = Path(tmp) / "pb1-detectron2-0.6"
        apply_edits(root)
        shutil.copy(HERE / "_C.py", root / "detectron2" / "_C.py")
        (root / "setup.py").write_text(SETUP_PY)
        for stale in ("setup.cfg", "pyproject.toml"):
            (root / stale).unlink(missing_ok=True)
        out = Path(tmp) / "dist"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(root)],
            check=True, stdout=subprocess.DEVNULL,
        )
        built = next(out.glob("detectron2-*.whl"))
        shutil.move(built, wheel.with_suffix(".part"))
        wheel.with_suffix(".part").rename(wheel)
    return wheel


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="folder for the sdist and the built wheel")
    print(build(parser.parse_args().cache))
