"""The segmentation study's tables and verdict, regenerated from its committed files.

Reads, per set folder under ``benchmarks/seg/`` (``icbm152-tissue``, ``stardist-nuclei``; ``benchmarks/seg/run.sh``
writes them): ``bench/runs.jsonl`` and ``unet/runs.jsonl`` (every candidate run, the validation-selected one marked
``selected``; the U-Net runs apart at 128 px) and ``floors/floors.jsonl`` (``medpeft floors``:
:func:`medpeft.seg_floors.run_seg_floors` on the same splits). Writes
``benchmarks/seg/results.md``, with the paper's Table A.6 (Kvasir-SEG, ViT-B/16) printed beside as reference.

Paired comparisons are over the cells (shots × sampling) the two rows share: EPT's test mIoU minus the other's,
cells won and lost, the two-sided Wilcoxon signed-rank test (zero differences dropped) and the exact sign test,
with Holm's correction over EPT's comparisons within a set (:mod:`medpeft.analysis.paired`).

Run from the repository root: ``python studies/seg/report.py``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click
import numpy as np

from medpeft.analysis import holm, paired_comparison
from medpeft.bench import read_index
from medpeft.files import read_json_lines
from medpeft.stats import format_mean_std, mean_std

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "benchmarks" / "seg"
SETS = {
    "icbm152-tissue": "MNI ICBM152 brain tissue (background/CSF, grey, white matter; 24 fixed test slices)",
    "stardist-nuclei": "Fluorescence nuclei (stardist's img2d; 16 fixed 64 × 64 test tiles)",
}
METHODS = ["full", "linear", "bitfit", "adapter", "lora", "vpt", "ept", "unet"]
FLOORS = {"otsu": "Otsu thresholds", "logreg": "per-pixel logistic regression"}
SHOTS = (1, 5, 10)
TABLE_A6 = [
    "### Reference: the paper's Table A.6 (Kvasir-SEG polyps, ViT-B/16 ImageNet-21k, SETR-PUP, 880 training images)",
    "",
    "| | Full | Head only | Bias | Adapter | VPT | EPT | FCN-UNet (full, trained) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
    "| mIoU | 55.97 | 53.62 | 53.21 | 56.77 | 52.99 | 53.57 | 70.77 |",
    "| mDice | 69.00 | 67.18 | 65.88 | 69.41 | 64.73 | 66.21 | 81.58 |",
    "| tunable params (M) | 87.76 | 1.33 | 1.43 | 2.52 | 2.25 | 1.94 | 28.99 |",
    "",
    "Validation-set results of the paper, on another dataset, backbone and data size: read them for the ordering of "
    "the methods, not as numbers to match. Head only = `linear`, Bias = `bitfit`, FCN-UNet = `unet` here.",
]


def load(folder: Path) -> dict[str, dict[tuple, dict]]:
    """``{row: {(shots, exp): metrics}}`` of the validation-selected runs (with ``ECE_cal``, ``lr``, ``params``)
    and of the floors (``floor: <name>``)."""
    rows: dict[str, dict[tuple, dict]] = {}
    for r in records(folder):
        if r.selected and r.test:
            cal = (r.result.calibration.test if r.result.calibration else None) or {}
            rows.setdefault(r.spec.label, {})[(r.spec.shots, r.spec.exp)] = {
                **r.test,
                "ECE_cal": cal.get("ECE", np.nan),
                "lr": r.spec.train.lr,
                "params": r.result.trainable_params,
                "seconds": sum(r.result.time_s.values()),
            }
    for line in read_json_lines(folder / "floors" / "floors.jsonl") if (folder / "floors").is_dir() else []:
        rows.setdefault("floor: " + FLOORS[line["floor"]], {})[(line["shots"], line["exp"])] = {
            **line["test"],
            "ECE_cal": np.nan,
        }
    order = [m for m in METHODS if m in rows] + sorted(r for r in rows if r not in METHODS)
    return {r: rows[r] for r in order}


def records(folder: Path) -> list:
    """The run records of the study's bench folders (``bench``, ``unet``) that exist."""
    return [r for bench in ("bench", "unet") if (folder / bench).is_dir() for r in read_index(folder / bench)]


def _finite(values) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)


def _pm(values, scale: float = 100) -> str:
    return format_mean_std(*mean_std(_finite(values)), ".1f", scale)


def _mean(values, scale: float = 100) -> str:
    values = _finite(values)
    return f"{scale * values.mean():.1f}" if len(values) else "–"


def _p(p: float, equals: str = "") -> str:
    return "< 0.001" if p < 0.001 else f"{equals}{p:.3f}"


def table(rows: dict[str, dict[tuple, dict]]) -> list[str]:
    lines = [
        "| | 1-shot mIoU | 5-shot mIoU | 10-shot mIoU | mDice | HD95 (px) | ECE | ECE after T | trainable params "
        "| cells |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row, cells in rows.items():
        miou = [_pm([c["mIoU"] for (k, _), c in cells.items() if k == shots]) for shots in SHOTS]
        every = list(cells.values())
        params = sorted({c["params"] for c in every if "params" in c})
        lines.append(
            f"| {row} | "
            + " | ".join(miou)
            + f" | {_mean([c['mDice'] for c in every])} | {_mean([c['HD95'] for c in every], 1)} | "
            f"{_mean([c.get('ECE') for c in every])} | {_mean([c['ECE_cal'] for c in every])} | "
            f"{'/'.join(f'{p:,}' for p in params) or '–'} | {len(cells)} |"
        )
    return lines


def paired(a: dict[tuple, dict], b: dict[tuple, dict], key: str = "mIoU") -> dict:
    """a − b over the shared cells (×100), as :func:`medpeft.analysis.paired_comparison` sums it up."""
    cells = sorted(set(a) & set(b))
    return asdict(paired_comparison([100 * (a[c][key] - b[c][key]) for c in cells]))


def comparisons(rows: dict[str, dict[tuple, dict]]) -> tuple[list[str], list[dict]]:
    if "ept" not in rows:
        return [], []
    tests = [{"other": r, **paired(rows["ept"], rows[r])} for r in rows if r != "ept"]
    for t, p in zip(tests, holm([t["p_wilcoxon"] for t in tests])):
        t["p_holm"] = p
    lines = [
        "| EPT − … (mIoU, points) | cells | EPT wins | EPT loses | median | Wilcoxon p | Holm p | sign p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {t['other']} | {t['n']} | {t['wins']} | {t['losses']} | {t['median']:+.1f} | {_p(t['p_wilcoxon'])} | "
        f"{_p(t['p_holm'])} | {_p(t['p_sign'])} |"
        for t in tests
    ]
    return lines, tests


def ranking(rows: dict[str, dict[tuple, dict]]) -> tuple[list[str], dict[str, float], list[tuple]]:
    """The methods best first by mean test mIoU over the cells every method has; the means of every row (floors
    included) over those cells; the cells."""
    methods = [r for r in rows if not r.startswith("floor")]
    if not methods:
        return [], {}, []
    shared = sorted(set.intersection(*(set(rows[r]) for r in methods)))
    means = {
        r: float(np.mean([rows[r][c]["mIoU"] for c in shared])) for r in rows if shared and set(shared) <= set(rows[r])
    }
    return sorted((m for m in methods if m in means), key=lambda r: -means[r]), means, shared


def verdict(rows: dict[str, dict[tuple, dict]], tests: list[dict]) -> list[str]:
    """Plain sentences from the numbers: the ranking, what holds after Holm, the methods against the floors."""
    ranked, means, shared = ranking(rows)
    if not ranked:
        return []
    lines = [
        f"- **Best on average over the {len(shared)} cells every method has** (test mIoU): "
        + ", ".join(f"{r} {100 * means[r]:.1f}" for r in ranked)
        + "."
    ]
    held = [
        f"EPT {'beats' if t['median'] > 0 else 'loses to'} {t['other']} (median {t['median']:+.1f} points, "
        f"{t['wins']}–{t['losses']} cells, Holm p {_p(t['p_holm'], '= ')})"
        for t in tests
        if t["p_holm"] < 0.05
    ]
    if tests:
        lines.append(
            "- **After Holm's correction** (EPT against each other row, 5 %): "
            + ("; ".join(held) if held else "no difference is significant")
            + "."
        )
    floors = {r: means[r] for r in means if r.startswith("floor")}
    if floors:
        best = max(floors, key=floors.get)
        above = [m for m in ranked if means[m] > floors[best]]
        lines.append(
            f"- **Against the floors:** the best floor, {best.removeprefix('floor: ')}, averages "
            f"{100 * floors[best]:.1f}; {len(above)} of {len(ranked)} methods average above it"
            + (f" ({', '.join(above)})" if above else "")
            + "."
        )
    return lines


def cost(folder: Path) -> str:
    """Runs and core-hours of the study (one thread per run), and the mean wall time of one run per method."""
    seconds: dict[str, list[float]] = {}
    for r in records(folder):
        seconds.setdefault(r.spec.label, []).append(sum(r.result.time_s.values()))
    if not seconds:
        return ""
    hours = sum(map(sum, seconds.values())) / 3600
    return (
        f"Cost: {sum(map(len, seconds.values()))} runs, {hours:.1f} core-hours; mean per run: "
        + ", ".join(f"{m} {np.mean(s):.0f} s" for m, s in seconds.items())
        + "."
    )


def progress(rows: dict[str, dict[tuple, dict]]) -> str:
    """Which rows have no run yet (the study runs method by method; the floors take minutes)."""
    missing = [m for m in METHODS if m not in rows]
    if not missing:
        return ""
    return (
        f"Not run yet: {', '.join(missing)} (`benchmarks/seg/run.sh` runs them, resumably; about 25 core-hours for "
        "both sets on this project's 2-core machine, docs/segmentation-data.md). Until they are in, this table "
        "holds no method's result and says nothing about EPT."
    )


def report() -> str:
    blocks = [
        ["## The segmentation study: results"],
        [
            "Generated by `python studies/seg/report.py` from the committed `runs.jsonl` and `floors.jsonl` files. "
            "Test metrics ×100 (HD95 in pixels), mIoU as mean ± sample std over samplings, the other columns means "
            "over all cells; mIoU/mDice as MMSegmentation computes them (`medpeft.seg_metrics`); *cells*: shots × "
            "samplings present; trainable parameters include the head."
        ],
    ]
    for name, title in SETS.items():
        folder = HERE / name
        rows = load(folder)
        if not rows:
            blocks.append([f"### {title}", "", "Not run yet (`benchmarks/seg/run.sh`)."])
            continue
        lines, tests = comparisons(rows)
        blocks += [[f"### {title}"], [cost(folder)], table(rows), [progress(rows)], lines, verdict(rows, tests)]
    blocks.append(TABLE_A6)
    return "\n\n".join("\n".join(block) for block in blocks if any(block))


@click.command()
def main():
    text = report()
    HERE.mkdir(parents=True, exist_ok=True)
    (HERE / "results.md").write_text(text + "\n")
    click.echo(text)


if __name__ == "__main__":
    main()
