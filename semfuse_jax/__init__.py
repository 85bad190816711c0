"""semfuse_jax: Semantic Image Fusion (Hill & Bull, 2021) in JAX/Flax.

The public API::

    from semfuse_jax import fuse, FusionConfig, load_image, save_image, stack_set

    images = stack_set([load_image("a.png"), load_image("b.png")])  # [N, H, W, C]
    result = fuse(None, images[None], FusionConfig(method="fm0"))  # built-in conv1_1 weights
    save_image("fused.png", result.fused[0])

Modules: ``models`` (the networks of a run: ``models.vgg19`` and ``models.efficientnet``, each
with its weights' import and loading; ``models.checkpoints`` and ``models.torch_file``, the
weight files they share), ``classifier`` (ImageNet classifiers, class names), ``rules`` (fusion
rules Ψ), ``cam`` (Grad-CAM, mixing), ``pyramid`` (Laplacian pyramids), ``optimise``
(objectives and the Adam solver), ``fusion`` (FM0–FM6), ``regions`` (FM6), ``baselines``,
``metrics``, ``files`` (images, atomic writes), ``figure`` (contact sheets), ``cli`` (absl
tools).
"""

from importlib.metadata import PackageNotFoundError, version

from semfuse_jax import metrics
from semfuse_jax.errors import SemfuseError
from semfuse_jax.files import load_image, save_image
from semfuse_jax.fusion import FusionConfig, FusionResult, fuse, stack_set
from semfuse_jax.models.vgg19 import load_weights
from semfuse_jax.optimise import Schedule, solve

__all__ = [
    "FusionConfig",
    "FusionResult",
    "Schedule",
    "SemfuseError",
    "fuse",
    "load_image",
    "load_weights",
    "metrics",
    "save_image",
    "solve",
    "stack_set",
]

try:
    __version__ = version("semfuse_jax")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
