"""Shared fixtures. Kept light: no torch or Detectron2 at import, so collecting any test stays fast."""
import pytest


@pytest.fixture(scope="session")
def generated_data(tmp_path_factory):
    """Path of one generated dataset tree (ImageNet folder, VOC2007/2012, COCO), made once per session."""
    from bt_transfer.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("generated") / "datasets")
