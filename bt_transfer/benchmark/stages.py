"""The stages of a benchmark of one checkpoint, as data: each is the existing command of its task, its run
folder, the GPUs it needs and what it costs. Plain values in, plain values out: no torch, no Detectron2.

GPU-hour estimates are for V100-class GPUs and come from published timings, scaled by the work each stage
does: Detectron2's MODEL_ZOO.md (R50-C4 1x on 8 V100 at 16 images per iteration: Faster R-CNN 0.551 s/iter,
Mask R-CNN 0.584 s/iter; inference 0.102 and 0.110 s/image) and NVIDIA DeepLearningExamples' ResNet-50 v1.5
for PyTorch (90 ImageNet epochs in about 14 h on 8 V100 in FP32, i.e. about 1.2 GPU-hours per epoch of
training; a forward pass alone costs about a third of a training step). Data loading, often the bound of
linear evaluation, is not in them: read them as lower bounds.
"""
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bt_transfer.core.records import RESULT_FILE, ResultError, load_result

TASKS = ("linear", "semisup-1", "semisup-10", "voc", "coco")
REPORT = "report"
# ImageNet-1k and the SimCLR subsets (bt_transfer.core / pretrain.subsets state the same counts).
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
SUBSET_IMAGES = {1: 12_811, 10: 128_116}
GPU_HOURS_PER_TRAINING_EPOCH = 14 * 8 / 90  # NVIDIA DeepLearningExamples, ResNet-50 v1.5, 8 V100, FP32
FORWARD_SHARE = 1 / 3
DETECTION = {  # Detectron2 MODEL_ZOO.md, R50-C4 1x, 8 V100: s/iteration of training, s/image of inference
    "voc": dict(iterations=24_000, seconds_per_iteration=0.551, test_images=4_952, seconds_per_image=0.102),
    "coco": dict(iterations=90_000, seconds_per_iteration=0.584, test_images=5_000, seconds_per_image=0.110),
}
SOURCES = {
    "imagenet": "NVIDIA DeepLearningExamples ResNet-50 v1.5 PyTorch (~1.2 V100-h per training epoch, FP32)",
    "detection": "Detectron2 MODEL_ZOO.md R50-C4 1x (8 V100: {seconds_per_iteration} s/iter, "
                 "{seconds_per_image} s/image inference)",
}


def slug(label):
    """A label as a file and job name: runs of anything but letters, digits, '.', '_' and '-' become '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "checkpoint"


@dataclass(frozen=True)
class Stage:
    """One job of a benchmark: ``command`` run in the repository's environment writes into ``folder``."""

    name: str              # e.g. "linear", "voc" (locally) or "voc-seed3" (one SLURM job per seed)
    task: str              # one of TASKS, or REPORT
    command: tuple         # the argv, interpreter or launcher included
    folder: Path           # the run folder the command writes
    results: tuple         # the result.json files whose presence means the stage is finished
    gpus: int              # GPUs the command uses on one machine (0: CPU)
    gpu_hours: float = 0.0
    estimate: str = ""     # where gpu_hours comes from
    seeds: tuple = field(default=())

    def shell(self):
        return shlex.join(self.command)


def _python(module, args, gpus, distributed):
    """The interpreter line of ``python -m module args``: torchrun for the ImageNet evaluation on several GPUs."""
    if distributed and gpus > 1:
        return (sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", module, *args)
    return (sys.executable, "-m", module, *args)


def imagenet_estimate(task):
    """V100-hours of an ImageNet evaluation at the protocol's length (100 linear epochs, 20 semi-supervised)."""
    if task == "linear":  # frozen backbone: forward passes only, over the whole train split
        train = 100 * IMAGENET_TRAIN * FORWARD_SHARE
        epochs = 100
    else:
        train = 20 * SUBSET_IMAGES[int(task.split("-")[1])]
        epochs = 20
    validation = epochs * IMAGENET_VAL * FORWARD_SHARE
    return (train + validation) / IMAGENET_TRAIN * GPU_HOURS_PER_TRAINING_EPOCH


def detection_estimate(task):
    """V100-hours of one detection seed at the protocol's schedule: training on 8 GPUs, then one evaluation."""
    facts = DETECTION[task]
    training = facts["iterations"] * facts["seconds_per_iteration"] * 8 / 3600
    return training + facts["test_images"] * facts["seconds_per_image"] / 3600


def build_stages(options, per_seed=False):
    """Every stage of a benchmark, in order, the report last. ``options`` holds plain values: weights, label,
    fmt, out, tasks, seeds, coco_seeds, gpus, data, datasets_root, subset_files {1: path, 10: path},
    stage_args {task: [args]}. ``per_seed`` splits each detection task into one stage per seed, each in its own
    folder (``OUT/voc-seed3``), to run in parallel (SLURM)."""
    out, gpus = Path(options["out"]), options["gpus"]
    common = ["--weights", str(options["weights"]), "--label", options["label"], "--format", options["fmt"]]
    stages = []
    for task in options["tasks"]:
        extra = list(options["stage_args"].get(task, ()))
        folder = out / task
        if task in DETECTION:
            seeds = options["coco_seeds"] if task == "coco" else options["seeds"]
            groups = [(f"{task}-seed{seed}", (seed,)) for seed in seeds] if per_seed else [(task, tuple(seeds))]
            for name, group in groups:
                # A transfer run holds its folder while it trains: seeds trained in parallel each need their own.
                folder = out / name
                args = [task, *common, "--seeds", *map(str, group), "--num-gpus", str(gpus), "--out", str(folder)]
                if options.get("datasets_root"):
                    args += ["--datasets-root", str(options["datasets_root"])]
                stages.append(Stage(
                    name, task, _python("bt_transfer.transfer", [*args, *extra], gpus, distributed=False), folder,
                    tuple(folder / f"seed{seed}" / RESULT_FILE for seed in group), max(gpus, 0),
                    detection_estimate(task) * len(group), SOURCES["detection"].format(**DETECTION[task]), group))
            continue
        args = [*common, "--data", str(options["data"]), "--out", str(folder)]
        if task == "linear":
            args = ["--mode", "linear", *args]
        else:
            percent = int(task.split("-")[1])
            args = ["--mode", "semisup", "--percent", str(percent), *args]
            if options["subset_files"].get(percent):
                args += ["--subset-file", str(options["subset_files"][percent])]
        stages.append(Stage(task, task, _python("pretrain.evaluate", [*args, *extra], gpus, distributed=True),
                            folder, (folder / RESULT_FILE,), max(gpus, 0), imagenet_estimate(task),
                            SOURCES["imagenet"]))
    tables = out / "tables"
    stages.append(Stage(REPORT, REPORT, (sys.executable, "-m", "bt_transfer.report", "--results", str(out),
                                         "--out", str(tables)), tables, (), 0))
    return stages


def finished(stage):
    """Whether every result of ``stage`` is there and readable (the report is never finished: it is rebuilt)."""
    if not stage.results:
        return False
    try:
        return all(path.is_file() and load_result(path) for path in stage.results)
    except ResultError:
        return False


def save_plan(path, stages, jobs=None):
    """``benchmark.json``: each stage's command, folder and results, and its SLURM job when submitted."""
    from bt_transfer.core.fileio import write_json

    write_json(path, {"stages": [
        {"name": s.name, "task": s.task, "command": list(s.command), "folder": str(s.folder),
         "results": [str(r) for r in s.results], "gpus": s.gpus, "gpu_hours": round(s.gpu_hours, 2),
         **({"job": jobs[s.name]} if jobs and s.name in jobs else {})} for s in stages]})


def load_plan(path):
    """The stages (and SLURM jobs) that ``save_plan`` wrote."""
    plan = json.loads(Path(path).read_text())
    stages, jobs = [], {}
    for entry in plan["stages"]:
        stages.append(Stage(entry["name"], entry["task"], tuple(entry["command"]), Path(entry["folder"]),
                            tuple(Path(r) for r in entry["results"]), entry["gpus"], entry["gpu_hours"]))
        if "job" in entry:
            jobs[entry["name"]] = entry["job"]
    return stages, jobs
