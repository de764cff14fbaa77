"""diffrt.kernels: Triton kernels, shipped in the wheel from the repository's top-level ``kernels/``.

Importing this package does not import Triton (an optional extra: ``pip install 'diffrt[triton]'``);
the kernel modules do. Call them through :mod:`diffrt.ops` (``backend="triton"``), which validates
inputs first.

- :mod:`diffrt.kernels.downsample_conv` — Imagen Editor's image+mask conditioning: a strided conv
  written straight into a channel slice of the UNet input buffer.
"""
