"""Independent PyTorch implementation of the SPS `:paper` ball model + train step, for timing only.

    .venv/bin/pip install torch==2.13.0   # optional extra [torch]
    .venv/bin/python benchmarks/sps_video_torch_ref.py --steps 5 [--device cuda] [--tiny]

Written for this benchmark from spec §4.1/§5.2/§5.3 (not the authors' code, not symmetry/): conv VAE over 32x32x3
frames (4x4 stride-2 convs 64/128/256, MLP + transposed convs back), Elman RNN prior (hidden 256) over the 3-D
latent with scheduled sampling (base_len 5), translation on (z0, z2) and rotation about z1 as two augmentation
paths with K copies each, summed BCE / MSE terms including the prediction-to-prediction (SRS) term, Adam 1e-3.
Like the official code it decodes self-recon, prior and each path in separate decoder calls.
"""
from __future__ import annotations

import argparse
import json
import math
from steptimer import time_steps

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """Encoder, decoder and prior of the ball model (d = 3)."""

    def __init__(self, ch=(64, 128, 256), hidden: int = 256, d: int = 3):
        super().__init__()
        a, b, c = ch
        self.c = c
        self.enc = nn.Sequential(nn.Conv2d(3, a, 4, 2, 1), nn.ReLU(), nn.Conv2d(a, b, 4, 2, 1), nn.ReLU(),
                                 nn.Conv2d(b, c, 4, 2, 1), nn.ReLU(), nn.Flatten())
        self.mu, self.logvar = nn.Linear(16 * c, d), nn.Linear(16 * c, d)
        self.mlp = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 64),
                                 nn.ReLU(), nn.Linear(64, 16 * c))
        self.dec = nn.Sequential(nn.ConvTranspose2d(c, b, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(b, a, 4, 2, 1),
                                 nn.ReLU(), nn.ConvTranspose2d(a, 3, 4, 2, 1))
        self.rnn = nn.RNN(d, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, d)

    def encode(self, x: torch.Tensor):
        bsz, t = x.shape[:2]
        h = self.enc(x.reshape(bsz * t, *x.shape[2:]))
        return self.mu(h).view(bsz, t, -1), self.logvar(h).view(bsz, t, -1)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        y = self.dec(self.mlp(z.reshape(-1, z.shape[-1])).view(-1, self.c, 4, 4))
        return y.view(*lead, *y.shape[1:])

    def rollout(self, z: torch.Tensor, use_gt: list[bool]) -> torch.Tensor:
        h, prev, outs = None, None, []
        for i in range(z.shape[1]):
            inp = z[:, i] if use_gt[i] else prev
            o, h = self.rnn(inp.unsqueeze(1), h)
            prev = self.readout(o.squeeze(1))
            outs.append(prev)
        return torch.stack(outs, 1)[:, :-1]


def p_tf(it: int, a: float = 2200.0, b: float = 6000.0) -> float:
    return a / (a + math.exp((it + b) / a))


def rot_y(z: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
    """z0' = cos z0 + sin z2, z2' = -sin z0 + cos z2 (th [N, 1] broadcast over time)."""
    c, s = torch.cos(th), torch.sin(th)
    return torch.stack([c * z[..., 0] + s * z[..., 2], z[..., 1], -s * z[..., 0] + c * z[..., 2]], -1)


def loss_fn(net: Net, x: torch.Tensor, it: int, K: int = 4, base_len: int = 5) -> torch.Tensor:
    B, T = x.shape[:2]
    mu, logvar = net.encode(x)
    z = mu + torch.randn_like(mu) * 0.5 * torch.exp(logvar)
    kl = -0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp())
    bce = lambda lg, y: F.binary_cross_entropy_with_logits(lg, y, reduction="sum")  # noqa: E731
    mask = lambda: [i < base_len or torch.rand(()).item() <= p_tf(it) for i in range(T)]  # noqa: E731
    zhat = net.rollout(z, mask())
    xn = x[:, 1:]
    loss = bce(net.decode_logits(z), x) + 0.01 * kl + bce(net.decode_logits(zhat), xn)
    loss = loss + 2 * torch.sum((zhat - z[:, 1:]) ** 2)
    zz, zh, xk = z.repeat(K, 1, 1), zhat.repeat(K, 1, 1), xn.repeat(K, 1, 1, 1, 1)
    t = torch.rand(K * B, 1, 3) * 2 - 1
    t[..., 1] = 0
    th = (torch.rand(K * B, 1) * 2 - 1) * math.pi
    for apply, inverse in ((lambda v: v + t, lambda v: v - t), (lambda v: rot_y(v, th), lambda v: rot_y(v, -th))):
        zt = inverse(net.rollout(apply(zz), mask()))
        loss = loss + (2 * torch.sum((zt - zz[:, 1:]) ** 2) + 2 * torch.sum((zt - zh) ** 2)
                       + bce(net.decode_logits(zt), xk)) / K
    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiny", action="store_true", help="batch 4, K 1, conv widths (8,16,16), RNN 16, 8 frames")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    net = Net((8, 16, 16), 16).to(dev) if args.tiny else Net().to(dev)
    batch, K, frames, n = (4, 1, 8, 16) if args.tiny else (32, 4, 20, 512)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.randint(0, 256, (n, frames, 3, 32, 32), dtype=torch.uint8, device=dev)

    def step(it: int) -> float:
        x = data[torch.randperm(n, device=dev)[:batch]].float() / 255
        opt.zero_grad()
        loss = loss_fn(net, x, it, K=K)
        loss.backward()
        opt.step()
        return loss.item()

    t, loss = time_steps(lambda i, _: step(i), args.steps)
    print(json.dumps(dict(impl="torch", tiny=args.tiny, device=args.device, threads=torch.get_num_threads(), seeds=1, loss=loss, **t)), flush=True)

if __name__ == "__main__":
    main()
