"""The backbone families: which family serves a model."""

import random

import pytest
from timm.models.beit import Beit
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from medpeft import UserError
from medpeft.families import base
from medpeft.families.beit import BeitFamily
from medpeft.families.eva import EvaFamily
from medpeft.families.swin import SwinFamily
from medpeft.families.vit import ViTFamily

FAMILIES = {VisionTransformer: ViTFamily, SwinTransformer: SwinFamily, Eva: EvaFamily, Beit: BeitFamily}


def bare(cls):
    """An instance of ``cls`` without building it (the lookup reads the class only)."""
    return cls.__new__(cls)


class MyEva(Eva):
    pass


class MyEvaFamily(EvaFamily):
    model_class = MyEva


@pytest.mark.parametrize("seed", range(4))
def test_lookup_does_not_depend_on_the_order_of_registration(seed, monkeypatch):
    """Exact class first, else the nearest registered base class in the MRO, in any registration order."""
    families = [*FAMILIES.values(), MyEvaFamily]
    random.Random(seed).shuffle(families)
    monkeypatch.setattr(base, "_FAMILIES", {})
    for family in families:
        base.register(family)
    for model_class, family in FAMILIES.items():
        assert base.family_class(bare(model_class)) is family
    assert base.family_class(bare(MyEva)) is MyEvaFamily  # its own family, though an Eva
    assert base.family_class(bare(VisionTransformerDistilled)) is ViTFamily  # a VisionTransformer subclass
    with pytest.raises(ValueError, match="Eva already has the family EvaFamily"):
        base.register(type("Other", (EvaFamily,), {}))


def test_another_model_is_refused_naming_the_families_by_name():
    class Thing(base.nn.Module):
        pass

    with pytest.raises(UserError) as err:
        base.family_class(Thing(), "thing")
    assert str(err.value) == (
        "backbone 'thing' is a Thing, not a timm Beit, Eva, SwinTransformer or VisionTransformer: use e.g. "
        "beit_base_patch16_224, eva02_tiny_patch14_224, swin_tiny_patch4_window7_224, vit_base_patch16_224"
    )
    assert [f.name for f in sorted(base._FAMILIES.values(), key=lambda f: f.name)] == ["beit", "eva", "swin", "vit"]
