"""The front door: one command benchmarks one ResNet-50 checkpoint on every task, here or through SLURM.

``stages`` says what runs (each task's own command, its folder, GPUs and cost), ``local`` runs the stages in
turn, ``cluster`` submits them through submitit and reports their status. Never imports torch or Detectron2
(the checkpoint is read once, up front, by the converter's reader).
"""
