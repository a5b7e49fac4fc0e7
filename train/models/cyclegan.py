"""CycleGAN networks as in junyanz/pytorch-CycleGAN-and-pix2pix (REFERENCE.md): ResNet generator, 70x70 PatchGAN
and the history pool of generated images that the discriminators train on.

Parameter counts at the reference widths: generator 11,378,179 (ngf 64, 9 blocks; 7,837,699 with 6 blocks),
PatchGAN 2,764,737 (ndf 64, 3 layers). InstanceNorm has no affine parameters, so every conv keeps its bias.
"""
import torch
from torch import nn


def init_weights(module, std=0.02):
    """junyanz's 'normal' init: conv weights N(0, std), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _norm(channels):
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): x + [ReflPad1 conv3x3 IN ReLU ReflPad1 conv3x3 IN](x)."""

    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=True), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=True), _norm(channels))

    def forward(self, x):
        return x + self.body(x)


def _upsample(in_channels, out_channels, mode):
    """The layers of one x2 upsampling conv of the generator (ResnetGenerator's upsample)."""
    if mode == "deconv":
        return [nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=True)]
    if mode == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                nn.Conv2d(in_channels, out_channels, 3, bias=True)]
    raise ValueError(f"unknown upsample {mode!r}: expected deconv or resize")


class ResnetGenerator(nn.Module):
    """(B, 3, H, W) RGB in [-1, 1] -> (B, 3, H, W) in [-1, 1]; H and W must be multiples of 4 (two /2 stages).

    ReflPad3 conv7x7 3->ngf; two conv3x3/2 (ngf->2ngf->4ngf); n_blocks residual blocks at 4ngf; two x2 upsamplings
    back to ngf; ReflPad3 conv7x7 ngf->3; Tanh. IN + ReLU after every conv but the last. upsample 'deconv' is
    junyanz's ConvTranspose(k3, s2, p1, op1); 'resize' a nearest-neighbour x2 resize then ReflPad1 conv3x3 (Odena et
    al. 2016, "Deconvolution and checkerboard artifacts": no uneven kernel overlap, so no checkerboard), the same
    parameter count.
    """

    def __init__(self, ngf=64, n_blocks=9, in_channels=3, out_channels=3, upsample="deconv"):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=True), _norm(ngf), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                       _norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [*_upsample(ngf * mult, ngf * mult // 2, upsample), _norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7, bias=True), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x):
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """(B, 3, H, W) -> (B, 1, H/8 - 2, W/8 - 2) real/fake logits of overlapping 70x70 patches (n_layers=3).

    conv4x4/2 3->ndf + LReLU0.2; (n_layers - 1) x [conv4x4/2 + IN + LReLU] doubling channels (capped at 8ndf);
    conv4x4/1 + IN + LReLU; conv4x4/1 -> 1. No sigmoid: the GAN loss takes logits (LSGAN or BCE-with-logits).
    """

    def __init__(self, ndf=64, n_layers=3, in_channels=3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=True), _norm(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x):
        return self.model(x)


class CycleGAN(nn.Module):
    """The four networks of stage 1, held together so one state dict checkpoints them.

    gen_s2t = G: S -> T, gen_t2s = F: T -> S, disc_src = D_S (real source vs F's output), disc_trg = D_T.
    """
    # The input convention of the generators (datasets.normalize mode); checkpoints record it in model_meta.
    normalization = "tanh"

    def __init__(self, ngf=64, ndf=64, n_blocks=9, disc_layers=3, upsample="deconv"):
        super().__init__()
        self.ngf, self.ndf, self.n_blocks, self.disc_layers = ngf, ndf, n_blocks, disc_layers  # for model_meta
        self.upsample = upsample
        self.gen_s2t = ResnetGenerator(ngf, n_blocks, upsample=upsample)
        self.gen_t2s = ResnetGenerator(ngf, n_blocks, upsample=upsample)
        self.disc_src = PatchDiscriminator(ndf, disc_layers)
        self.disc_trg = PatchDiscriminator(ndf, disc_layers)

    def generator_parameters(self):
        return [*self.gen_s2t.parameters(), *self.gen_t2s.parameters()]

    def discriminator_parameters(self):
        return [*self.disc_src.parameters(), *self.disc_trg.parameters()]


def build_cyclegan(stage1_cfg):
    """CycleGAN from a Stage1Config (ngf, ndf, n_blocks, upsample)."""
    return CycleGAN(ngf=stage1_cfg.ngf, ndf=stage1_cfg.ndf, n_blocks=stage1_cfg.n_blocks,
                    upsample=stage1_cfg.upsample)


class ImagePool:
    """History of generated images (Shrivastava et al.), as junyanz: the discriminator sees old fakes too.

    query((B, 3, H, W)) -> (B, 3, H, W): while the pool is filling, each image is stored and returned; once full,
    each image is, with probability 1/2, swapped for a random stored one (which it replaces), else returned as is.
    The draws come from the pool's own generator, and state_dict() holds the stored images and that generator,
    so a resumed run draws exactly what an uninterrupted one would.
    """

    def __init__(self, size=50, seed=0):
        self.size = size
        self.images = []  # each (3, H, W), detached
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images):
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.generator) < 0.5:
                k = int(torch.randint(self.size, (), generator=self.generator))
                out.append(self.images[k].to(image.device))
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self):
        images = torch.stack(self.images).cpu() if self.images else torch.zeros(0)
        return {"size": self.size, "images": images, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.size = int(state["size"])
        self.images = list(state["images"].unbind(0)) if state["images"].numel() else []
        self.generator.set_state(state["generator"])
