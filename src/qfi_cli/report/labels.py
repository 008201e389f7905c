"""One label table for every figure: a config key and its value as a reader of a paper reads them ("SAM (ρ=0.05)",
"RandBET", "4-bit (first/last 8)"), never a raw ``key=value``; one colour per recipe (Okabe-Ito, colour-blind safe)
kept across figures, one line style per weight bit width.

>>> value_label("recipe", "sam", rho=0.05), value_label("quant.wbits", 4, shown="4 (first/last 8)")
('SAM (ρ=0.05)', '4-bit (first/last 8)')
>>> value_label("sam.rho", 0.0), value_label("train.lr", 0.05), value_label("seed", 1)
('no SAM (ρ=0)', 'lr 0.05', 'seed 1')
"""

from __future__ import annotations

from typing import Any

RECIPES = {"normal": "plain", "rquant": "RQuant", "clipping": "clipping", "randbet": "RandBET", "advbet": "AdvBET",
           "sam": "SAM", "sam_clipping": "SAM + clipping", "sam_randbet": "SAM + RandBET",
           "sam_advbet": "SAM + AdvBET"}
KEYS = {"quant.wbits": "weight bits", "quant.abits": "activation bits", "sam.rho": "SAM ρ", "recipe": "recipe",
        "seed": "seed", "model": "model", "data": "data", "quant": "quantizer", "fault": "fault model",
        "quant.quantizer": "quantizer", "quant.group_size": "group size", "train.lr": "lr",
        "train.epochs": "epochs", "fault.ber": "p", "ber": "p"}
# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000", "#999999")
RECIPE_COLORS = {"normal": "#000000", "sam": "#0072B2", "rquant": "#999999", "clipping": "#E69F00",
                 "randbet": "#009E73", "advbet": "#CC79A7", "sam_clipping": "#56B4E9", "sam_randbet": "#D55E00",
                 "sam_advbet": "#F0E442"}
LINESTYLES = {8: "-", 4: "-.", 2: ":", 3: (0, (5, 1)), 6: (0, (3, 1, 1, 1, 1, 1)), 16: (0, (1, 1)),
              32: (0, (8, 2))}  # "--" is the clean line's


def key_label(key: str) -> str:
    """A config key's name in a figure: ``quant.wbits`` -> "weight bits"; others by their last part.

    >>> key_label("quant.wbits"), key_label("train.bet.start_loss")
    ('weight bits', 'start loss')
    """
    return KEYS.get(key, key.rsplit(".", 1)[-1].replace("_", " "))


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def value_label(key: str, value: Any, rho: float | None = None, shown: str | None = None) -> str:
    """``value`` of factor ``key`` as a figure says it. ``rho``: the SAM radius the configuration trained with
    (named beside a SAM recipe); ``shown``: the report's own text of the value (``quant.wbits``: the stored widths,
    as ``collect.shown_value`` gives them)."""
    if key == "recipe":
        name = RECIPES.get(str(value), str(value))
        return f"{name} (ρ={_number(rho)})" if str(value).startswith("sam") and rho else name
    if key in ("quant.wbits", "quant.abits"):
        text = shown if shown is not None else _number(value)
        head, _, rest = text.partition(" ")
        return f"{head}-bit" + (f" {rest}" if rest else "") if key == "quant.wbits" else f"{head}-bit activations"
    if key == "sam.rho":
        return "no SAM (ρ=0)" if not value else f"SAM (ρ={_number(value)})"
    return f"{key_label(key)} {shown if shown is not None else _number(value)}"


def widths_text(widths: str) -> str:
    """The stored widths' label as a figure says it: ``w4 (first/last 8)`` -> "4-bit (first/last 8)".

    >>> widths_text("w4 (first/last 8)"), widths_text("w8"), widths_text("int8 (torch.ao)")
    ('4-bit (first/last 8)', '8-bit', 'int8 (torch.ao)')
    """
    if not widths.startswith("w"):
        return widths
    head, _, rest = widths[1:].partition(" ")
    return f"{head}-bit" + (f" {rest}" if rest else "")


def row_label(row: dict[str, Any]) -> str:
    """A result row's configuration when nothing is swept: model, stored widths, recipe or SAM.

    >>> row_label({"_model": "digits_cnn", "_wbits": 4, "_widths": "w4 (first/last 8)", "_recipe": "sam",
    ...            "_rho": 0.05})
    'digits_cnn, 4-bit (first/last 8), SAM (ρ=0.05)'
    >>> row_label({"_model": "vit_tiny", "_wbits": 8, "_rho": 0.0})
    'vit_tiny, 8-bit, no SAM (ρ=0)'
    """
    parts = [str(row["_model"])] if row.get("_model") is not None else []
    widths = row.get("_widths") or (f"w{row['_wbits']}" if row.get("_wbits") is not None else None)
    parts += [widths_text(widths)] if widths else []
    recipe, rho = row.get("_recipe"), row.get("_rho")
    if recipe is not None:
        parts.append(value_label("recipe", recipe, rho=rho))
    elif rho is not None:
        parts.append(value_label("sam.rho", rho))
    return ", ".join(parts) or "default"


def color_of(recipe: Any, index: int) -> str:
    """A recipe's own colour (the same in every figure); other lines take the palette in order."""
    return RECIPE_COLORS.get(str(recipe), PALETTE[index % len(PALETTE)]) if recipe is not None else \
        PALETTE[index % len(PALETTE)]


def linestyle_of(wbits: Any) -> Any:
    """The line style of a weight bit width (solid for 8 bits, dash-dot for 4, dotted for 2, ...)."""
    return LINESTYLES.get(wbits, "-") if isinstance(wbits, int) else "-"


__all__ = ["KEYS", "PALETTE", "RECIPES", "RECIPE_COLORS", "color_of", "key_label", "linestyle_of", "row_label",
           "value_label", "widths_text"]
