"""Independent PyTorch implementation of the SPS `:paper` audio model + train step, for timing only.

    .venv/bin/pip install torch==2.13.0   # optional extra [torch]
    .venv/bin/python benchmarks/sps_torch_ref.py --steps 5

Written for this benchmark from spec §4.2/§5.4 (not the authors' code): conv VAE over 513x5 notes, Elman RNN
prior (hidden 256), scheduled sampling, translation augmentation with K copies, summed BCE/MSE losses, Adam.
Like the official code it decodes self-recon, prior and symmetry latents in separate decoder calls
(``--merged`` decodes them in one call, as the JAX step does).
"""
from __future__ import annotations

import argparse
import json
import math
from steptimer import time_steps

import torch
from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    """Encoder, decoder and prior of the audio model (d = 1)."""

    def __init__(self, d: int = 1, hidden: int = 256):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(1, 64, (5, 5), stride=2, padding=(1, 0)), nn.ReLU(),
            nn.Conv2d(64, 64, (8, 1), stride=4, padding=(2, 0)), nn.ReLU(),
            nn.Conv2d(64, 128, (4, 1), stride=2, padding=(1, 0)), nn.ReLU(),
            nn.Conv2d(128, 128, (4, 1), stride=2, padding=(1, 0)), nn.ReLU())
        self.mu, self.logvar = nn.Linear(2048, d), nn.Linear(2048, d)
        widths = [d, 16, 64, 256, 1024, 2048]
        mlp = []
        for a, b in zip(widths[:-1], widths[1:]):
            mlp += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*mlp[:-1])
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(128, 128, (4, 1), stride=2, padding=(1, 0)), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, (4, 1), stride=2, padding=(1, 0)), nn.ReLU(),
            nn.ConvTranspose2d(64, 64, (8, 1), stride=4, padding=(2, 0)), nn.ReLU(),
            nn.ConvTranspose2d(64, 1, (5, 5), stride=2, padding=(1, 0)))
        self.rnn = nn.RNN(1, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, 1)

    def encode(self, x: torch.Tensor):
        b, t = x.shape[:2]
        h = self.enc(x.reshape(b * t, 1, *x.shape[2:])).flatten(1)
        return self.mu(h).view(b, t, -1), self.logvar(h).view(b, t, -1)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        y = self.dec(self.mlp(z.reshape(-1, z.shape[-1])).view(-1, 128, 16, 1))
        return y.view(*lead, *y.shape[-2:])

    def rollout(self, z: torch.Tensor, use_gt: list[bool]) -> torch.Tensor:
        h, prev, outs = None, None, []
        for i in range(z.shape[1]):
            inp = z[:, i] if use_gt[i] else prev
            o, h = self.rnn(inp.unsqueeze(1), h)
            prev = self.readout(o.squeeze(1))
            outs.append(prev)
        return torch.stack(outs, 1)[:, :-1]


def p_tf(it: int, a: float = 2200.0, b: float = 8000.0) -> float:
    return a / (a + math.exp((it + b) / a))


def loss_fn(net: Net, x: torch.Tensor, it: int, K: int = 4, base_len: int = 3, merged: bool = False):
    B, T = x.shape[:2]
    mu, logvar = net.encode(x)
    z = mu + torch.randn_like(mu) * 0.5 * torch.exp(logvar)
    kl = -0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp())
    gt0 = [i < base_len or torch.rand(()).item() <= p_tf(it) for i in range(T)]
    gt1 = [i < base_len or torch.rand(()).item() <= p_tf(it) for i in range(T)]
    zhat = net.rollout(z, gt0)
    tau = (torch.rand(K * B, 1, 1) * 8 - 4)
    zz = z.repeat(K, 1, 1)
    zt = net.rollout(zz + tau, gt1) - tau
    xn = x[:, 1:]
    bce = lambda lg, y: F.binary_cross_entropy_with_logits(lg, y, reduction="sum")  # noqa: E731
    if merged:
        lg = net.decode_logits(torch.cat([z.reshape(-1, 1), zhat.reshape(-1, 1), zt.reshape(-1, 1)]))
        n0, n1 = B * T, B * (T - 1)
        l_self, l_px = bce(lg[:n0].view_as(x), x), bce(lg[n0:n0 + n1].view_as(xn), xn)
        l_sx = bce(lg[n0 + n1:].view(K, *xn.shape), xn.expand(K, *xn.shape)) / K
    else:
        l_self, l_px = bce(net.decode_logits(z), x), bce(net.decode_logits(zhat), xn)
        l_sx = bce(net.decode_logits(zt), xn.repeat(K, 1, 1, 1)) / K
    l_pz = 2 * torch.sum((zhat - z[:, 1:]) ** 2)
    l_sz = 4 * torch.sum((zt - zz[:, 1:]) ** 2) / K
    return l_self + 0.01 * kl + l_px + l_pz + l_sz + l_sx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--merged", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.rand(26, 15, 513, 5)

    def step(it: int) -> float:
        x = data[torch.randperm(26)[:20]]
        opt.zero_grad()
        loss = loss_fn(net, x, it, merged=args.merged)
        loss.backward()
        opt.step()
        return loss.item()

    t, loss = time_steps(lambda i, _: step(i), args.steps)
    print(json.dumps(dict(impl="torch", merged=args.merged, threads=torch.get_num_threads(), seeds=1, loss=loss, **t)),
          flush=True)

if __name__ == "__main__":
    main()
