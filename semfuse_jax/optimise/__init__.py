"""Image optimisation: projected Adam on the pixels of a batch of images to match target features.

Three modules, one concept each:

- :mod:`~semfuse_jax.optimise.objectives`: what is optimised, the feature loss and its gradient
  paths (autodiff through the network, or the exact quadratic form of ``conv1_1``), and FM4's
  edge objective, behind one :class:`Objective` protocol.
- :mod:`~semfuse_jax.optimise.solver`: how one set is optimised, Optax Adam with the schedule's
  staircase learning rate and a box projection, in one ``lax.scan`` (:func:`solve`, jittable and
  vmappable as it is).
- :mod:`~semfuse_jax.optimise.driver`: how a batch runs, the whole schedule in one jitted
  ``lax.while_loop`` over epochs on the local devices, with early stopping on the loss or on a
  quality scorer (FM4) carried on the device (:func:`optimise`, :func:`refine_edges`).
"""

from semfuse_jax.optimise.driver import (
    BATCHING,
    COMPILES,
    CompileCounter,
    OptimiseResult,
    Scorer,
    optimise,
    refine_edges,
    sets_per_chunk,
)
from semfuse_jax.optimise.objectives import (
    GRADIENTS,
    LINEAR_LAYERS,
    EdgeObjective,
    NetworkObjective,
    Objective,
    QuadraticObjective,
    Targets,
    batch_edge_loss,
    batch_loss,
    choose_gradient,
    feature_loss,
    gram_stencils,
    input_kernel,
    quadratic_objective,
)
from semfuse_jax.optimise.solver import (
    FAST,
    SOLVERS,
    UNIT_BOX,
    Bounds,
    Schedule,
    improves,
    optimizer,
    project,
    run_steps,
    solve,
)

__all__ = [
    "BATCHING",
    "COMPILES",
    "FAST",
    "GRADIENTS",
    "LINEAR_LAYERS",
    "SOLVERS",
    "UNIT_BOX",
    "Bounds",
    "CompileCounter",
    "EdgeObjective",
    "NetworkObjective",
    "Objective",
    "OptimiseResult",
    "QuadraticObjective",
    "Schedule",
    "Scorer",
    "Targets",
    "batch_edge_loss",
    "batch_loss",
    "choose_gradient",
    "feature_loss",
    "gram_stencils",
    "improves",
    "input_kernel",
    "optimise",
    "optimizer",
    "project",
    "quadratic_objective",
    "refine_edges",
    "run_steps",
    "sets_per_chunk",
    "solve",
]
