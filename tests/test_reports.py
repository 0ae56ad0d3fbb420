"""Issue 11: plots with axis labels and units (%), the stage in the title, legends outside the
data, class names on small per-class plots; the compare plot titled and linked; JSON results
rounded; ``facelt report DIR`` regenerates every report.md; a demo rerun keeps the total time."""
from __future__ import annotations

import json

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from facelt.cli import main  # noqa: E402
from facelt.compare.report import CHART_NAME, comparison_figure, markdown_table  # noqa: E402
from facelt.openset.reporting import per_class_figure, round_floats, threshold_sweep_figure  # noqa: E402
from eval_megaface.report import buckets_figure, cmc_figure, write_report  # noqa: E402


def _legend_is_outside(fig, ax) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    leg = ax.get_legend().get_window_extent(renderer)
    box = ax.get_window_extent(renderer)
    return leg.x0 >= box.x1 or leg.x1 <= box.x0 or leg.y0 >= box.y1 or leg.y1 <= box.y0


def test_round_floats():
    obj = {"a": 0.123456789, "b": [1, 2.0000004, float("nan")], "c": "x", "d": {"e": 1e-9}}
    assert round_floats(obj) == {"a": 0.123457, "b": [1, 2.0, None], "c": "x", "d": {"e": 0.0}}
    assert isinstance(round_floats(obj)["b"][0], int)


def _per_class(n):
    return [{"class": k, "name": f"cls{k}", "train_count": 200 - 5 * k, "accuracy": k / n}
            for k in range(n)]


def test_small_per_class_plot_names_classes_in_percent_with_stage():
    fig = per_class_figure(_per_class(6), "stage 2: ")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "cls0 (200)" and labels[-1] == "cls5 (175)"  # most to fewest images
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([100 * k / 6 for k in range(6)])
    assert "%" in ax.get_ylabel() and ax.get_title().startswith("stage 2:")
    plt.close(fig)
    fig = per_class_figure(_per_class(31), "stage 1: ")  # too many to name: a scatter
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "%" in ax.get_ylabel() and "stage 1" in ax.get_title()
    assert not any(t.get_text().startswith("cls") for t in ax.get_xticklabels())
    plt.close(fig)


def test_sweep_cmc_bucket_and_compare_plots_keep_legends_off_the_data():
    sweep = [{"threshold": t / 10, "f_measure": 0.5, "closed_accuracy_known": 0.9,
              "open_rejection": t / 10} for t in range(11)]
    fig = threshold_sweep_figure(sweep, 0.1, "stage 2: ")
    ax = fig.axes[0]
    assert _legend_is_outside(fig, ax) and ax.get_ylabel() == "%" and "stage 2" in ax.get_title()
    assert max(l.get_ydata().max() for l in ax.get_lines()[:3]) == pytest.approx(100.0)
    plt.close(fig)
    ps = {b: {"rank1": 0.5, "probes": 3} for b in ("many", "few", "one", "zero")}
    mf = {"gallery": 10, "rank1": 0.8, "trials": 4, "cmc": [0.8] * 10, "pseudo_shots": ps,
          "meta": {"stage": 2, "pseudo_shot_threshold": 0.7}}
    mf["results"] = [dict(mf), dict(mf, gallery=100)]
    for make in (cmc_figure, buckets_figure):
        fig = make(mf)
        ax = fig.axes[0]
        assert _legend_is_outside(fig, ax) and "%" in ax.get_ylabel() and ax.get_xlabel()
        assert "(stage 2)" in ax.get_title()
        plt.close(fig)
    methods = {m: {"closed_set": {"many": 0.5, "medium": 0.4, "few": 0.3, "overall": 0.45},
                   "open_set": {"many": 0.4, "medium": 0.3, "few": 0.2, "overall": 0.35,
                                "f_measure": 0.6, "auroc": 0.7}} for m in ("plain", "oltr")}
    report = {"recipe": "configs/places_lt.yaml", "methods": methods, "threshold": 0.1,
              "protocol": "p", "shot_rule": "s"}
    fig = comparison_figure(report)
    ax = fig.axes[0]
    assert _legend_is_outside(fig, ax) and "%" in ax.get_ylabel() and "places_lt" in ax.get_title()
    assert max(p.get_height() for p in ax.patches) == pytest.approx(70.0)
    plt.close(fig)
    assert f"]({CHART_NAME})" in markdown_table(report)


def test_report_command_regenerates_every_report_md(tmp_path, capsys):
    from facelt.jobs.demo_report import SUMMARY_NAME, write_demo_summary
    cls_dir, mf_dir, cmp_dir = tmp_path / "cls", tmp_path / "mf", tmp_path / "cmp"
    closed = {"overall": 0.5, "many": 0.6, "medium": 0.5, "few": 0.25}
    opened = dict(closed, f_measure=0.4)
    cls_report = {"closed_set": closed, "open_set": opened, "threshold": 0.1, "stage": 2,
                  "per_class": _per_class(4), "threshold_sweep": []}
    cls_dir.mkdir()
    (cls_dir / "report.json").write_text(json.dumps(cls_report))
    ps = {b: {"rank1": 0.5, "probes": 3} for b in ("many", "few", "one", "zero")}
    mf = {"gallery": 10, "rank1": 0.8123456789, "trials": 4, "cmc": [0.8] * 10, "pseudo_shots": ps,
          "meta": {"stage": 2, "pseudo_shot_threshold": 0.7}}
    write_report(mf, mf_dir)
    assert json.loads((mf_dir / "report.json").read_text())["rank1"] == 0.812346  # rounded
    cmp_dir.mkdir()
    (cmp_dir / "report.json").write_text(json.dumps({
        "recipe": "r.yaml", "threshold": 0.1, "protocol": "p", "shot_rule": "s",
        "methods": {"plain": {"closed_set": closed, "open_set": opened}}}))
    manifest = {"totals": {"images": 10, "identities": 3}, "C": 2.0,
                "shots": {"many": 0, "medium": 1, "few": 2}}
    cls = {s: {"closed_set": closed, "open_set": opened} for s in (1, 2)}
    demo = tmp_path / "demo"
    demo.mkdir()
    write_demo_summary(demo, manifest, cls, mf, 123.4)
    assert "Total time: 123 s." in (demo / "report.md").read_text()
    write_demo_summary(demo, manifest, cls, mf, 2.0)  # a rerun that skipped every step
    text = (demo / "report.md").read_text()
    assert "Total time: 123 s" in text and "the last rerun took 2 s" in text
    assert json.loads((demo / SUMMARY_NAME).read_text())["total_seconds"] == 123.4

    for md in (cls_dir / "report.md", mf_dir / "report.md", demo / "report.md"):
        md.unlink(missing_ok=True)
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    for md in (cls_dir / "report.md", mf_dir / "report.md", cmp_dir / "report.md",
               demo / "report.md"):
        assert md.is_file() and str(md) in printed
    assert (cmp_dir / CHART_NAME).is_file() and (cls_dir / "per_class.png").is_file()
    assert "Total time: 123 s" in (demo / "report.md").read_text()
