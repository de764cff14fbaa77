"""diffrt.images: the contact sheet of labelled rows (what `diffrt demo` writes)."""

import numpy as np
import pytest
import torch

from diffrt.images import contact_sheet, to_uint8


def test_contact_sheet_lays_out_one_labelled_row_per_stage():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    rows = [("generate", torch.rand(3, 3, 8, 8, generator=gen) * 2 - 1),
            ("a wide row", torch.rand(9, 3, 16, 16, generator=gen) * 2 - 1)]
    height = 32
    sheet = contact_sheet(rows, height=height)
    assert sheet.mode == "RGB"
    assert sheet.height == 2 * (height + 22)  # a 20-pixel label band and 2 pixels below each row
    assert sheet.width == max(640, 9 * (height + 4) + 4)
    pixels = np.asarray(sheet)
    for r, (_, images) in enumerate(rows):
        expected = to_uint8(images)  # (B, H, W, 3)
        scale = height // images.shape[-1]
        for i, image in enumerate(expected):
            y, x = r * (height + 22) + 20, 4 + i * (height + 4)
            tile = pixels[y: y + height, x: x + height]
            np.testing.assert_array_equal(tile, image.repeat(scale, axis=0).repeat(scale, axis=1))  # nearest
    for r in range(len(rows)):  # each label is drawn in the band above its images, on white
        band = pixels[r * (height + 22): r * (height + 22) + 20]
        assert (band != 255).any() and (band[:, -100:] == 255).all()
    with pytest.raises(ValueError, match="at least one row"):
        contact_sheet([])
