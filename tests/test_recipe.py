"""A notebook's `setting` parameter: the setting's recipe and Panacea, with the notebook's overrides on top."""
import pytest

from panacea_lab import settings
from panacea_lab.studies import recipe
from panacea_lab.studies.sweeps import attack_config
from panacea_lab.config import ConfigError, ModelConfig


def test_panacea_takes_the_settings_values_unless_given():
    embedded, paper = recipe.trained("embedded"), recipe.trained("paper")
    assert (embedded.rho, embedded.lam) == (settings.get("embedded").param("panacea", "rho"),
                                            settings.get("embedded").param("panacea", "lam"))
    assert embedded.lam != paper.lam  # the two settings differ exactly where the notebooks say they do
    given = recipe.trained("embedded", rho=0.5)
    assert (given.rho, given.lam) == (0.5, embedded.lam)
    assert recipe.trained("embedded", lam=1e-3).lam == 1e-3
    assert recipe.trained("embedded", h_const=True).h_const != embedded.h_const
    assert recipe.trained("embedded", h_const=None).h_const == embedded.h_const  # None keeps the setting's


def test_a_recipe_setting_changes_the_embedded_models_lora_alignment_and_attack():
    chosen = settings.get("paper-recipe")
    model = recipe.model_config("paper-recipe")
    assert all(getattr(model, k) == v for k, v in chosen.model.items())
    align = recipe.align_config("paper-recipe", model, epochs=1)
    assert align.epochs == 1  # the notebook's override wins
    assert all(getattr(align, k) == v for k, v in chosen.align.items() if k != "epochs")
    attack = attack_config(align, "sentiment", 0.1, 0, **recipe.attack_overrides("paper-recipe", n=20))
    assert attack.n == 20 and all(getattr(attack, k) == v for k, v in chosen.attack.items())


def test_a_local_model_keeps_its_own_lora_and_embedded_adds_nothing(tmp_path):
    assert recipe.model_config("paper-recipe", str(tmp_path)) == ModelConfig(path=str(tmp_path))
    assert recipe.model_config("embedded") == ModelConfig()
    assert recipe.attack_overrides("embedded", n=20) == {"n": 20}


def test_an_unknown_setting_is_named():
    with pytest.raises(ConfigError, match="setting = 'nope'"):
        recipe.trained("nope")
