"""Plot a run's logged curves (loss, output std, lr, wd, EMA) to a PNG."""

from __future__ import annotations

import csv
from pathlib import Path

CURVES = ["train/loss", "train/std_teacher", "train/std_student", "train/lr", "train/wd", "train/ema"]


def save_figure(fig, title: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def read_metrics(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """All CSV logs of a run (one folder per launch, resumes included), later launches winning."""
    series: dict[str, dict[int, float]] = {}
    files = sorted(Path(run_dir).glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"no csv/version_*/metrics.csv under {run_dir}")
    for path in files:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row["step"]))
                for key, value in row.items():
                    if key != "step" and value not in ("", None):
                        series.setdefault(key, {})[step] = float(value)
    return series


def plot_run(
    run_dir: str | Path, out: str | Path | None = None, *, curves: list[str] = CURVES, title: str = "ATST pretraining"
) -> Path:
    """The run's logged ``curves`` that exist, one panel each, against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(run_dir)
    names = [c for c in curves if c in series]
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.2 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        steps = sorted(series[name])
        ax.plot(steps, [series[name][s] for s in steps], lw=1.2)
        ax.set_ylabel(name.split("/")[-1])
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    return save_figure(fig, f"{title}: {Path(run_dir).name}", Path(out) if out else Path(run_dir) / "curves.png")
