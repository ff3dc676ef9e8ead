"""Device settings: auto, cpu, cuda and cuda:N, everywhere a device is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sjc_core.devices import check_device_setting, resolve_device
from sjc_core.errors import SjcError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("setting", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:15"])
def test_device_spellings_accepted(setting: str) -> None:
    assert check_device_setting(setting) == setting


@pytest.mark.parametrize("setting", ["gpu", "cuda:", "cuda:x", "cuda:01", "cpu:1", "auto:0", "CUDA", " cuda", "cuda:99999"])
def test_device_spellings_refused(setting: str) -> None:
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        check_device_setting(setting)


def test_cuda_index_is_honoured_and_a_missing_one_names_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(SjcError) as caught:
        resolve_device("cuda:2")
    assert caught.value.problems == [
        "device: 'cuda:2' requested but this machine has 2 CUDA device(s): cuda:0 to cuda:1 "
        "(CUDA_VISIBLE_DEVICES chooses which)"
    ]


def test_no_cuda_at_all_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SjcError, match=r"^--device: 'cuda:1' requested but no CUDA device is available"):
        resolve_device("cuda:1", where="--device")
    assert resolve_device("auto") == torch.device("cpu")


def test_recipe_and_flags_take_cuda_index(run_sjc, tmp_path: Path) -> None:
    from sjc_core.plugins import load_registry
    from sjc_core.recipes.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "demo.toml", load_registry(), ["device=cuda:1"])
    assert recipe.resolved()["device"] == "cuda:1"  # the spelling is valid everywhere
    code, out, err = run_sjc("validate", REPO / "recipes" / "demo.toml", "--set", "device=cuda:1")
    if torch.cuda.device_count() >= 2:
        assert code == 0 and 'device = "cuda:1"' in out, err
    else:  # validate also checks that the card is there, as sjc run would
        assert code == 2 and len(err.strip().splitlines()) == 1 and "'cuda:1' requested but" in err, err
    code, _, err = run_sjc("validate", REPO / "recipes" / "demo.toml", "--set", "device=gpu")
    assert code == 2 and err.strip().splitlines() == [
        f"error: {REPO / 'recipes' / 'demo.toml'}: device: must be auto, cpu, cuda or cuda:N (got 'gpu')"
    ]
    code, _, err = run_sjc("fit", REPO / "data" / "demo", "--device", "cuda:x", "--out", tmp_path / "fit")
    assert code == 2 and err.strip().splitlines() == ["error: --device: must be auto, cpu, cuda or cuda:N (got 'cuda:x')"]
    assert not (tmp_path / "fit").exists()
