"""A batch sharded over 4 simulated CPU devices equals the single-device run (with padding)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from semfuse_jax import files, fusion
from semfuse_jax.optimise import Schedule
from semfuse_jax.synthetic import multifocus_set

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    from semfuse_jax import fusion
    from semfuse_jax.models import vgg19
    from semfuse_jax.optimise import Schedule

    assert jax.local_device_count() == 4, jax.devices()
    sets = np.load(sys.argv[1])
    w = vgg19.load_weights(sys.argv[2])
    out = {}
    for method in sys.argv[4].split(","):
        config = fusion.FusionConfig(method=method, schedule=Schedule(epochs=2, iters=5))
        out[method] = fusion.fuse(w, sets, config).fused  # 5 sets, padded to 8
    np.savez(sys.argv[3], **out)
    """
)


METHODS = ("fm0", "fm4")  # the plain optimiser, and the one with a start, bounds and a stop


def test_sharded_batch_equals_unsharded(real_weights, real_weights_file, data_dir, tmp_path):
    assert jax.local_device_count() == 1
    lytro = files.load_image(data_dir / "multifocus_colour_lytro/lytro-04/lytro-04-A.jpg")
    crops = [
        lytro[y : y + 48, x : x + 48]
        for y, x in ((0, 0), (100, 60), (200, 300), (400, 10), (50, 470))
    ]
    sets = np.stack([multifocus_set(c) for c in crops])
    np.save(tmp_path / "sets.npy", sets)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = {**os.environ, "XLA_FLAGS": flags}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(tmp_path / "sets.npy"),
            str(real_weights_file),
            str(tmp_path / "sharded.npz"),
            ",".join(METHODS),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = np.load(tmp_path / "sharded.npz")
    for method in METHODS:
        config = fusion.FusionConfig(method=method, schedule=Schedule(epochs=2, iters=5))
        single = fusion.fuse(real_weights, sets, config).fused
        assert sharded[method].shape == (5, 48, 48, 3)
        np.testing.assert_allclose(sharded[method], single, atol=1e-5)
