"""Rebuild the package's built-in VGG19 ``conv1_1`` layer from the Keras blocks 1-3 extract.

    python weights/build_builtin.py --src=../shared/weights/vgg19_imagenet_keras_block1-3.h5

Checks the source file's SHA-256 against the manifest's ``keras_block1-3`` entry, keeps only
``conv1_1`` (1,792 numbers) and writes ``semfuse_jax/data/vgg19_conv1_1.safetensors`` in the
canonical format with the source, its checksum and the licence in the metadata.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from semfuse_jax.models import checkpoints, vgg19

_SRC = flags.DEFINE_string("src", None, "The Keras VGG19 blocks 1-3 .h5 extract.", required=True)


def main(argv: list[str]) -> None:
    src = Path(_SRC.value)
    entry = checkpoints.manifest()["keras_block1-3"]
    digest = checkpoints.file_digests(src)["sha256"]
    if digest != entry["sha256"]:
        raise SystemExit(f"{src}: sha256 {digest} is not the pinned {entry['sha256']}")
    params, prep, _ = vgg19.read_any(src)
    vgg19.save_canonical(
        vgg19.BUILTIN_FILE,
        {"conv1_1": params["conv1_1"]},
        prep,
        f"keras_block1-3:{src.name} (conv1_1 only)",
        digest,
        extra={"license": "CC BY 4.0", "attribution": vgg19.BUILTIN_ATTRIBUTION},
    )
    print(vgg19.describe(vgg19.BUILTIN_FILE))


if __name__ == "__main__":
    app.run(main)
