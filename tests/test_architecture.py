"""The dependency rules of the layout: which package may import which, checked on every import statement
(function-level ones included), and at run time on what an entry point really loads."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "detectron2")

# package -> top-level modules (or bt_transfer subpackages) it must never import, directly or lazily.
FORBIDDEN = {
    "bt_transfer/core": ("detectron2", "pretrain", "bt_transfer.convert", "bt_transfer.datasets",
                         "bt_transfer.detection", "bt_transfer.report"),
    "bt_transfer/convert": ("detectron2", "pretrain", "bt_transfer.detection", "bt_transfer.report",
                            "bt_transfer.datasets"),
    "bt_transfer/datasets": ("torch", "torchvision", "pretrain", "bt_transfer.convert", "bt_transfer.detection",
                             "bt_transfer.report"),
    "bt_transfer/report": (*HEAVY, "pretrain", "bt_transfer.convert", "bt_transfer.datasets", "bt_transfer.detection"),
    "pretrain": ("detectron2", "bt_transfer.detection", "bt_transfer.report"),
}


def imported_modules(path):
    """Every module named by an import statement of ``path``, wherever the statement stands."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _violates(name, forbidden):
    return any(name == rule or name.startswith(rule + ".") for rule in forbidden)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_across_a_forbidden_edge(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    violations = [f"{path.relative_to(ROOT)}: {name}" for path in files for name in sorted(imported_modules(path))
                  if _violates(name, FORBIDDEN[package])]
    assert not violations, violations


def test_the_rule_checker_sees_lazy_imports(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from detectron2.config import get_cfg\n    import torch.nn\n")
    assert {"detectron2.config", "detectron2.config.get_cfg", "torch.nn"} <= imported_modules(module)
    assert _violates("detectron2.config", FORBIDDEN["pretrain"]) and not _violates("torchvision", ("torch",))


@pytest.mark.parametrize("entry, heavy", [
    ("bt_transfer.report.__main__", HEAVY),
    ("bt_transfer.convert.__main__", ("detectron2",)),
    ("bt_transfer.datasets.synthetic", HEAVY),
    ("pretrain.train", ("detectron2",)),
    ("pretrain.evaluate", ("detectron2",)),
    ("pretrain.slurm", ("detectron2",)),
])
def test_entry_points_load_only_what_their_layer_allows(entry, heavy):
    code = (f"import sys, {entry}; "
            f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}); assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
