"""Token-grid flow and warp: a known shift is found, and warping along it moves features the right way."""
import torch
import torch.nn.functional as F

from worldcache.motion import token_flow, warp_tokens

GRID = (3, 8, 10)


def shifted_pair(channels=256, shift=1):
    """A smooth random field and the same field moved `shift` tokens left: dst(q) = src(q + shift)."""
    torch.manual_seed(0)
    field = F.interpolate(torch.randn(3, channels, 4, 6), size=(8, 10 + shift), mode="bicubic", align_corners=True)
    tok = lambda f: f.permute(0, 2, 3, 1).reshape(1, -1, channels)  # noqa: E731
    return tok(field[..., :10]), tok(field[..., shift:10 + shift])


def test_flow_finds_a_known_shift_and_warp_follows_it():
    src, dst = shifted_pair()
    flow = token_flow(src, dst, GRID)
    assert flow.shape == (3, 8, 10, 2)
    assert (flow[..., 0].mean() - 1).abs() < 0.3 and flow[..., 1].abs().mean() < 0.2  # 1 token along +x
    err = lambda a: (a - dst).abs().mean()  # noqa: E731
    assert err(warp_tokens(src, flow, GRID)) < 0.8 * err(src)
    assert token_flow(src, src, GRID).abs().max() < 1e-3  # no motion, no flow


def test_few_channels_suffice():
    src, dst = shifted_pair()
    for k in (8, 32, 256):  # the default uses 16; estimates stay near the true shift either way
        assert 0.6 < token_flow(src, dst, GRID, max_channels=k)[..., 0].mean() < 1.6


def test_warp_along_an_exact_shift_is_exact():
    """Warping by a constant (1, 0) flow samples src one token right: dst exactly, but for the last column, which
    reflection padding fills from the column before it."""
    src, dst = shifted_pair()
    flow = torch.zeros(3, 8, 10, 2)
    flow[..., 0] = 1.0
    grid = lambda x: x.reshape(3, 8, 10, -1)  # noqa: E731
    out = grid(warp_tokens(src, flow, GRID))
    torch.testing.assert_close(out[:, :, :9], grid(dst)[:, :, :9], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, :, 9], grid(src)[:, :, 8], rtol=0, atol=1e-6)  # q + 1 = 10 reflects to 8


def test_bf16_features_warp_in_fp32():
    """With bf16 weights the coordinates stay fp32: a zero flow is the identity (to fp32 coordinates' ~5e-6), and
    the flow estimated from bf16 features equals the fp32 one on the same (bf16-rounded) values."""
    torch.manual_seed(0)
    grid = (2, 16, 20)  # on 8 x 10 bf16 coordinates happen to round back exactly; on 16 x 20 they moved by ~0.1
    lo = torch.randn(1, 2 * 16 * 20, 64).to(torch.bfloat16)
    torch.testing.assert_close(warp_tokens(lo, torch.zeros(2, 16, 20, 2), grid), lo, rtol=0, atol=1e-5)
    src, dst = shifted_pair()
    lo = src.to(torch.bfloat16)
    flow32 = token_flow(src.to(torch.bfloat16).float(), dst.to(torch.bfloat16).float(), GRID)
    assert torch.equal(token_flow(lo, dst.to(torch.bfloat16), GRID), flow32)


def test_flow_along_y_is_flow_along_x_transposed():
    """Transposing the token grid swaps the flow's axes exactly: pins the y component (its sign, and its rescaling
    from the half-resolution estimate) to the x one, which the tests above pin to a known shift. A grid of 9 x 10
    halves to 4 x 5, so the two axes rescale by 2.25 and 2: swapping them would show."""
    torch.manual_seed(0)
    field = F.interpolate(torch.randn(3, 256, 4, 6), size=(9, 11), mode="bicubic", align_corners=True)
    tok = lambda f: f.permute(0, 2, 3, 1).reshape(1, -1, 256)  # noqa: E731
    src, dst = field[..., :10], field[..., 1:11]  # dst(q) = src(q + 1 token along x)
    flow = token_flow(tok(src), tok(dst), (3, 9, 10))
    flow_t = token_flow(tok(src.transpose(2, 3)), tok(dst.transpose(2, 3)), (3, 10, 9))  # the shift now along y
    torch.testing.assert_close(flow_t, flow.transpose(1, 2).flip(-1), rtol=0, atol=1e-5)
    assert flow_t[..., 1].mean() > 0.5 and flow_t[..., 0].abs().mean() < 0.2
    # the rescaling itself, exactly: the 4 x 5 estimate (16 of 256 channels), upsampled, times (10 / 5, 9 / 4)
    from worldcache import motion

    a, b = (F.interpolate(motion._frames(tok(f)[..., ::16], (3, 9, 10)), size=(4, 5), mode="area") for f in (src, dst))
    up = F.interpolate(motion._lk(a, b).permute(0, 3, 1, 2), size=(9, 10), mode="bilinear", align_corners=True)
    torch.testing.assert_close(flow, up.permute(0, 2, 3, 1) * torch.tensor([10 / 5, 9 / 4]), rtol=0, atol=1e-6)


def test_laplacian_reads_the_token_grid_row_major_per_channel():
    """One frame of 2 rows x 3 columns, 5-point Laplacian with replicate padding. Channel 0 has a 9 in the
    bottom-right token: 9 at its neighbours above and left, 9 + 9 - 4 * 9 = -18 at itself (its right and lower
    neighbours are itself, replicated); read as 3 rows x 2 columns it would be (0, 0, 0, 9, 9, -18). Channel 1 has a
    1 in the top-middle token: 1 at its left, right and lower neighbours, 1 - 4 = -3 at itself. The result holds
    each channel's grid in turn (per frame, channel-major); mixing the channels' values would show."""
    from worldcache.motion import laplacian

    x = torch.tensor([[0.0, 0], [0, 1], [0, 0], [0, 0], [0, 0], [9, 0]]).view(1, 6, 2)
    assert laplacian(x, (1, 2, 3)).tolist() == [[0.0, 0, 9, 0, 9, -18] + [1.0, -3, 1, 0, 1, 0]]


def test_max_channels_picks_every_kth_channel():
    """256 channels, max_channels 8 -> every 32nd channel: the flow of exactly those 8 channels (which then use all
    of theirs). The mean-shift check above would not see another stride."""
    src, dst = shifted_pair()
    for k in (8, 32):
        step = 256 // k
        assert torch.equal(token_flow(src, dst, GRID, max_channels=k),
                           token_flow(src[..., ::step], dst[..., ::step], GRID, max_channels=k))
