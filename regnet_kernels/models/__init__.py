"""RegNet model zoo with torchvision's module layout (torchvision is not needed at run time).

* :class:`RegNetParams`: a point of the RegNet design space -> per-stage / per-block specs, with
  torchvision's or pycls's width rounding.
* :class:`RegNet`: the ``nn.Module``; names, shapes and init identical to ``torchvision.models.RegNet``.
* :class:`RegNetFeatures`: the backbone (stem + stage feature maps, strides 4-32) for detection and
  segmentation heads: ``get_model(name, features_only=True)``; :func:`load_classifier_state_dict`.
* Named constructors: torchvision's 15 (``regnet_y_400mf`` ...) and pycls's 24 (``regnetx_200mf`` ...,
  also as ``RegNetX-200MF`` / timm's ``regnetx_002``: :data:`ALIASES`), :func:`list_models`,
  :func:`get_model`, :data:`PUBLISHED` figures.
* :func:`complexity`: params / MACs / acts of any CNN, counted on the meta device.
"""

from . import params as _params
from . import regnet as _regnet
from . import zoo as _zoo
from .complexity import complexity
from .features import FeatureInfo, RegNetFeatures, load_classifier_state_dict
from .params import *  # noqa: F401,F403  (the design space, listed once in params.__all__)
from .regnet import *  # noqa: F401,F403  (the modules, listed once in regnet.__all__)
from .zoo import *  # noqa: F401,F403  (the named constructors, listed once in zoo.__all__)
from .zoo import ALIASES, MODEL_PARAMS, PUBLISHED, get_model, get_model_params, list_models  # noqa: F401

__all__ = sorted(
    list(_params.__all__)
    + list(_regnet.__all__)
    + ["FeatureInfo", "RegNetFeatures", "complexity", "load_classifier_state_dict"]
) + list(_zoo.__all__)
