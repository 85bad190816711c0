"""semfuse_jax: Semantic Image Fusion (Hill & Bull, 2021) in JAX/Flax.

Modules: ``vgg19`` (model), ``weights`` (import/convert/load), ``rules`` (fusion rules Ψ),
``cam`` (Grad-CAM and mixing), ``optimise`` (Adam image optimisation), ``fusion`` (FM0–FM3),
``io`` (images and atomic writes), ``figure`` (contact sheets), ``cli`` (absl tools).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("semfuse_jax")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
