"""diffrt.kernels: Triton kernels, shipped in the wheel from the repository's top-level ``kernels/``.

This ``__init__.py`` lives in ``python/diffrt/kernels/`` so that the top-level ``kernels/`` folder is
not a regular package: from the repository root, ``import kernels`` must find the installed
distribution of that name (a dependency of transformers), never this source tree.

Importing this package does not import Triton (an optional extra: ``pip install 'diffrt[triton]'``);
the kernel modules do. Call them through :mod:`diffrt.ops` (``backend="triton"``), which validates
inputs first.

- :mod:`diffrt.kernels.downsample_conv` — Imagen Editor's image+mask conditioning: a strided conv
  written straight into a channel slice of the UNet input buffer.
"""
