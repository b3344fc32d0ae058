"""Shared fixtures. Kept light: no torch or Detectron2 at import, so collecting any test stays fast."""
import pytest


@pytest.fixture(scope="session")
def generated_data(tmp_path_factory):
    """Path of one generated dataset tree (ImageNet folder, VOC2007/2012, COCO), made once per session."""
    from bt_transfer.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("generated") / "datasets")


@pytest.fixture(scope="session", autouse=True)
def dataset_check_cache(tmp_path_factory):
    """The dataset checks record what passed in $BT_TRANSFER_CACHE: a folder of the session, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BT_TRANSFER_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
