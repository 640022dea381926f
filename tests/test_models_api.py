"""The package-level API, as timm users expect it: ``create_model`` and ``list_models`` on vitcodec.models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import vitcodec.models
from vitcodec.models import create_model, list_models


def test_list_models_lists_and_filters_presets() -> None:
    names = list_models()
    assert names == sorted(names) and "jcc-fmnist-28-s8" in names and "jcc-deit-s-224" in names
    assert list_models("jcc-fmnist-*") == [n for n in names if n.startswith("jcc-fmnist-")]
    assert list_models("no-such-*") == []


def test_create_model_applies_overrides_and_ignores_none() -> None:
    net = create_model("jcc-fmnist-28-s8", num_classes=7, depth=None)
    assert net.config.num_classes == 7 and net.config.depth == 4  # depth=None leaves the preset's value
    assert net.vit.head.out_features == 7 and len(net.vit.blocks) == 4


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="jcc-fmnist-28-s8"):
        create_model("resnet50")
    with pytest.raises(AttributeError):
        vitcodec.models.no_such_function  # noqa: B018


def test_importing_vitcodec_models_loads_no_torch() -> None:
    code = ("import sys, vitcodec.models as m; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'jcc-fmnist-28-s8' in m.list_models(); assert 'torch' not in sys.modules, 'list_models'; "
            "m.create_model('jcc-fmnist-28-s8'); assert 'torch' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
