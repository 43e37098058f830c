"""genie.core.frames: the pixel conversions every layer shares round-trip exactly; the previous-frame shift."""

import numpy as np
import torch

from genie.core.frames import frames_to_video, from_uint8, previous_frames, to_uint8, to_unit, video_to_frames


def test_every_pixel_value_round_trips():
    frames = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)  # (t, H, W, c): every value once
    video = frames_to_video(frames)
    assert video.shape == (1, 3, 16, 16) and video.dtype == torch.float32
    assert video.min() == -1 and video.max() == 1
    assert np.array_equal(video_to_frames(video), frames)
    assert torch.equal(to_uint8(from_uint8(torch.from_numpy(frames))), torch.from_numpy(frames))
    assert torch.equal(to_unit(video), (video + 1) / 2)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # out of range: clamped


def test_previous_frames():
    x = torch.arange(2 * 3).view(2, 3, 1)  # (b, t, 1)
    prev = previous_frames(x, -1)
    assert prev[:, 0].eq(-1).all() and torch.equal(prev[:, 1:], x[:, :-1])
