"""matplotlib without a display, and the two figures the quality benchmarks draw: a mean with its interval per
arm, and paired differences per seed with their mean's interval."""

from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path, dpi: int = 110) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def interval_marker(ax, x: float, interval) -> None:
    """A mean and its 95 % interval as a black bar; a lone mean (NaN bounds) as a tick."""
    mean, lo, hi = interval
    if lo == lo:  # not NaN
        ax.errorbar([x], [mean], yerr=[[mean - lo], [hi - mean]], fmt="_", color="black", capsize=6)
    else:
        ax.scatter([x], [mean], marker="_", color="black", s=200)


def means_with_intervals(ax, names: list[str], intervals: list, rotation: int = 35) -> None:
    """One point per name at its mean, with the interval's error bar."""
    means = [i[0] for i in intervals]
    errors = [[m - i[1] for m, i in zip(means, intervals, strict=True)],
              [i[2] - m for m, i in zip(means, intervals, strict=True)]]  # fmt: skip
    ax.errorbar(range(len(names)), means, yerr=errors, fmt="o", capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=rotation, ha="right")


def paired_differences(ax, x: float, differences: list[float], interval, size: int = 14) -> None:
    """The per-seed differences as dots and their mean's interval."""
    ax.scatter([x] * len(differences), differences, s=size, alpha=0.7)
    interval_marker(ax, x, interval)
