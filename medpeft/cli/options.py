"""The command line's shared option parsing: ``key=value`` method options, integer lists and ranges, shots; and the
option groups ``train`` and ``bench`` share (the model, the split, calibration, caches, MLflow) and one option per
:class:`~medpeft.types.TrainConfig` field. A group with ``defaults=False`` defaults to None: then only what is given
overrides (``bench`` over its config file)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import click
import yaml

from ..backbones import AUTO, DEFAULT_BACKBONE
from ..calibration import CHOICES as CALIBRATIONS
from ..errors import ParameterError, UserError
from ..types import TrainConfig

_INT_RANGES = re.compile(r"\s*-?\d+(\s*-\s*-?\d+)?(\s*,\s*-?\d+(\s*-\s*-?\d+)?)*\s*")


def parse_options(pairs: tuple[str, ...], flag: str = "--opt") -> dict:
    """``key=value`` pairs; values are YAML scalars or lists (``8``, ``0.1``, ``true``, ``[0, 1]``), and integer
    ranges and lists read as lists: ``0-5`` is [0, 1, 2, 3, 4, 5], ``11-9`` [11, 10, 9], ``0,3-4`` [0, 3, 4]."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {pair!r}: expected key=value, e.g. {flag} prompt_length=50")
        if _INT_RANGES.fullmatch(value) and ("," in value or re.search(r"\d\s*-", value)):
            options[key.strip()] = int_list(value, ordered=True)
            continue
        try:
            options[key.strip()] = _number_or(yaml.safe_load(value))
        except yaml.YAMLError:
            raise UserError(f"{flag} {pair!r}: cannot read the value {value!r}") from None
    return options


def _number_or(value):
    """YAML 1.1 reads ``1e-3`` as a string: a string that is a number becomes that number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def int_list(text: str, ordered: bool = False) -> list[int]:
    """``1,5,10`` or ``1-5`` (or a mix) as a list of ints; with ``ordered`` a descending range counts down."""
    out = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+))?\s*", part)
        if not match:
            raise UserError(f"{text!r}: expected numbers like 1,5,10 or 1-5")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        out += list(range(lo, hi + 1)) if lo <= hi or not ordered else list(range(lo, hi - 1, -1))
    return out


def shots_list(text: str) -> list[int | str]:
    """``1,5,10`` and fractions of the training set such as ``20%``."""
    return [part.strip() if part.strip().endswith("%") else int_list(part)[0] for part in str(text).split(",")]


def shots_value(value: str) -> int | str:
    """One shots value: K, or a percentage such as ``20%``."""
    return value if value.strip().endswith("%") else int_list(value)[0]


def absolute_path(path: str | None) -> str | None:
    """``path`` made absolute (``~`` expanded); None stays None."""
    return None if path is None else str(Path(path).expanduser().resolve())


class Command(click.Command):
    """A command whose library errors name its flags: a :class:`~medpeft.errors.ParameterError` about a parameter
    it maps to an option (``batch_size``) becomes a :class:`~medpeft.errors.UserError` naming the flag
    (``--batch-size``) or, for an argument, its metavar (``RUN_DIR``)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ParameterError as err:
            raise UserError(err.named(flag_namer(self))) from None


def flag_namer(command: click.Command):
    """How ``command`` names a library parameter: the longest flag of its option (``--batch-size``), the metavar of
    its argument, else the parameter's own name; a boolean flag set to a value (``pretrained=False``) by the flag that
    sets it (``--no-pretrained``)."""
    params = {p.name: p for p in command.params}

    def name(parameter: str) -> str:
        key, _, value = parameter.partition("=")
        p = params.get(key)
        if p is None:
            return parameter
        if not isinstance(p, click.Option):
            return p.human_readable_name
        if value and p.is_bool_flag:
            flags = p.opts if value == "True" else p.secondary_opts
            return max(flags, key=len) if flags else parameter
        return max(p.opts, key=len) + (f" {value}" if value else "")

    return name


def _group(*decorators):
    """One decorator applying ``decorators`` in the order written (the options appear in ``--help`` so)."""

    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def backbone_options(defaults: bool = True):
    """The backbone: ``--backbone``, ``--pretrained/--no-pretrained``, ``--weights``, ``--img-size``."""
    return _group(
        click.option(
            "--backbone",
            help=f"A timm model name (ViT, Swin, EVA, BEiT) or one of `medpeft models`; "
            f"{AUTO!r}: the architecture --weights states"
            + (f" [{DEFAULT_BACKBONE}; with --weights: {AUTO}]." if defaults else "."),
        ),
        click.option(
            "--pretrained/--no-pretrained",
            default=True if defaults else None,
            show_default=defaults,
            help="Start from the hub's pretrained weights.",
        ),
        click.option(
            "--weights",
            type=click.Path(),
            help="Local backbone checkpoint: a file (.npz/.pth/.bin/"
            ".safetensors) or a folder saved by transformers, open_clip or timm (config and weights).",
        ),
        click.option("--img-size", type=int, help="Input size (resizes position embeddings and EPT's prompt rows)."),
    )


def model_options(f):
    """The options that say which model to build: ``--method``, ``--opt``, :func:`backbone_options` (see
    :func:`backbone_name` for ``--backbone``'s default), ``--mean/--std`` and ``--head``."""
    return _group(
        click.option("--method", "-m", default="ept", show_default=True, help="A name from `medpeft methods`."),
        click.option(
            "--opt",
            "opts",
            multiple=True,
            metavar="KEY=VALUE",
            help="A method option (repeatable); integer lists as 0-5 or 11-9 or 0,3.",
        ),
        backbone_options(),
        click.option(
            "--mean",
            type=float,
            nargs=3,
            help="Normalisation mean (R G B, of pixels in [0, 1]) instead of the one the weights state.",
        ),
        click.option("--std", type=float, nargs=3, help="Normalisation std (R G B) instead of the weights'."),
        head_option(),
    )(f)


def head_option():
    """``--head``: the dense head of a segmentation task (:data:`medpeft.heads.HEADS`)."""
    from ..heads import DEFAULT_HEAD, HEADS

    return click.option(
        "--head",
        type=click.Choice(list(HEADS)),
        help=f"Segmentation tasks: the dense head on the patch tokens [{DEFAULT_HEAD}].",
    )


DATA_ROOT_HELP = (
    "MedFMC root (with chest/ colon/ endo/), ISIC folder, MedMNIST .npz, CSV file, class folder or segmentation "
    "folder (images/ + masks/) [br35h, icbm152-tissue, stardist-nuclei: installed packages]."
)


def run_options(defaults: bool = True):
    """What every run of ``train`` and ``bench`` shares beside the model: validation size, post-hoc calibration and
    the frozen-feature cache."""
    return _group(
        click.option(
            "--val-per-class", type=int, help="Validate on at most this many images per class (drawn, seeded)."
        ),
        click.option(
            "--calibrate",
            type=click.Choice(CALIBRATIONS),
            default="none" if defaults else None,
            show_default=defaults,
            help="Post-hoc calibration fitted on validation after the epoch is selected (temperature scaling).",
        ),
        click.option(
            "--feature-cache/--no-feature-cache",
            default=True,
            show_default=True,
            help="Evaluate from the frozen prefix's cached outputs (linear, mlp, partial; same numbers).",
        ),
    )


def mlflow_options(what: str):
    """``--mlflow URI`` and ``--mlflow-experiment NAME``; ``what`` says what is logged."""
    return _group(
        click.option(
            "--mlflow",
            "mlflow_uri",
            metavar="URI",
            help=f"Log {what} to this MLflow tracking URI (http://host:5000, sqlite:///mlflow.db).",
        ),
        click.option("--mlflow-experiment", metavar="NAME", help="The MLflow experiment [the --out folder's name]."),
    )


def backbone_name(backbone: str | None, weights: str | None) -> str:
    """``--backbone`` as given, else :data:`~medpeft.backbones.AUTO` with ``--weights`` (a checkpoint that does not
    state its architecture falls back to the default backbone) and the default backbone without."""
    if backbone:
        return backbone
    return AUTO if weights else DEFAULT_BACKBONE


def train_config_options(defaults: bool = True):
    """One option per :class:`~medpeft.types.TrainConfig` field (``--batch-size`` …), typed, with its help; with
    ``defaults`` False they default to None (then only what is given overrides)."""
    hints = typing.get_type_hints(TrainConfig)

    def decorate(f):
        for field in reversed(dataclasses.fields(TrainConfig)):
            flag = "--" + field.name.replace("_", "-")
            kind = hints[field.name]
            extra = {
                "default": field.default if defaults else None,
                "show_default": defaults,
                "help": field.metadata.get("help"),
            }
            if kind is bool:
                decl = f"{flag}/--no-{field.name.replace('_', '-')}"
                f = click.option(decl, field.name, **extra)(f)
            else:
                choices = field.metadata.get("choices")
                f = click.option(flag, field.name, type=click.Choice(choices) if choices else kind, **extra)(f)
        return f

    return decorate


def conformal_options(f):
    """``--conformal lac|aps|raps|none`` and its settings (given ones only: each defaults to None)."""
    from ..conformal import SCORES

    for decorator in reversed(
        [
            click.option(
                "--conformal",
                type=click.Choice(["none", *SCORES]),
                help="Conformal prediction sets calibrated on validation (after --calibrate temperature when "
                "both): lac, aps or raps.",
            ),
            click.option(
                "--alpha", type=float, help="--conformal: sets hold the true class with probability ≥ 1 − α [0.1]."
            ),
            click.option(
                "--randomized/--no-randomized",
                default=None,
                help="--conformal aps/raps: randomised scores (smaller sets; seeded by the run's seed) [no].",
            ),
            click.option(
                "--mondrian/--no-mondrian",
                default=None,
                help="--conformal: one threshold per class (multi-label: per label and state) [no].",
            ),
            click.option("--raps-lambda", type=float, help="--conformal raps: penalty per rank beyond k_reg [0.01]."),
            click.option("--raps-k-reg", type=int, help="--conformal raps: ranks without penalty [1]."),
        ]
    ):
        f = decorator(f)
    return f


def conformal_settings(conformal: str | None, **given) -> dict | str | None:
    """The conformal settings given on the command line (``given``: the other options' values by
    :class:`~medpeft.conformal.ConformalConfig` field): a mapping of fields, ``"none"``, or None when ``--conformal``
    was not given (then no other conformal option may be)."""
    given = {k: v for k, v in given.items() if v is not None}
    if conformal in (None, "none"):
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise click.UsageError(f"{flags} appl{'ies' if len(given) == 1 else 'y'} with --conformal lac|aps|raps")
        return conformal
    return {"method": conformal, **given}
