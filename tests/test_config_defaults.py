"""Defaults are written once: every default of the typed config (RunConfig and the dataclasses it holds) equals the
value the shipped conf/ gives when nothing is overridden, for every key both define."""

from __future__ import annotations

import dataclasses
from typing import Any

from qfi_cli.config import RunConfig
from tests.helpers import compose


def _defaults_against(cls: type, composed: dict[str, Any], path: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, dataclass default, composed value)`` for every field of ``cls`` (recursively) that both define."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name not in composed:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        key, value = f"{path}{f.name}", composed[f.name]
        if dataclasses.is_dataclass(default):
            out += _defaults_against(type(default), value, key + ".")
        elif isinstance(default, dict):  # a free-form section (model, logger): the keys the default names
            out += [(f"{key}.{k}", v, value[k]) for k, v in default.items() if k in value]
        else:
            out.append((key, default, value))
    return out


def test_dataclass_defaults_equal_the_shipped_yaml():
    pairs = _defaults_against(RunConfig, compose([]))
    assert len(pairs) >= 60, "the walk reaches every section"
    assert {"fault.ber", "train.bet.ber", "quant.wbits", "sam.rho", "eval.trials", "model.name"} <= {k for k, *_ in pairs}
    differ = [f"{key}: dataclass {default!r}, yaml {value!r}" for key, default, value in pairs
              if default != value or type(default) is not type(value)]
    assert not differ, differ


def test_a_model_may_pick_its_training_recipe_and_the_user_still_overrides_it():
    # conf/model/vit_tiny.yaml selects conf/train/vit.yaml (40 epochs); the others keep train/default (15)
    assert compose(["model=vit_tiny"])["train"]["epochs"] == 40
    assert compose(["model=vit_tiny"])["train"]["lr"] == compose([])["train"]["lr"] == 0.05
    assert compose(["model=digits_cnn"])["train"]["epochs"] == 15
    assert compose(["model=vit_tiny", "train=default"])["train"]["epochs"] == 15
    assert compose(["model=vit_tiny", "train.epochs=3"])["train"]["epochs"] == 3
    assert compose(["model=vit_tiny", "recipe=sam"])["train"]["epochs"] == 40
