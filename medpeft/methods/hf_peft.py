"""``peft:<tuner>``: any Hugging Face ``peft`` weight-space tuner on the backbone's Linear layers."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ..errors import UserError
from .base import Method

#: Tuners exercised by the test suite; other ``peft`` tuners with ``target_modules`` are accepted too.
PEFT_TUNERS = ("lora", "dora", "loha", "lokr", "ia3", "oft", "boft", "vera", "fourierft", "hra")
#: Every Linear layer inside the transformer blocks (timm names: ViT, Swin's ``layers.*.blocks``, EVA with fused or
#: separate q/k/v and packed or split SwiGLU, BEiT), as a full-match regular expression.
BLOCK_LINEARS = r".*blocks\.\d+\.(attn\.(qkv|q_proj|k_proj|v_proj|proj)|mlp\.(fc1|fc1_g|fc1_x|fc2))"
DEFAULTS = {
    "dora": {"use_dora": True},
    "ia3": {"feedforward_modules": r".*blocks\.\d+\.mlp\.fc2"},
}


@dataclass
class HFPeft(Method):
    """A ``peft`` tuner injected into the backbone in place (``peft.get_peft_model``); the head trains too.

    ``config`` holds the tuner's own options (e.g. ``r``, ``lora_alpha``, ``target_modules``); by default the
    tuner targets every Linear layer of the blocks (qkv, proj, fc1, fc2). ``dora`` is LoRA with ``use_dora``.
    The tuner and its options are checked on construction (peft's own config class validates them).
    """

    name = "peft"
    tuner: str = "lora"
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        self.peft_config()

    @property
    def full_name(self) -> str:
        return f"peft:{self.tuner}"

    def peft_config(self):
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        peft_type = "LORA" if self.tuner == "dora" else self.tuner.upper()
        configs = {k.value if hasattr(k, "value") else str(k): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
        config_cls = configs.get(peft_type)
        if config_cls is None or "target_modules" not in config_cls.__dataclass_fields__:
            tuners = sorted(k.lower() for k, c in configs.items() if "target_modules" in c.__dataclass_fields__)
            raise UserError(f"unknown peft tuner {self.tuner!r}: choose from {', '.join(tuners + ['dora'])}")
        options = {"target_modules": BLOCK_LINEARS, **DEFAULTS.get(self.tuner, {}), **self.config}
        try:
            with warnings.catch_warnings():  # peft warns about options it adjusts
                warnings.simplefilter("ignore")
                return config_cls(**options)
        except (TypeError, ValueError) as err:
            raise UserError(f"method {self.full_name!r}: {err}".replace("\n", " ")) from err

    def inject(self, backbone):
        from peft import get_peft_model

        config = self.peft_config()
        try:
            with warnings.catch_warnings():  # peft warns about optional CUDA kernels and non-transformers models
                warnings.simplefilter("ignore")
                get_peft_model(backbone, config)  # layers are swapped inside ``backbone``; the wrapper is not kept
        except (TypeError, ValueError) as err:
            raise UserError(f"method {self.full_name!r}: {err}".replace("\n", " ")) from err

    def prepare_export(self, model):
        """Merge every tuner's update into its base layer (peft's own ``merge``); a tuner that cannot merge is
        exported as it is."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        module.merge()
                except NotImplementedError:
                    pass

    def options(self):
        return dict(self.config)
