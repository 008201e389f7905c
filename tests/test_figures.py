"""The report's figures read as a paper's: labels from one table (no raw ``key=value`` in any rendered text, read
back from the SVG), SAM beside its plain twin, a colour per recipe and a line style per width, and ``qfi report``'s
figure options (lines, panels, y, select, log y, formats, dpi, size, title) with one-line errors."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qfi_cli.cli import app
from qfi_cli.io import write_json
from qfi_cli.report import FigureOptions, collect, curve_figure, build_study
from qfi_cli.report.labels import RECIPE_COLORS
from tests.test_report import _result, _write_study

RAW = re.compile(r"[A-Za-z_][\w.]*=[^\s,)]")  # a config key=value, as Hydra writes it


def svg_texts(path: Path) -> list[str]:
    """Every text element of an SVG written with real text (``svg.fonttype: none``)."""
    return ["".join(e.itertext()).strip() for e in ET.parse(path).iter() if e.tag.endswith("text")]


def report(*args: str):
    return CliRunner().invoke(app, ["report", *map(str, args)])


def test_no_rendered_label_is_a_raw_key_value(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study")
    result = report(study, "--format", "svg,pdf,png")
    assert result.exit_code == 0, result.output
    for name in ("ber_curve", "rerr_curve"):
        texts = svg_texts(study / f"{name}.svg")
        assert texts, "the SVG keeps its text as text"
        assert "plain" in texts and "SAM (ρ=0.05)" in texts and "4-bit" in texts and "8-bit" in texts
        assert [t for t in texts if RAW.search(t)] == []
        assert (study / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (study / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the check itself catches the old labels
    assert RAW.search("quant.wbits=4") and RAW.search("recipe=sam sam.rho=0.05") and not RAW.search("SAM (ρ=0.05)")


def test_sam_and_its_plain_twin_share_a_panel_when_rho_is_swept(tmp_path: Path) -> None:
    """Swept sam.rho and quant.wbits (no recipe): lines are rho, panels the widths (so rho 0 and 0.05 of one width
    are side by side), whatever order the factors come in."""
    for i, rho in enumerate((0.0, 0.05)):
        for wbits in (4, 8):
            res = _result(rho, 1e-3, [0.9, 0.8, 0.85])
            res["point"] = {"quant.wbits": wbits, "sam.rho": rho, "fault.ber": 1e-3}
            res["wbits"] = wbits
            write_json(tmp_path / f"w{wbits}r{i}" / "results.json", res)
    rows = collect(tmp_path)
    fig = curve_figure(build_study(rows), rows)
    assert [ax.get_title() for ax in fig.axes] == ["4-bit", "8-bit"]
    for ax in fig.axes:
        assert len([line for line in ax.lines if line.get_gid() == "curve"]) == 2  # rho 0 and 0.05 together
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["no SAM (ρ=0)", "SAM (ρ=0.05)"]
    # --lines / --panels swap them
    fig = curve_figure(build_study(rows), rows, options=FigureOptions(lines="quant.wbits", panels="sam.rho"))
    assert [ax.get_title() for ax in fig.axes] == ["no SAM (ρ=0)", "SAM (ρ=0.05)"]


def test_recipe_colours_and_width_styles_are_kept_across_figures(tmp_path: Path) -> None:
    rows = collect(_write_study(tmp_path))
    study = build_study(rows)
    for metric in ("accuracy", "rerr"):
        fig = curve_figure(study, rows, metric)
        for ax, style in zip(fig.axes, ("-.", "-")):  # 4-bit, 8-bit
            curves = [line for line in ax.lines if line.get_gid() == "curve"]
            assert [line.get_color() for line in curves] == [RECIPE_COLORS["normal"], RECIPE_COLORS["sam"]]
            assert {line.get_linestyle() for line in curves} == {style}
    # a subset keeps each recipe's colour
    only_sam = FigureOptions(select={"recipe": ("sam",)})
    kept = only_sam.selected(rows)
    fig = curve_figure(build_study(kept), kept, options=only_sam)
    assert {line.get_color() for ax in fig.axes for line in ax.lines if line.get_gid() == "curve"} == \
        {RECIPE_COLORS["sam"]}


def test_report_figure_options(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study")
    result = report(study, "--y", "rerr", "--logy", "--select", "quant.wbits=8", "--format", "png,svg", "--dpi", "80",
                    "--size", "7x4", "--no-title", "--panels", "recipe")
    assert result.exit_code == 0, result.output
    assert not (study / "ber_curve.png").exists() and (study / "rerr_curve.svg").exists()
    data = (study / "rerr_curve.png").read_bytes()
    assert struct.unpack(">II", data[16:24]) == (560, 320)  # 7 x 4 inches at 80 dpi
    texts = svg_texts(study / "rerr_curve.svg")
    assert "plain" in texts and "SAM (ρ=0.05)" in texts  # panels: the recipes
    assert not any("robust error (RErr) under" in t for t in texts)  # no title
    assert "4-bit" not in texts  # the selection: 8 bits only (one panel per recipe)


@pytest.mark.parametrize("args, needle", [
    (["--lines", "nope"], "--lines nope: not a factor that varies"),
    (["--format", "gif"], "--format takes png, pdf, svg"),
    (["--y", "loss"], "--y takes accuracy, rerr"),
    (["--size", "7by4"], "--size takes WIDTHxHEIGHT"),
    (["--select", "recipe"], "--select takes KEY=V1,V2"),
    (["--select", "recipe=none"], "--select keeps no result"),
    (["--dpi", "5"], "--dpi must lie in [20, 1200]"),
])
def test_bad_figure_options_are_one_line_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    study = _write_study(tmp_path / "study")
    result = report(study, *args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
