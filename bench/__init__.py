"""Speed and memory benchmarks of the suite against the official Barlow Twins formulation (``python -m bench``).

- ``bench.loss``: forward+backward of ``barlow_twins_loss`` (both forms and "auto") vs the D x D reference;
- ``bench.augment``: both views from JPEG files, per core, vs the official torchvision PIL pipeline;
- ``bench.step``: one full pretraining step (ResNet-50 + projector + loss + LARS) vs the reference model code.

References live in ``bench.reference``; timing and memory accounting in ``bench.harness``. Nothing here is a
test: the test suite checks that the references and the suite agree in value, never how fast they are.
"""
