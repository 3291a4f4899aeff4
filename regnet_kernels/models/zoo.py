"""Named RegNet variants and their published figures.

* torchvision's 15 builders (``regnet_y_400mf`` .. ``regnet_x_32gf``), with torchvision width rounding,
  so their ``state_dict`` matches torchvision's checkpoints.
* the pycls model zoo's 24 baselines (``regnetx_200mf`` .. ``regnety_32gf``), with pycls width
  rounding, from pycls's ``configs/dds_baselines/regnet{x,y}/*.yaml`` (``STEM_W`` 32, ``BOT_MUL`` 1.0,
  ``SE_R`` 0.25 when ``SE_ON``). They also answer to pycls's own names (``RegNetX-200MF`` ..
  ``RegNetY-32GF``) and to timm's (``regnetx_002`` .. ``regnety_320``: timm's configs are pycls's):
  :data:`ALIASES`, ``list_models(aliases=True)``.

Every constructor builds a :class:`~regnet_kernels.models.regnet.RegNet` (torchvision's module layout,
randomly initialised; no weights are downloaded) and forwards ``**kwargs`` to it, e.g.
``regnet_y_400mf(num_classes=10)``; ``features_only=True`` (and ``out_indices``) builds the backbone
instead (:class:`~regnet_kernels.models.features.RegNetFeatures`).

:data:`PUBLISHED` holds the figures each source publishes, for sweeps and reports; exact figures for any
model at any resolution come from :func:`regnet_kernels.models.complexity`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .features import DEFAULT_OUT_INDICES, RegNetFeatures
from .params import RegNetParams
from .regnet import RegNet



def _tv(
    depth: int, w_0: int, w_a: float, w_m: float, group_width: int, se_ratio: float | None = None
) -> RegNetParams:
    return RegNetParams(depth, w_0, w_a, w_m, group_width, se_ratio=se_ratio, rounding="torchvision")


def _pycls(
    depth: int, w_0: int, w_a: float, w_m: float, group_width: int, se_ratio: float | None = None
) -> RegNetParams:
    return RegNetParams(depth, w_0, w_a, w_m, group_width, se_ratio=se_ratio, rounding="pycls")


#: Design point of every named model: ``(depth, w_0, w_a, w_m, group_width[, se_ratio])``.
MODEL_PARAMS: dict[str, RegNetParams] = {
    # torchvision.models.regnet builders (BlockParams.from_init_params arguments).
    "regnet_y_400mf": _tv(16, 48, 27.89, 2.09, 8, 0.25),
    "regnet_y_800mf": _tv(14, 56, 38.84, 2.4, 16, 0.25),
    "regnet_y_1_6gf": _tv(27, 48, 20.71, 2.65, 24, 0.25),
    "regnet_y_3_2gf": _tv(21, 80, 42.63, 2.66, 24, 0.25),
    "regnet_y_8gf": _tv(17, 192, 76.82, 2.19, 56, 0.25),
    "regnet_y_16gf": _tv(18, 200, 106.23, 2.48, 112, 0.25),
    "regnet_y_32gf": _tv(20, 232, 115.89, 2.53, 232, 0.25),
    "regnet_y_128gf": _tv(27, 456, 160.83, 2.52, 264, 0.25),
    "regnet_x_400mf": _tv(22, 24, 24.48, 2.54, 16),
    "regnet_x_800mf": _tv(16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": _tv(18, 80, 34.01, 2.25, 24),
    "regnet_x_3_2gf": _tv(25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": _tv(23, 80, 49.56, 2.88, 120),
    "regnet_x_16gf": _tv(22, 216, 55.59, 2.1, 128),
    "regnet_x_32gf": _tv(23, 320, 69.86, 2.0, 168),
    # pycls configs/dds_baselines: REGNET.DEPTH, W0, WA, WM, GROUP_W (+ SE_ON -> SE_R = 0.25).
    "regnetx_200mf": _pycls(13, 24, 36.44, 2.49, 8),  # RegNetX-200MF
    "regnetx_400mf": _pycls(22, 24, 24.48, 2.54, 16),  # RegNetX-400MF
    "regnetx_600mf": _pycls(16, 48, 36.97, 2.24, 24),  # RegNetX-600MF
    "regnetx_800mf": _pycls(16, 56, 35.73, 2.28, 16),  # RegNetX-800MF
    "regnetx_1_6gf": _pycls(18, 80, 34.01, 2.25, 24),  # RegNetX-1.6GF
    "regnetx_3_2gf": _pycls(25, 88, 26.31, 2.25, 48),  # RegNetX-3.2GF
    "regnetx_4_0gf": _pycls(23, 96, 38.65, 2.43, 40),  # RegNetX-4.0GF
    "regnetx_6_4gf": _pycls(17, 184, 60.83, 2.07, 56),  # RegNetX-6.4GF
    "regnetx_8_0gf": _pycls(23, 80, 49.56, 2.88, 120),  # RegNetX-8.0GF
    "regnetx_12gf": _pycls(19, 168, 73.36, 2.37, 112),  # RegNetX-12GF
    "regnetx_16gf": _pycls(22, 216, 55.59, 2.1, 128),  # RegNetX-16GF
    "regnetx_32gf": _pycls(23, 320, 69.86, 2.0, 168),  # RegNetX-32GF
    "regnety_200mf": _pycls(13, 24, 36.44, 2.49, 8, 0.25),  # RegNetY-200MF
    "regnety_400mf": _pycls(16, 48, 27.89, 2.09, 8, 0.25),  # RegNetY-400MF
    "regnety_600mf": _pycls(15, 48, 32.54, 2.32, 16, 0.25),  # RegNetY-600MF
    "regnety_800mf": _pycls(14, 56, 38.84, 2.4, 16, 0.25),  # RegNetY-800MF
    "regnety_1_6gf": _pycls(27, 48, 20.71, 2.65, 24, 0.25),  # RegNetY-1.6GF
    "regnety_3_2gf": _pycls(21, 80, 42.63, 2.66, 24, 0.25),  # RegNetY-3.2GF
    "regnety_4_0gf": _pycls(22, 96, 31.41, 2.24, 64, 0.25),  # RegNetY-4.0GF
    "regnety_6_4gf": _pycls(25, 112, 33.22, 2.27, 72, 0.25),  # RegNetY-6.4GF
    "regnety_8_0gf": _pycls(17, 192, 76.82, 2.19, 56, 0.25),  # RegNetY-8.0GF
    "regnety_12gf": _pycls(19, 168, 73.36, 2.37, 112, 0.25),  # RegNetY-12GF
    "regnety_16gf": _pycls(18, 200, 106.23, 2.48, 112, 0.25),  # RegNetY-16GF
    "regnety_32gf": _pycls(20, 232, 115.89, 2.53, 232, 0.25),  # RegNetY-32GF
}

# The named constructors below are MODEL_PARAMS's keys, one function each.
__all__ = ["ALIASES", "MODEL_PARAMS", "PUBLISHED", "get_model", "get_model_params", "list_models", *MODEL_PARAMS]


def _aliases_of(name: str) -> tuple[str, str]:
    """pycls's and timm's names of a pycls baseline: ``regnety_1_6gf`` -> ``RegNetY-1.6GF``, ``regnety_016``."""
    family, size = name.split("_", 1)
    value, unit = size[:-2].replace("_", "."), size[-2:]
    timm_code = round(float(value) * (10 if unit == "gf" else 0.01))  # timm: 100s of MF, e.g. 1.6GF -> 016
    return f"RegNet{family[-1].upper()}-{value}{unit.upper()}", f"{family}_{timm_code:03d}"


#: Other spellings of the pycls baselines -> our name: pycls's (``RegNetY-1.6GF``) and timm's
#: (``regnety_016``); both name the same design point (timm's configs equal pycls's).
ALIASES: dict[str, str] = {
    alias: name
    for name in MODEL_PARAMS
    if name.startswith(("regnetx_", "regnety_"))
    for alias in _aliases_of(name)
}


def list_models(aliases: bool = False) -> list[str]:
    """Names of every model :func:`get_model` builds, sorted; with ``aliases=True`` also every alias
    (:data:`ALIASES`: pycls's ``RegNetY-1.6GF`` and timm's ``regnety_016`` spellings)."""
    return sorted(list(MODEL_PARAMS) + (list(ALIASES) if aliases else []))


def get_model_params(name: str) -> RegNetParams:
    """The design point of a named model (our name or an alias from :data:`ALIASES`).

    Raises:
        ValueError: for an unknown name; the message lists the known names.
    """
    if isinstance(name, str):
        params = MODEL_PARAMS.get(ALIASES.get(name, name))
        if params is not None:
            return params
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())} (and their pycls / timm "
                     f"aliases, e.g. 'RegNetY-1.6GF', 'regnety_016': list_models(aliases=True))")


def get_model(
    name: str,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> RegNet | RegNetFeatures:
    """Builds a named model (randomly initialised): the classifier, or its backbone.

    Args:
        name: one of :func:`list_models` (aliases included: ``"RegNetY-1.6GF"``, ``"regnety_016"``).
        features_only: return a :class:`~regnet_kernels.models.features.RegNetFeatures` backbone (stem and
            stages, no head) whose forward gives a list of feature maps, for FPN-style heads. Its
            ``state_dict`` names are the classifier's minus ``fc.*``: load ImageNet checkpoints with
            :func:`~regnet_kernels.models.features.load_classifier_state_dict`.
        out_indices: with ``features_only``, the levels returned: 0 = stem (stride 2), 1 .. 4 = stages
            (strides 4, 8, 16, 32). Default ``(1, 2, 3, 4)``.
        **kwargs: forwarded to :class:`RegNet` (``num_classes``, ``norm_layer``, ...).

    Returns:
        The model, on the default device (build it under ``with torch.device("meta"):`` to allocate
        nothing).

    Raises:
        ValueError: for an unknown name (the message lists the known names), bad ``out_indices``, or
            ``out_indices`` without ``features_only``.
    """
    params = get_model_params(name)
    if features_only:
        return RegNetFeatures(params, out_indices=DEFAULT_OUT_INDICES if out_indices is None else out_indices,
                              **kwargs)
    if out_indices is not None:
        raise ValueError("out_indices applies to backbones only: pass features_only=True as well")
    return RegNet(params, **kwargs)


# One named constructor per model, mirroring torchvision's builder names (without `weights`).


def regnet_y_400mf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_y_400mf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_y_400mf", **kwargs)


def regnet_y_800mf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_y_800mf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_y_800mf", **kwargs)


def regnet_y_1_6gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_y_1_6gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_y_1_6gf", **kwargs)


def regnet_y_3_2gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_y_3_2gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_y_3_2gf", **kwargs)


def regnet_y_8gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_y_8gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_y_8gf", **kwargs)


def regnet_y_16gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_y_16gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_y_16gf", **kwargs)


def regnet_y_32gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_y_32gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_y_32gf", **kwargs)


def regnet_y_128gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_y_128gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_y_128gf", **kwargs)


def regnet_x_400mf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_x_400mf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_x_400mf", **kwargs)


def regnet_x_800mf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_x_800mf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_x_800mf", **kwargs)


def regnet_x_1_6gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_x_1_6gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_x_1_6gf", **kwargs)


def regnet_x_3_2gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_x_3_2gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_x_3_2gf", **kwargs)


def regnet_x_8gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_x_8gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_x_8gf", **kwargs)


def regnet_x_16gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_x_16gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_x_16gf", **kwargs)


def regnet_x_32gf(**kwargs: Any) -> RegNet:
    """torchvision's ``regnet_x_32gf`` (torchvision rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnet_x_32gf", **kwargs)


def regnetx_200mf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-200MF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_200mf", **kwargs)


def regnetx_400mf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-400MF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_400mf", **kwargs)


def regnetx_600mf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-600MF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_600mf", **kwargs)


def regnetx_800mf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-800MF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_800mf", **kwargs)


def regnetx_1_6gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-1.6GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_1_6gf", **kwargs)


def regnetx_3_2gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-3.2GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_3_2gf", **kwargs)


def regnetx_4_0gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-4.0GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_4_0gf", **kwargs)


def regnetx_6_4gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-6.4GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_6_4gf", **kwargs)


def regnetx_8_0gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-8.0GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_8_0gf", **kwargs)


def regnetx_12gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-12GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_12gf", **kwargs)


def regnetx_16gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-16GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_16gf", **kwargs)


def regnetx_32gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetX-32GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnetx_32gf", **kwargs)


def regnety_200mf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-200MF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_200mf", **kwargs)


def regnety_400mf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-400MF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_400mf", **kwargs)


def regnety_600mf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-600MF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_600mf", **kwargs)


def regnety_800mf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-800MF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_800mf", **kwargs)


def regnety_1_6gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-1.6GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_1_6gf", **kwargs)


def regnety_3_2gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-3.2GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_3_2gf", **kwargs)


def regnety_4_0gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-4.0GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_4_0gf", **kwargs)


def regnety_6_4gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-6.4GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_6_4gf", **kwargs)


def regnety_8_0gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-8.0GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_8_0gf", **kwargs)


def regnety_12gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-12GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_12gf", **kwargs)


def regnety_16gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-16GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_16gf", **kwargs)


def regnety_32gf(**kwargs: Any) -> RegNet:
    """pycls's RegNetY-32GF (pycls rounding); ``kwargs`` go to :class:`RegNet`."""
    return get_model("regnety_32gf", **kwargs)


# ------------------------------------------------------------------------------------------------ #
# Published figures
# ------------------------------------------------------------------------------------------------ #


def _tv_published(params: int, **weights: tuple[float, float, int, float]) -> dict[str, Any]:
    # weights: IMAGENET1K_<key> -> (acc@1, acc@5, eval crop size, `_ops`), from torchvision's Weights meta.
    w = {f"IMAGENET1K_{k}": {"top1": t1, "top5": t5, "resolution": r, "gmacs": g}
         for k, (t1, t5, r, g) in weights.items()}
    at224 = [v["gmacs"] for v in w.values() if v["resolution"] == 224]
    v1 = w.get("IMAGENET1K_V1", {})
    return {
        "source": "torchvision",
        "params": params,
        "gmacs": at224[0],
        "flops": None,
        "acts": None,
        "top1": v1.get("top1"),
        "top5": v1.get("top5"),
        "weights": w,
    }


def _pycls_published(params: int, flops: int, acts: int, top1_err: float, top5_err: float) -> dict[str, Any]:
    return {
        "source": "pycls",
        "params": params,
        "gmacs": None,
        "flops": flops,
        "acts": acts,
        "top1": round(100.0 - top1_err, 3),
        "top5": round(100.0 - top5_err, 3),
        "weights": {},
    }


#: What each source publishes, per model name. Every entry has the same keys (None = not published):
#:
#: - ``source``: ``"torchvision"`` (torchvision 0.29 ``RegNet_*_Weights`` meta) or ``"pycls"``
#:   (pycls ``dev/model_complexity.json`` and ``dev/model_error.json``, the data behind its MODEL_ZOO.md).
#: - ``params``: parameter count, exact (both sources).
#: - ``gmacs``: torchvision's "GFLOPS" (``_ops``) at 224x224, which are GMACs of the convs and the linear
#:   layer, rounded to 3 decimals. :func:`~regnet_kernels.models.complexity` gives the exact ``macs``.
#: - ``flops``: pycls's exact ``flops`` at 224x224 = MACs + one add per bias output (SE convs and ``fc``),
#:   i.e. ``complexity(...)["pycls_flops"]``.
#: - ``acts``: pycls's exact activation count at 224x224 (outputs of every conv and of ``fc``).
#: - ``top1``, ``top5``: ImageNet-1k val accuracy in %: torchvision's ``IMAGENET1K_V1`` acc@1/acc@5 (None
#:   for regnet_y_128gf, which has SWAG weights only), or 100 - pycls's ``top1_err``/``top5_err``.
#: - ``weights``: torchvision only: every published checkpoint -> ``top1``, ``top5``, eval
#:   ``resolution`` and ``gmacs`` at that resolution.
PUBLISHED: dict[str, dict[str, Any]] = {
    "regnet_y_400mf": _tv_published(4344144, V1=(74.046, 91.716, 224, 0.402), V2=(75.804, 92.742, 224, 0.402)),
    "regnet_y_800mf": _tv_published(6432512, V1=(76.42, 93.136, 224, 0.834), V2=(78.828, 94.502, 224, 0.834)),
    "regnet_y_1_6gf": _tv_published(11202430, V1=(77.95, 93.966, 224, 1.612), V2=(80.876, 95.444, 224, 1.612)),
    "regnet_y_3_2gf": _tv_published(19436338, V1=(78.948, 94.576, 224, 3.176), V2=(81.982, 95.972, 224, 3.176)),
    "regnet_y_8gf": _tv_published(39381472, V1=(80.032, 95.048, 224, 8.473), V2=(82.828, 96.33, 224, 8.473)),
    "regnet_y_16gf": _tv_published(83590140, V1=(80.424, 95.24, 224, 15.912), V2=(82.886, 96.328, 224, 15.912),
                                   SWAG_E2E_V1=(86.012, 98.054, 384, 46.735),
                                   SWAG_LINEAR_V1=(83.976, 97.244, 224, 15.912)),
    "regnet_y_32gf": _tv_published(145046770, V1=(80.878, 95.34, 224, 32.28), V2=(83.368, 96.498, 224, 32.28),
                                   SWAG_E2E_V1=(86.838, 98.362, 384, 94.826),
                                   SWAG_LINEAR_V1=(84.622, 97.48, 224, 32.28)),
    "regnet_y_128gf": _tv_published(644812894,
                                    SWAG_E2E_V1=(88.228, 98.682, 384, 374.57),
                                    SWAG_LINEAR_V1=(86.068, 97.844, 224, 127.518)),
    "regnet_x_400mf": _tv_published(5495976, V1=(72.834, 90.95, 224, 0.414), V2=(74.864, 92.322, 224, 0.414)),
    "regnet_x_800mf": _tv_published(7259656, V1=(75.212, 92.348, 224, 0.8), V2=(77.522, 93.826, 224, 0.8)),
    "regnet_x_1_6gf": _tv_published(9190136, V1=(77.04, 93.44, 224, 1.603), V2=(79.668, 94.922, 224, 1.603)),
    "regnet_x_3_2gf": _tv_published(15296552, V1=(78.364, 93.992, 224, 3.177), V2=(81.196, 95.43, 224, 3.177)),
    "regnet_x_8gf": _tv_published(39572648, V1=(79.344, 94.686, 224, 7.995), V2=(81.682, 95.678, 224, 7.995)),
    "regnet_x_16gf": _tv_published(54278536, V1=(80.058, 94.944, 224, 15.941), V2=(82.716, 96.196, 224, 15.941)),
    "regnet_x_32gf": _tv_published(107811560, V1=(80.622, 95.248, 224, 31.736), V2=(83.014, 96.288, 224, 31.736)),
    "regnetx_200mf": _pycls_published(2684792, 199040872, 2164056, 31.088, 11.342),
    "regnetx_400mf": _pycls_published(5157512, 397678568, 3143272, 27.382, 9.076),
    "regnetx_600mf": _pycls_published(6196040, 600891112, 3975096, 25.864, 8.198),
    "regnetx_800mf": _pycls_published(7259656, 799700712, 5148744, 24.846, 7.592),
    "regnetx_1_6gf": _pycls_published(9190136, 1602850792, 7933512, 23.038, 6.484),
    "regnetx_3_2gf": _pycls_published(15296552, 3176622952, 11367432, 21.736, 5.862),
    "regnetx_4_0gf": _pycls_published(22118248, 3964499816, 12201608, 21.356, 5.736),
    "regnetx_6_4gf": _pycls_published(26209256, 6460292264, 16369744, 20.844, 5.434),
    "regnetx_8_0gf": _pycls_published(39572648, 7995133416, 14059688, 20.728, 5.42),
    "regnetx_12gf": _pycls_published(46106056, 12086679016, 21366568, 20.288, 5.284),
    "regnetx_16gf": _pycls_published(54278536, 15940756456, 25515496, 19.956, 5.022),
    "regnetx_32gf": _pycls_published(107811560, 31735930792, 36302160, 19.498, 4.878),
    "regnety_200mf": _pycls_published(3162996, 199519076, 2168052, 29.658, 10.378),
    "regnety_400mf": _pycls_published(4344144, 401849056, 3892496, 25.898, 8.07),
    "regnety_600mf": _pycls_published(6055160, 601227608, 4334296, 24.54, 7.28),
    "regnety_800mf": _pycls_published(6263168, 797183328, 5249888, 23.684, 6.846),
    "regnety_1_6gf": _pycls_published(11202430, 1612087326, 8044814, 22.066, 6.134),
    "regnety_3_2gf": _pycls_published(19436338, 3176496162, 11263418, 21.074, 5.454),
    "regnety_4_0gf": _pycls_published(20646656, 3973301344, 12287200, 20.64, 5.336),
    "regnety_6_4gf": _pycls_published(30583252, 6355221876, 16407188, 20.11, 5.1),
    "regnety_8_0gf": _pycls_published(39180068, 7963074196, 17968916, 20.052, 5.06),
    "regnety_12gf": _pycls_published(51822544, 12092395504, 21384496, 19.67, 4.856),
    "regnety_16gf": _pycls_published(83590140, 15911534044, 23041228, 19.608, 4.944),
    "regnety_32gf": _pycls_published(145046770, 32279583362, 30261570, 19.066, 4.568),
}
