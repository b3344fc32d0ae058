"""Build Detectron2 0.6 as a pure-Python wheel from the PyPI sdist ``pb1-detectron2==0.6``.

That sdist is upstream Detectron2 v0.6 renamed, without the C++ sources, so its own
setup.py cannot build. The R50-C4 models never call the compiled ops, so we:
  1. fetch the sdist (pinned by sha256) from the package index pip is configured with,
  2. make the compatibility edits that upstream main also made (listed in EDITS; each
     must match exactly once, so a different sdist fails loudly instead of half-patching),
  3. add ``detectron2/_C.py``, a stand-in that names any compiled-only operator if called,
  4. package ``detectron2/`` (no extension) as ``detectron2-0.6+purepy`` into the cache.

Usage: python third_party/detectron2/build.py --cache DIR   (prints the wheel path)
Stdlib only (and the pip of the interpreter that runs it): it runs before anything else is installed.
"""
import argparse
import ast
import base64
import hashlib
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

PROJECT = "pb1-detectron2"
SDIST = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# pip's own default, used when pip is configured with no index-url. The sdist's address comes from the index.
PIP_DEFAULT_INDEX = "https://pypi.org/simple"
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


# Why not `pip download pb1-detectron2==0.6 --no-deps --no-binary :all:`: pip prepares an sdist's metadata before it
# saves the file, and pip >= 26.3 refuses a distribution from PyPI's file host whose metadata names a direct URL (this
# sdist's "all" extra names panopticapi on GitHub). So we take the index pip is configured with and read the file's
# address from that index (the Simple Repository API, PEP 503, which mirrors serve too), then check its sha256.


def pip_settings() -> dict[str, str]:
    """pip's configuration as `pip config list` reports it: 'section.name' from its files, ':env:.name' from PIP_*."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    return {key: ast.literal_eval(value) for key, _, value in (line.partition("=") for line in listing.splitlines())}


def pip_setting(settings: dict[str, str], name: str) -> str | None:
    """What `pip install` uses for NAME: its PIP_* variable, else the [install] section, else [global]."""
    return next((settings[f"{s}.{name}"] for s in (":env:", "install", "global") if f"{s}.{name}" in settings), None)


def pip_indexes(settings: dict[str, str]) -> list[str]:
    """The indexes `pip install` searches, in its order; none under no-index."""
    if (pip_setting(settings, "no-index") or "").lower() in ("1", "true", "yes", "on"):
        return []
    extra = (pip_setting(settings, "extra-index-url") or "").split()
    return [pip_setting(settings, "index-url") or PIP_DEFAULT_INDEX, *extra]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "a":
            self.hrefs += [value for key, value in attrs if key == "href" and value]


class IndexClient:
    """Reads the package indexes pip is configured with, as pip would: its CA bundle and proxy, and the credentials
    written into an index URL, sent to that index's host only."""

    def __init__(self, settings: dict[str, str]) -> None:
        context = ssl.create_default_context(cafile=pip_setting(settings, "cert"))
        handlers = [urllib.request.HTTPSHandler(context=context)]
        if proxy := pip_setting(settings, "proxy"):
            handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
        self._opener = urllib.request.build_opener(*handlers)
        self._authorization: dict[str, str] = {}
        self.indexes: list[str] = []  # without their credentials: safe to print
        for index in pip_indexes(settings):
            parts = urllib.parse.urlsplit(index)
            host = parts.netloc.rpartition("@")[2]
            if parts.username is not None:
                user = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
                self._authorization[host] = "Basic " + base64.b64encode(user.encode()).decode()
            self.indexes.append(parts._replace(netloc=host).geturl())

    def open(self, url: str):
        request = urllib.request.Request(url)
        if authorization := self._authorization.get(urllib.parse.urlsplit(url).netloc):
            request.add_header("Authorization", authorization)
        return self._opener.open(request, timeout=120)

    def find(self, project: str, filename: str) -> str:
        """Address of FILENAME as the first index that lists it under PROJECT gives it; LookupError says why not."""
        misses = []
        for index in self.indexes:
            page = index.rstrip("/") + f"/{project}/"
            try:  # a local folder index has the page as index.html, as pip reads it
                with self.open(page + "index.html" if page.startswith("file:") else page) as response:
                    links = _Links()
                    links.feed(response.read().decode("utf-8", errors="replace"))
            except OSError as error:  # urllib's HTTP and URL errors included
                misses.append(f"{index}: {getattr(error, 'reason', error)}")
                continue
            for href in links.hrefs:
                url = urllib.parse.urljoin(page, href).partition("#")[0]
                if urllib.parse.unquote(url.rpartition("/")[2]) == filename:
                    return url
            misses.append(f"{index}: no {filename}")
        raise LookupError("; ".join(misses) or "pip is set to no-index")


def fetch_sdist(cache: Path) -> Path:
    target = cache / SDIST
    if not target.exists():
        client = IndexClient(pip_settings())
        try:
            url = client.find(PROJECT, SDIST)
        except LookupError as misses:
            sys.exit(
                f"{SDIST} is on none of pip's package indexes ({misses}). Configure pip with an index that serves "
                f"{PROJECT} (any PyPI mirror does), or put the file at {target} yourself (sha256 {SDIST_SHA256})."
            )
        tmp = target.with_suffix(".part")
        with client.open(url) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        tmp.rename(target)
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
