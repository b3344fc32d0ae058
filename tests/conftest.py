"""Shared fixtures. Kept light: no torch or Detectron2 at import, so collecting any test stays fast."""
import pytest


@pytest.fixture(scope="session")
def generated_data(tmp_path_factory):
    """Path of one generated dataset tree (ImageNet folder, VOC2007/2012, COCO), made once per session."""
    from bt_transfer.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("generated") / "datasets")


@pytest.fixture(scope="session")
def resnet50():
    """torchvision ResNet-50 in eval mode, random weights, BatchNorm statistics and affine far from identity (so a
    conversion that mixes up BN tensors changes the outputs)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n) + 0.5
            module.bias.data = torch.randn(n) * 0.5
            module.running_mean = torch.randn(n) * 0.5
            module.running_var = torch.rand(n) * 1.5 + 0.5
    return model.eval()


@pytest.fixture(scope="session", autouse=True)
def dataset_check_cache(tmp_path_factory):
    """The dataset checks record what passed in $BT_TRANSFER_CACHE: a folder of the session, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BT_TRANSFER_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
